"""The report: files, plots, panels, the worse-than-base warning, the console output."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from samtune.data.sample import Sample
from samtune.infer.evaluate import EvalSettings, metrics_document, run_eval
from samtune.infer.scoring import GroundTruth, ModeResult, score_image
from samtune.infer.report import PanelCase, worse_than_base, write_report


def rect(y0, y1, x0, x1, hw=(24, 32)):
    m = np.zeros(hw, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def mode_result(mode, shift):
    """Two images whose predictions are the truth moved right by ``shift`` pixels."""
    truths = [np.stack([rect(2, 12, 2, 14), rect(14, 22, 16, 30)]), rect(4, 20, 4, 20)[None]]
    images = []
    for i, truth in enumerate(truths):
        pred = np.roll(truth, shift, axis=2)
        images.append(score_image(pred, truth, [1, 2][: len(truth)], f"img_{i}.png", len(truth)))
    return ModeResult(mode, images)


def document(base_shift=3, tuned_shift=1, modes=("box", "point")):
    results = {"base": {m: mode_result(m, base_shift) for m in modes},
               "tuned": {m: mode_result(m, tuned_shift) for m in modes}}
    info = {"model": "runs/x", "base": "sam_tiny (random init)", "data": "data/", "split": "val",
            "date": "2025-01-01T00:00:00", "device": "cpu"}
    return metrics_document(results, GroundTruth(), EvalSettings(modes=modes), info,
                            {1: "ellipse", 2: "rectangle"})


def test_worse_than_base_when_swapped():
    assert worse_than_base(document(3, 1)) == []
    worse = worse_than_base(document(1, 3))
    assert [w.split(" ")[0] for w in worse] == ["box", "point"]
    assert worse[0].startswith("box (IoU ") and " vs " in worse[0]


def test_report_files(tmp_path):
    metrics = document(1, 3)
    image = np.full((24, 32, 3), 90, np.uint8)
    truth = rect(2, 12, 2, 14)[None]
    panel = PanelCase("best", "sub/img_0.png", "box", image, truth, truth, np.zeros_like(truth),
                      1.0, 0.0, boxes=np.array([[2, 2, 14, 12]], np.float32))
    report = write_report(tmp_path / "eval", metrics, [panel])
    out = tmp_path / "eval"
    text = report.read_text()
    assert text.startswith("# Evaluation: runs/x vs base sam_tiny (random init)")
    assert "the fine-tuned model is worse than the base on: box (IoU" in text
    assert "| box | IoU |" in text and "| ellipse | box | 2 |" in text
    # every linked file exists, and the plots are real PNGs of a readable size
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(links) == 6
    for link in links:
        with Image.open(out / link) as im:
            assert im.format == "PNG" and im.width >= 300 and im.height >= 150
    with Image.open(out / "comparisons" / "best_img_0.png") as im:
        assert im.height >= 240  # 24-pixel image enlarged to be readable
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["models"]["tuned"]["box"]["images"][0]["path"] == "img_0.png"
    assert saved["models"]["base"]["box"]["mask"]["iou"] == pytest.approx(
        metrics["models"]["base"]["box"]["mask"]["iou"])
    assert not list(out.rglob("*.tmp*"))  # nothing half-written left behind


def test_run_eval_warns_on_console(tmp_path):
    import torch

    from samtune import load_model

    scenes = [Sample(image=np.random.default_rng(i).integers(0, 255, (24, 32, 3), np.uint8),
                     masks=np.stack([rect(2, 12, 2, 14), rect(14, 22, 16, 30)]),
                     path=f"img_{i}.png") for i in range(2)]
    torch.manual_seed(0)
    a = load_model("sam_tiny")
    torch.manual_seed(1)
    b = load_model("sam_tiny")
    console = Console(file=io.StringIO(), width=200, record=True)
    settings = EvalSettings(modes=("box", "none"))
    info = {"model": "a", "base": "b", "data": "mem", "split": "val"}
    first = run_eval(a, b, scenes, tmp_path / "ab", settings, info, console, progress=False)
    second = run_eval(b, a, scenes, tmp_path / "ba", settings, info, console, progress=False)
    # exactly one direction is worse on each mode where the two differ
    for mode in ("box", "none"):
        iou_a = first.metrics["models"]["tuned"][mode]["mask"]["iou"]
        iou_b = second.metrics["models"]["tuned"][mode]["mask"]["iou"]
        if iou_a != iou_b:
            flagged = first.worse if iou_a < iou_b else second.worse
            assert any(w.startswith(f"{mode} (IoU") for w in flagged)
    printed = console.export_text()
    assert "warning: the fine-tuned model is worse than the base on:" in printed
    assert f"report: {tmp_path / 'ab' / 'report.md'}" in printed
    assert (tmp_path / "ab" / "comparisons").is_dir()
