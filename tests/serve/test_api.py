"""The JSON API of `samtune serve` through FastAPI's TestClient: every endpoint, the error
cases, and the corrections folder read back by the project's own loader."""

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from samtune.data.detect import open_source
from samtune.data.images import read_image_rgb
from samtune.infer.predictor import Predictor
from samtune.infer.rle import decode_rle
from samtune.serve import build_state, create_app
from samtune.serve.images import ImageStore


@pytest.fixture(scope="module")
def state(serve_run, tmp_path_factory):
    return build_state([str(serve_run)], save_to=tmp_path_factory.mktemp("corrections") / "fixes")


@pytest.fixture(scope="module")
def client(state):
    with TestClient(create_app(state)) as c:
        yield c


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_info_lists_the_run_and_its_base(client, serve_run):
    info = client.get("/api/info").json()
    assert [m["id"] for m in info["models"]] == ["base", "tuned"]
    base, tuned = info["models"]
    assert base["ready"] and tuned["ready"] and base["error"] is None
    assert base["label"] == "base: sam_tiny (random init, seed 0)"
    assert tuned["run"] == str(serve_run) and tuned["report"] is True and base["report"] is False
    assert info["images"] == 2 and "validation data of the run" in info["data"]
    assert info["limits"] == {"upload_bytes": 32 * 2**20, "pixels": 40_000_000}


def test_images_come_with_pixels_and_ground_truth(client, state):
    listed = client.get("/api/images").json()
    assert [e["id"] for e in listed] == ["d0", "d1"] and listed[0]["kind"] == "data"
    meta = client.get("/api/images/d0").json()
    sample = state.images.dataset[0]
    assert (meta["width"], meta["height"]) == (80, 64) and meta["name"] == listed[0]["name"]
    truth = np.stack([decode_rle(r) for r in meta["truth"]])
    np.testing.assert_array_equal(truth, sample.object_masks())
    served = np.array(Image.open(io.BytesIO(client.get("/api/images/d0/image.png").content)))
    np.testing.assert_array_equal(served, sample.image)


def test_predict_answers_for_both_models_as_the_predictor_does(client, state):
    body = {"image": "d1", "points": [[30, 20], [60, 50]], "labels": [1, 0], "box": [10, 8, 70, 56]}
    response = client.post("/api/predict", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["model"] for r in results] == ["base", "tuned"]
    sample = state.images.dataset[1]
    for result in results:
        slot = state.slot(result["model"])
        predictor = Predictor(slot.adapter)
        predictor.set_image(sample.image)
        masks, scores, _ = predictor.predict(point_coords=np.array(body["points"], float),
                                             point_labels=np.array(body["labels"]),
                                             box=np.array(body["box"], float))
        got = np.stack([decode_rle(r) for r in result["masks"]])
        np.testing.assert_array_equal(got, masks)
        np.testing.assert_allclose(result["scores"], scores, atol=1e-4)
        assert result["best"] == int(np.argmax(scores))
        assert result["areas"] == [int(m.sum()) for m in masks]
        # IoU against the best-matching ground-truth object, computed here independently
        truth = sample.object_masks()
        for k, mask in enumerate(masks):
            ious = [(mask & t).sum() / max((mask | t).sum(), 1) for t in truth]
            assert result["truth_iou"][k] == pytest.approx(max(ious), abs=1e-4)
            assert result["truth_object"][k] == int(np.argmax(ious))


def test_an_image_is_encoded_once_per_model(serve_run, tmp_path):
    kept = TestClient(create_app(build_state([str(serve_run)], save_to=tmp_path / "a")))
    click = {"image": "d0", "points": [[40, 30]], "labels": [1], "multimask": False}
    first = kept.post("/api/predict", json=click).json()["results"]
    second = kept.post("/api/predict", json=click).json()["results"]
    assert all(r["encode_ms"] > 0 for r in first)
    assert all(r["encode_ms"] is None for r in second)  # only the decoder ran
    assert [len(r["masks"]) for r in second] == [1, 1]
    recomputed = TestClient(create_app(build_state([str(serve_run)], save_to=tmp_path / "b",
                                                   keep_embeddings=0)))
    for _ in range(2):
        assert all(r["encode_ms"] > 0 for r in
                   recomputed.post("/api/predict", json=click).json()["results"])


def test_encode_ahead_of_the_first_click(client):
    first = client.post("/api/encode", json={"image": "d0", "models": ["tuned"]}).json()
    again = client.post("/api/encode", json={"image": "d0"}).json()["results"]
    assert [r["model"] for r in first["results"]] == ["tuned"]
    assert {r["model"]: r["encode_ms"] for r in again}["tuned"] is None


@pytest.mark.parametrize("body, status, message", [
    ({"image": "d0", "points": [[81, 10]], "labels": [1]}, 422,
     "point (81, 10) is outside the image (80x64)"),
    ({"image": "d0", "points": [[-1, 10]], "labels": [1]}, 422, "outside the image"),
    ({"image": "d0", "box": [10, 10, 90, 30]}, 422, "box (10, 10, 90, 30) is outside the image"),
    ({"image": "d0", "box": [30, 10, 20, 30]}, 422, "has no area"),
    ({"image": "d0", "points": [[5, 5]], "labels": [1, 0]}, 422, "1 points but 2 labels"),
    ({"image": "d0", "points": [[5, 5]], "labels": [2]}, 422, "labels.0"),
    ({"image": "d0"}, 422, "no prompt: give points"),
    ({"image": "d0", "box": [1, 2, 3, 4], "colour": 1}, 422, "colour: Extra inputs"),
    ({"image": "nope", "box": [1, 2, 3, 4]}, 404, "unknown image id 'nope'"),
    ({"image": "d0", "box": [1, 2, 30, 40], "models": ["other"]}, 404,
     "unknown model 'other'; the models are base, tuned"),
])
def test_bad_prompts_get_a_clear_answer(client, body, status, message):
    response = client.post("/api/predict", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert client.get("/api/info").status_code == 200  # still serving


def test_uploads(client, tmp_path):
    image = (np.arange(40 * 50 * 3) % 251).astype(np.uint8).reshape(40, 50, 3)
    response = client.post("/api/images", files={"file": ("my photo.png", png_bytes(image), "image/png")})
    assert response.status_code == 200, response.text
    meta = response.json()
    assert meta["kind"] == "upload" and (meta["width"], meta["height"]) == (50, 40)
    assert meta["truth"] is None and meta["id"].startswith("u")
    again = client.post("/api/images", files={"file": ("copy.png", png_bytes(image), "image/png")})
    assert again.json()["id"] == meta["id"]  # the same bytes are one image
    served = np.array(Image.open(io.BytesIO(client.get(f"/api/images/{meta['id']}/image.png").content)))
    np.testing.assert_array_equal(served, image)
    result = client.post("/api/predict", json={"image": meta["id"], "box": [5, 5, 30, 30]}).json()
    assert [r["truth_iou"] for r in result["results"]] == [None, None]
    assert meta["id"] in [e["id"] for e in client.get("/api/images").json()]


def test_refused_uploads(client):
    text = client.post("/api/images", files={"file": ("notes.txt", b"not an image", "text/plain")})
    assert text.status_code == 400
    assert text.json()["error"] == ("notes.txt: not an image this server can read (PNG, JPEG, "
                                    "TIFF, BMP or WebP)")
    truncated = png_bytes(np.zeros((30, 30, 3), np.uint8))[:60]
    bad = client.post("/api/images", files={"file": ("cut.png", truncated, "image/png")})
    assert bad.status_code == 400 and "cut.png" in bad.json()["error"]
    empty = client.post("/api/images", files={"file": ("empty.png", b"", "image/png")})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    assert client.post("/api/images").status_code == 422  # no file part


def test_huge_uploads_are_refused_with_the_limit(serve_run, tmp_path):
    state = build_state([str(serve_run)], save_to=tmp_path / "c")
    state.images = ImageStore(state.images.dataset, max_upload_bytes=4000, max_pixels=10_000)
    client = TestClient(create_app(state))
    noise = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    big = client.post("/api/images", files={"file": ("big.png", png_bytes(noise), "image/png")})
    assert big.status_code == 413 and "big.png: larger than the 0.00381 MiB upload limit" in big.json()["error"]
    wide = client.post("/api/images", files={"file": ("wide.png", png_bytes(
        np.zeros((10, 1200, 3), np.uint8)), "image/png")})
    assert wide.status_code == 413
    assert wide.json()["error"] == ("wide.png: 1200x10 is 0.012 megapixels, more than the 0.01 "
                                    "megapixel limit; downscale it or cut it into tiles")
    assert client.get("/api/images").json()[-1]["kind"] == "data"  # neither was kept


def test_segment_everything_for_both_models(client):
    body = {"image": "d0", "points_per_side": 4, "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0}
    response = client.post("/api/auto", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["model"] for r in results] == ["base", "tuned"]
    for result in results:
        assert 1 <= len(result["masks"]) <= 16 and result["pred_iou_thresh"] == 0.0
        areas = [m["area"] for m in result["masks"]]
        assert areas == sorted(areas, reverse=True)
        for record in result["masks"]:
            mask = decode_rle(record["mask"])
            assert mask.shape == (64, 80) and mask.sum() == record["area"]
    strict = client.post("/api/auto", json={"image": "d0", "points_per_side": 4}).json()
    assert [r["pred_iou_thresh"] for r in strict["results"]] == [0.88, 0.88]  # SAM's default
    assert client.post("/api/auto", json={"image": "d0", "points_per_side": 0}).status_code == 422


def test_accepted_masks_become_a_folder_dataset(client, state):
    folder = state.corrections.root
    masks = {}
    for image, box in (("d0", [4, 4, 40, 30]), ("d0", [30, 20, 76, 60]), ("d1", [10, 10, 50, 50])):
        answer = client.post("/api/predict", json={"image": image, "box": box, "multimask": False})
        rle = answer.json()["results"][1]["masks"][0]
        saved = client.post("/api/masks", json={"image": image, "mask": rle, "model": "tuned"})
        assert saved.status_code == 200, saved.text
        masks.setdefault(image, []).append(decode_rle(rle))
    assert saved.json()["images"] == 2 and saved.json()["objects"] == 3
    assert client.get("/api/masks").json() == {"folder": str(folder), "images": 2, "objects": 3}
    back = client.get("/api/masks/d0").json()
    assert [o["id"] for o in back["objects"]] == [1, 2]
    later, earlier = masks["d0"][1], masks["d0"][0]
    np.testing.assert_array_equal(decode_rle(back["objects"][1]["mask"]), later)
    np.testing.assert_array_equal(decode_rle(back["objects"][0]["mask"]), earlier & ~later)
    assert client.get("/api/images/d0").json()["saved"] == [1, 2]

    dataset = open_source(folder, split="all")  # the loader `samtune train` uses
    assert len(dataset) == 2 and sorted(s.path for s in dataset) == sorted(
        f"imgs/{state.images.entry(i).stem}.png" for i in ("d0", "d1"))
    by_name = {s.path: s for s in dataset}
    sample = by_name[f"imgs/{state.images.entry('d0').stem}.png"]
    np.testing.assert_array_equal(sample.image, state.images.dataset[0].image)
    np.testing.assert_array_equal(sample.object_masks(), np.stack([earlier & ~later, later]))
    assert read_image_rgb(folder / "imgs" / f"{state.images.entry('d1').stem}.png").shape == (64, 80, 3)

    removed = client.delete("/api/masks/d1/1").json()
    assert (removed["images"], removed["objects"]) == (1, 2)
    assert not (folder / "masks" / f"{state.images.entry('d1').stem}.png").exists()
    assert client.delete("/api/masks/d1/1").status_code == 400
    assert not list(folder.rglob(".*.tmp*"))  # every write was renamed into place


@pytest.mark.parametrize("mask, message", [
    ({"size": [10, 10], "counts": "0"}, "mask: size 10x10 does not match the image (80x64)"),
    ({"size": [64, 80], "counts": [5120]}, "the mask is empty"),
    ({"counts": "abc"}, "mask: not an RLE"),
    ({"size": [64, 80], "counts": [100, 5100]}, "mask: not an RLE"),
])
def test_bad_masks_are_refused(client, mask, message):
    response = client.post("/api/masks", json={"image": "d1", "mask": mask})
    assert response.status_code in (400, 422), response.text
    assert message in response.json()["error"]


def test_saved_folder_trains(client, state, tmp_path):
    from typer.testing import CliRunner

    from samtune.cli import app

    for image in ("d0", "d1"):
        rle = client.post("/api/predict", json={"image": image, "box": [2, 2, 60, 50],
                                                "multimask": False}).json()["results"][0]["masks"][0]
        client.post("/api/masks", json={"image": image, "mask": rle})
    result = CliRunner().invoke(app, [
        "train", "--set", f"data.train=[{{path: {state.corrections.root}}}]",
        "--set", f"output_dir={tmp_path}", "--set", "name=fixes", "--set", "train.max_steps=2",
        "--set", "train.batch_size=1", "--set", "train.progress_bar=false"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fixes" / "checkpoints" / "last.ckpt").is_file()


def test_report_of_the_run(client, serve_run):
    report = client.get("/api/report/tuned").json()
    assert report["metrics"]["modes"] == ["box"]
    assert report["metrics"]["models"]["tuned"]["box"]["n_masks"] >= 2
    assert "/api/report/tuned/files/plots/iou.png" in report["plots"]
    assert report["comparisons"] and report["report_md"] == "/api/report/tuned/files/report.md"
    plot = client.get(report["plots"][0])
    assert plot.status_code == 200 and plot.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(report["report_md"]).text.startswith("# Evaluation")
    for escape in ("../config.yaml", "..%2Fconfig.yaml", "plots/../../config.yaml"):
        assert client.get(f"/api/report/tuned/files/{escape}").status_code == 404
    assert client.get("/api/report/base").status_code == 404
    assert "not a run folder" in client.get("/api/report/base").json()["error"]


def test_a_model_that_fails_to_load_is_reported_and_the_rest_work(serve_data, tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    state = build_state([str(broken)], base="sam_tiny", data=serve_data, save_to=tmp_path / "f")
    client = TestClient(create_app(state))
    models = client.get("/api/info").json()["models"]
    assert [m["ready"] for m in models] == [True, False]
    assert str(broken) in models[1]["error"]
    answer = client.post("/api/predict", json={"image": "d0", "box": [5, 5, 40, 40]})
    assert [r["model"] for r in answer.json()["results"]] == ["base"]
    refused = client.post("/api/predict", json={"image": "d0", "box": [5, 5, 40, 40],
                                                "models": ["tuned"]})
    assert refused.status_code == 503 and "model tuned did not load" in refused.json()["error"]


def test_the_page_and_its_scripts_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for script in ("/static/app.js", "/static/rle.js", "/static/style.css"):
        assert script in page.text
        assert client.get(script).status_code == 200
    assert client.get("/api/openapi.json").json()["paths"].keys() >= {
        "/api/images", "/api/predict", "/api/auto", "/api/masks", "/api/report/{model_id}"}


def test_model_names_get_their_official_weights_or_say_where_to_put_them(serve_data, tmp_path):
    state = build_state(["sam_vit_b"], base="sam_tiny", data=serve_data, save_to=tmp_path / "g")
    base, tuned = state.slots
    assert base.ready and base.label == "base: sam_tiny (random init)"
    assert tuned.label == "fine-tuned: sam_vit_b (official weights)" and not tuned.ready
    assert "sam_vit_b_01ec64.pth is not in" in tuned.error and "SAMTUNE_OFFLINE" in tuned.error
    random = build_state(["sam_tiny"], base="sam_tiny", checkpoint="random", data=serve_data,
                         save_to=tmp_path / "h")
    assert random.slots[1].label == "fine-tuned: sam_tiny (random init)" and random.slots[1].ready


def test_a_model_with_a_class_head_answers_with_categories(client, state):
    """The tuned slot with a class head: each candidate and each automatic mask comes with
    its category; the base without one answers as before."""
    import torch

    from samtune.models.class_head import attach_class_head

    slot = state.slot("tuned")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = attach_class_head(slot.adapter, {1: "ring", 4: "cable"})
    try:
        body = {"image": "d1", "box": [10, 8, 70, 56], "multimask": True}
        base, tuned = client.post("/api/predict", json=body).json()["results"]
        assert base["categories"] is None
        assert len(tuned["categories"]) == len(tuned["masks"]) == 3
        predictor = Predictor(slot.adapter)
        predictor.set_image(state.images.dataset[1].image)
        predictor.predict(box=np.array(body["box"], float), multimask_output=True)
        for got, probs in zip(tuned["categories"], predictor.class_probs):
            assert got["id"] == head.ids[int(probs.argmax())]
            assert got["name"] == head.categories[got["id"]]
            assert got["score"] == pytest.approx(float(probs.max()), abs=1e-4)
        auto = client.post("/api/auto", json={"image": "d1", "points_per_side": 4,
                                              "pred_iou_thresh": 0.0,
                                              "stability_score_thresh": 0.0}).json()["results"]
        base_auto, tuned_auto = auto
        assert tuned_auto["masks"] and all(m["category"] in ("ring", "cable") for m in tuned_auto["masks"])
        assert all("category" not in m for m in base_auto["masks"])
    finally:
        slot.adapter.class_head = None
