"""The page in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``)
driven by Selenium against a server on 127.0.0.1. Load the page, click, wait for both mask
canvases, check the pixels changed where the masks are, prompt more, save a correction, segment
everything, open the eval report, reload and find the saved mask.

Screenshots go to ``$SAMTUNE_SCREENSHOTS`` (else the test's temporary folder).
"""

import os
import shutil
from pathlib import Path

import pytest

from samtune.data.detect import open_source
from samtune.serve import build_state, running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="needs chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]

# Flags for a machine without network: anything that phones home would otherwise hang.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1400,1100")

# For each model canvas: how many pixels of the selected mask differ from the plain image,
# and how many outside the mask (and away from the prompt markers) do.
PIXELS_CHANGED = """
const S = window.samtune, w = S.image.width, h = S.image.height;
const plain = document.createElement('canvas'); plain.width = w; plain.height = h;
const pc = plain.getContext('2d'); pc.drawImage(S.img, 0, 0);
const raw = pc.getImageData(0, 0, w, h).data;
const out = {};
for (const id of Object.keys(S.results)) {
  const res = S.results[id], mask = res.decoded[res.selected];
  const shown = document.getElementById('canvas-' + id).getContext('2d').getImageData(0, 0, w, h).data;
  let inside = 0, insideChanged = 0, outside = 0, outsideChanged = 0;
  for (let i = 0; i < w * h; i++) {
    const x = i % w, y = (i - x) / w;
    const nearPrompt = S.prompts.some(p => p.type === 'point' && Math.hypot(p.x - x, p.y - y) < 8);
    const changed = raw[4*i] !== shown[4*i] || raw[4*i+1] !== shown[4*i+1] || raw[4*i+2] !== shown[4*i+2];
    if (mask[i]) { inside++; insideChanged += changed; }
    else if (!nearPrompt) { outside++; outsideChanged += changed; }
  }
  out[id] = {inside, insideChanged, outside, outsideChanged};
}
return out;
"""


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("SAMTUNE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for(driver, script, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script(script))


def click_at(driver, canvas, x, y, button="left"):
    """Click image pixel (x, y) of a canvas (the canvas holds the image at its resolution)."""
    from selenium.webdriver.common.action_chains import ActionChains

    rect = canvas.rect
    width = driver.execute_script("return arguments[0].width", canvas)
    scale = rect["width"] / width
    dx, dy = x * scale - rect["width"] / 2, y * scale - rect["height"] / 2
    chain = ActionChains(driver).move_to_element_with_offset(canvas, round(dx), round(dy))
    (chain.context_click() if button == "right" else chain.click()).perform()


def drag_box(driver, canvas, box):
    from selenium.webdriver.common.action_chains import ActionChains

    rect = canvas.rect
    scale = rect["width"] / driver.execute_script("return arguments[0].width", canvas)
    x0, y0, x1, y1 = (v * scale for v in box)
    cx, cy = rect["width"] / 2, rect["height"] / 2
    (ActionChains(driver).move_to_element_with_offset(canvas, round(x0 - cx), round(y0 - cy))
     .click_and_hold().move_by_offset(round((x1 - x0) / 2), round((y1 - y0) / 2))
     .move_by_offset(round((x1 - x0) / 2), round((y1 - y0) / 2)).release().perform())


def test_click_compare_save_and_find_it_after_a_reload(serve_run, tmp_path, browser, shots):
    from selenium.webdriver.common.by import By

    state = build_state([str(serve_run)], save_to=tmp_path / "fixes")
    with running(state) as url:
        browser.get(url + "/")
        wait_for(browser, "return document.body.dataset.image === 'd0' && "
                          "document.getElementById('status').textContent.includes('encoded')")
        assert browser.execute_script("return window.samtune.lastError") is None
        browser.save_screenshot(str(shots / "01_loaded.png"))

        # one positive click -> both models' masks on their canvases
        tuned = browser.find_element(By.ID, "canvas-tuned")
        click_at(browser, tuned, 40, 32)
        wait_for(browser, "const S = window.samtune; return S.predictions === 1 && S.pending === 0")
        results = browser.execute_script(
            "return Object.fromEntries(Object.entries(window.samtune.results).map("
            "([k, r]) => [k, {area: r.areas[r.selected], n: r.masks.length}]))")
        assert set(results) == {"base", "tuned"} and all(r["n"] == 3 for r in results.values())
        assert browser.execute_script("return window.samtune.prompts") == [
            {"type": "point", "x": pytest.approx(40, abs=1), "y": pytest.approx(32, abs=1), "label": 1}]
        changed = browser.execute_script(PIXELS_CHANGED)
        for model, counts in changed.items():
            assert counts["inside"] == results[model]["area"] > 0, (model, counts)
            assert counts["insideChanged"] == counts["inside"], (model, counts)
            assert counts["outsideChanged"] <= 0.1 * counts["outside"], (model, counts)  # outline only
        metrics = browser.find_element(By.ID, "metrics-tuned").text
        assert "predicted IoU" in metrics and "IoU vs ground truth" in metrics
        browser.save_screenshot(str(shots / "02_one_click.png"))

        # a negative right click and a box: both go to both models
        click_at(browser, tuned, 12, 10, button="right")
        wait_for(browser, "const S = window.samtune; return S.predictions === 2 && S.pending === 0")
        drag_box(browser, browser.find_element(By.ID, "canvas-base"), (20, 14, 64, 54))
        wait_for(browser, "const S = window.samtune; return S.predictions === 3 && S.pending === 0")
        kinds = browser.execute_script("return window.samtune.prompts.map(p => p.type + (p.label ?? ''))")
        assert kinds == ["point1", "point0", "box"]
        box = browser.execute_script("return window.samtune.prompts[2].box")
        assert box == [pytest.approx(v, abs=1.5) for v in (20, 14, 64, 54)]
        # another candidate, then undo and redo by clicking again
        browser.find_elements(By.CSS_SELECTOR, "#cands-tuned button")[0].click()
        assert browser.execute_script("return window.samtune.results.tuned.selected") == 0
        browser.save_screenshot(str(shots / "03_points_and_box.png"))
        browser.find_element(By.ID, "undo").click()
        wait_for(browser, "const S = window.samtune; return S.predictions === 4 && S.pending === 0")
        assert len(browser.execute_script("return window.samtune.prompts")) == 2
        drag_box(browser, tuned, (20, 14, 64, 54))
        wait_for(browser, "const S = window.samtune; return S.predictions === 5 && S.pending === 0")

        # accept the fine-tuned model's mask
        area = browser.execute_script("const r = window.samtune.results.tuned; return r.areas[r.selected]")
        browser.find_element(By.ID, "accept-tuned").click()
        wait_for(browser, "return document.getElementById('saved-line').dataset.objects === '1'")
        assert "saved: 1 object in 1 image" in browser.find_element(By.ID, "saved-line").text
        assert browser.execute_script("return window.samtune.prompts.length") == 0
        browser.save_screenshot(str(shots / "04_saved.png"))

        # segment everything with both models
        for field, value in (("pps", "4"), ("iou-thresh", "0"), ("stab-thresh", "0")):
            element = browser.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        browser.find_element(By.ID, "auto").click()
        wait_for(browser, "return window.samtune.mode === 'auto' && window.samtune.pending === 0", 120)
        counts = browser.execute_script(
            "return Object.values(window.samtune.auto).map(a => a.masks.length)")
        assert len(counts) == 2 and all(n >= 1 for n in counts)
        assert "masks" in browser.find_element(By.ID, "metrics-base").text
        browser.save_screenshot(str(shots / "05_everything.png"))

        # the run's eval report
        browser.find_element(By.CSS_SELECTOR, "#report-tuned summary").click()
        wait_for(browser, "return document.querySelectorAll('#report-tuned tbody tr').length === 1")
        wait_for(browser, "return [...document.querySelectorAll('#report-tuned img')].every("
                          "i => i.complete && i.naturalWidth > 0)")
        assert browser.find_elements(By.CSS_SELECTOR, "#report-tuned tbody td")[0].text == "box"
        browser.execute_script("document.getElementById('report-tuned').scrollIntoView()")
        browser.save_screenshot(str(shots / "06_report.png"))

        # reload: the saved object is found again, on the ground-truth-and-saved canvas
        browser.refresh()
        wait_for(browser, "return document.body.dataset.image === 'd0' && "
                          "document.body.dataset.savedHere === '1'")
        assert "saved: 1 object in 1 image" in browser.find_element(By.ID, "saved-line").text
        saved_area = browser.execute_script(
            "return window.samtune.saved[0].mask.reduce((a, b) => a + b, 0)")
        assert saved_area == area
        browser.save_screenshot(str(shots / "07_reloaded.png"))
    dataset = open_source(tmp_path / "fixes", split="all")
    assert len(dataset) == 1 and dataset[0].object_masks().sum() == area


def test_start_up_errors_show_on_the_page(serve_data, tmp_path, browser, shots):
    from selenium.webdriver.common.by import By

    state = build_state([str(tmp_path / "missing_run")], base="sam_tiny", data=serve_data,
                        save_to=tmp_path / "fixes")
    with running(state) as url:
        browser.get(url + "/")
        wait_for(browser, "return document.body.dataset.image === 'd0'")
        banner = browser.find_element(By.ID, "model-errors")
        assert banner.is_displayed() and "model tuned" in banner.text and "missing_run" in banner.text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#panels canvas")) == 2  # truth + base
        browser.save_screenshot(str(shots / "08_load_error.png"))
