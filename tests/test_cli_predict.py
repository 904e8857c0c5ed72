"""``samtune predict``: prompts from flags, files and --auto; masks, label maps, overlays and a
COCO file that pycocotools reads back."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from samtune.cli import app

runner = CliRunner()


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "cells.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


def coco_masks(path):
    data = json.loads(path.read_text())
    return data, [mask_utils.decode(a["segmentation"]).astype(bool) for a in data["annotations"]]


def test_boxes_write_masks_overlay_and_coco(image_file, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(image_file), "--model", "sam_tiny",
                                 "--box", "5,5,40,30", "--box", "30,20,79,59", "--output", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cells_mask_0.png", "cells_mask_1.png", "cells_overlay.png", "predictions.json"]
    mask = np.asarray(Image.open(out / "cells_mask_0.png"))
    assert mask.shape == (60, 80) and set(np.unique(mask)) <= {0, 255}
    data, decoded = coco_masks(out / "predictions.json")
    assert data["images"] == [{"id": 1, "file_name": "cells.png", "height": 60, "width": 80}]
    assert [a["prompt"]["box"] for a in data["annotations"]] == [[5, 5, 40, 30], [30, 20, 79, 59]]
    np.testing.assert_array_equal(decoded[0], mask > 0)
    assert data["annotations"][0]["area"] == int((mask > 0).sum())
    assert np.asarray(Image.open(out / "cells_overlay.png")).shape == (60, 80, 3)


def test_points_and_multimask(image_file, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(image_file), "--model", "sam2_tiny", "--point", "20,20",
                                 "--point", "50,40,0", "--multimask", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {f"cells_mask_0_{k}.png" for k in range(3)}
    data, _ = coco_masks(out / "predictions.json")
    assert data["annotations"][0]["prompt"]["labels"] == [1, 0]


def test_folder_with_prompt_file_and_label_map(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("a.png", "sub/b.jpg", "c.png"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / name)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({
        "a.png": [{"box": [2, 2, 30, 30]}, {"points": [[40, 20], [10, 10]], "labels": [1, 0]},
                  {"box": [20, 10, 60, 40], "points": [[40, 25]], "category_id": 3}],
        "sub/b.jpg": [{"box": [0, 0, 64, 48]}],
    }))
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(folder), "--model", "mobile_sam_tiny", "--prompts",
                                 str(prompts), "--label-map", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 image(s), 4 object(s)" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "a_labels.png", "a_overlay.png", "predictions.json", "sub__b_labels.png", "sub__b_overlay.png"]
    labels = np.asarray(Image.open(out / "a_labels.png"))
    assert labels.shape == (48, 64) and set(np.unique(labels)) <= {0, 1, 2, 3}
    data, decoded = coco_masks(out / "predictions.json")
    assert [a["category_id"] for a in data["annotations"]] == [1, 1, 3, 1]
    assert {c["id"] for c in data["categories"]} == {1, 3}
    # the label map holds each mask wherever no smaller mask covers it
    for i, mask in enumerate(decoded[:3]):
        assert (labels[mask] == i + 1).mean() > 0 or mask.sum() == 0 or (labels[mask] > 0).all()


def test_coco_file_gives_box_prompts(tmp_path):
    from samtune.data.synthetic import make_scenes, write_coco

    ann = write_coco(tmp_path / "coco", make_scenes(2, size=(40, 56), n_objects=(2, 2)))
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(ann.parent), "--model", "sam_tiny", "--prompts",
                                 str(ann), "--output", str(out)])
    assert result.exit_code == 0, result.output
    data, decoded = coco_masks(out / "predictions.json")
    source = json.loads(ann.read_text())
    assert len(data["annotations"]) == len(source["annotations"]) == 4
    assert all(m.shape == (40, 56) for m in decoded)


def test_auto_writes_decodable_coco_rle(image_file, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(image_file), "--model", "sam_tiny", "--auto",
                                 "--points-per-side", "4", "--pred-iou-thresh", "0",
                                 "--stability-score-thresh", "0", "--output", str(out)])
    assert result.exit_code == 0, result.output
    data, decoded = coco_masks(out / "predictions.json")
    assert data["annotations"], "the generator kept no mask at zero thresholds"
    for ann, mask in zip(data["annotations"], decoded):
        assert mask.shape == (60, 80) and ann["area"] == int(mask.sum())
        assert {"predicted_iou", "stability_score", "point_coords", "crop_box", "score"} <= ann.keys()
    assert (out / "cells_overlay.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "sam_tiny", "--box", "5,5,200,30"], "cells.png object 0: box 5,5,200,30 is outside the image (80x60)"),
        (["--model", "sam_tiny", "--box", "5,5,3"], "expected 4 comma-separated numbers"),
        (["--model", "sam_tiny", "--box", "40,5,3,30"], "x1 > x0"),
        (["--model", "sam_tiny", "--point", "10,10,7"], "the label must be 1"),
        (["--model", "sam_tiny"], "give exactly one of"),
        (["--model", "sam_tiny", "--auto", "--box", "1,1,5,5"], "give exactly one of"),
        (["--model", "sam_vitb", "--box", "1,1,5,5"], "unknown model 'sam_vitb'. Did you mean"),
        (["--model", "sam_tiny", "--box", "1,1,5,5", "--checkpoint", "nope.pth"], "nope.pth: no such checkpoint file"),
        (["--model", "sam_tiny", "--prompts", "nope.json"], "nope.json: no such prompt file"),
    ],
)
def test_bad_arguments_give_one_clear_line(image_file, args, message):
    result = runner.invoke(app, ["predict", str(image_file), *args])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in " ".join(result.output.split())


def test_bad_prompt_files(image_file, tmp_path):
    cases = {
        "notjson.json": ("{", "not valid JSON"),
        "wrong.json": (json.dumps({"cells.png": [{"box": [1, 2, 3]}]}), "'box' must be [x0, y0, x1, y1]"),
        "labels.json": (json.dumps({"cells.png": [{"points": [[1, 2]], "labels": [5]}]}), "'labels' must be"),
        "other.json": (json.dumps({"dog.png": [{"box": [1, 2, 3, 4]}]}), "names 'dog.png', which is not an image"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = runner.invoke(app, ["predict", str(image_file), "--model", "sam_tiny", "--prompts", str(path),
                                     "--output", str(tmp_path / "out")])
        assert result.exit_code == 1, (name, result.output)
        assert message in " ".join(result.output.split()), (name, result.output)
    assert not (tmp_path / "out").exists()


def test_a_bad_prompt_on_a_later_image_writes_nothing(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(folder / name)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"a.png": [{"box": [1, 1, 9, 9]}], "b.png": [{"box": [1, 1, 40, 9]}]}))
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(folder), "--model", "sam_tiny", "--prompts", str(prompts),
                                 "--output", str(out)])
    assert result.exit_code == 1 and "b.png object 0: box 1,1,40,9 is outside the image (30x20)" in result.output
    assert not out.exists()


def test_missing_input(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "none.png"), "--model", "sam_tiny", "--box", "1,1,5,5"])
    assert result.exit_code == 1 and "none.png: no such image file or folder" in result.output


def test_precision_bf16_and_fused_fp32_match_the_official_path(image_file, tmp_path):
    """fp32 predictions (fused attention) equal the official-attention predictor's; bf16 runs
    the same prompts under autocast and stays close; anything else is refused."""
    import torch

    from samtune import load_model
    from samtune.infer.predictor import Predictor

    weights = tmp_path / "sam_tiny.pth"  # one random init for the CLI runs and the reference
    torch.save(load_model("sam_tiny").model.state_dict(), weights)
    boxes = [[5, 5, 40, 30], [30, 20, 79, 59]]
    masks = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        args = ["predict", str(image_file), "--model", "sam_tiny", "--checkpoint", str(weights),
                "--output", str(out), "--precision", precision]
        for b in boxes:
            args += ["--box", ",".join(map(str, b))]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        masks[precision] = coco_masks(out / "predictions.json")[1]
    predictor = Predictor(load_model("sam_tiny", checkpoint=weights))
    predictor.set_image(np.asarray(Image.open(image_file).convert("RGB")))
    for i, b in enumerate(boxes):
        official, _, _ = predictor.predict(box=np.array(b), multimask_output=False)
        np.testing.assert_array_equal(masks["fp32"][i], official[0])
        union = (masks["bf16"][i] | official[0]).sum()
        assert (masks["bf16"][i] & official[0]).sum() / max(union, 1) >= 0.9
    bad = runner.invoke(app, ["predict", str(image_file), "--model", "sam_tiny", "--box", "1,1,9,9",
                              "--precision", "fp16"])
    assert bad.exit_code == 2 and "fp16" in bad.output


def test_coco_prompts_carry_their_categories_into_results_pycocotools_reads(tmp_path):
    """A COCO file of ground truth as prompts: every predicted mask keeps its annotation's
    category and name, and predictions.json is both a COCO dataset and, as results, what
    COCOeval scores per category against the same file."""
    from samtune.data.synthetic import make_scene, write_coco

    scenes = [make_scene(s, size=(64, 80), n_objects=(3, 4)) for s in (1, 2)]
    root = tmp_path / "coco"
    gt_file = write_coco(root, scenes, image_dir="images", image_ext=".png")
    images = root / "images"
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(images), "--model", "sam_tiny", "--prompts",
                                 str(gt_file), "--output", str(out), "--tile-shape", "32,40",
                                 "--halo", "16,16"])
    assert result.exit_code == 0, result.output
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = json.loads(gt_file.read_text())
    predicted = COCO(str(out / "predictions.json"))
    assert len(predicted.getAnnIds()) == len(truth["annotations"])
    names = {c["id"]: c["name"] for c in truth["categories"]}
    used = {a["category_id"] for a in truth["annotations"]}
    assert {c["id"]: c["name"] for c in predicted.loadCats(predicted.getCatIds())} == \
        {cid: names[cid] for cid in used}
    by_box = {tuple(a["bbox"]): a["category_id"] for a in truth["annotations"]}
    for ann in predicted.dataset["annotations"]:
        x0, y0, x1, y1 = ann["prompt"]["box"]
        assert by_box[(x0, y0, x1 - x0, y1 - y0)] == ann["category_id"]
    gt = COCO(str(gt_file))
    ids = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
    results = [{**a, "image_id": ids[predicted.imgs[a["image_id"]]["file_name"]]}
               for a in predicted.dataset["annotations"]]
    evaluator = COCOeval(gt, gt.loadRes(results), iouType="segm")
    evaluator.evaluate()
    evaluator.accumulate()
    assert evaluator.eval["precision"].shape[2] == len(gt.getCatIds())  # per category


def test_many_boxes_are_decoded_a_chunk_at_a_time(image_file, monkeypatch):
    from samtune import load_model
    from samtune.infer.predictor import Predictor
    from samtune.infer.prompted import predict_objects
    from samtune.prompts import ObjectPrompt

    predictor = Predictor(load_model("sam_tiny"))
    predictor.set_image(np.asarray(Image.open(image_file)))
    rng = np.random.default_rng(0)
    objects = [ObjectPrompt(box=np.array([x, y, x + 15, y + 12], dtype=np.float64))
               for x, y in zip(rng.integers(0, 60, 150), rng.integers(0, 45, 150))]
    calls = []
    original = Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, **kw: calls.append(len(kw["box"]))
                        or original(self, **kw))
    masks, scores = predict_objects(predictor, objects)
    assert calls == [64, 64, 22]
    whole_masks, whole_scores = predict_objects(predictor, objects, chunk=150)
    np.testing.assert_array_equal(masks, whole_masks)
    np.testing.assert_allclose(scores, whole_scores, rtol=1e-5, atol=1e-6)


def test_coco_prompts_keep_image_and_category_ids_and_score_with_cocoeval(tmp_path):
    """A COCO file with image ids 0 and 1 and categories 3 and 7: predictions.json keeps them,
    so COCO.loadRes + COCOeval score the predictions against the very file they came from."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from samtune.data.synthetic import coco_dict, make_scenes, write_image

    scenes = make_scenes(2, seed=3, size=(48, 64), n_objects=(1, 2), kinds=("ellipse", "rectangle"))
    folder = tmp_path / "imgs"
    names = [f"{s.name}.png" for s in scenes]
    for scene, name in zip(scenes, names):
        write_image(folder / name, scene.image)
    gt = coco_dict(scenes, names, encoding="rle")
    ids = {img["id"]: i for i, img in enumerate(gt["images"])}  # renumber images 0, 1
    for img in gt["images"]:
        img["id"] = ids[img["id"]]
    for ann in gt["annotations"]:
        ann["image_id"] = ids[ann["image_id"]]
        ann["category_id"] = {1: 3, 2: 7}[ann["category_id"]]
    gt["categories"] = [{"id": 3, "name": "ellipse"}, {"id": 7, "name": "rectangle"}]
    source = tmp_path / "gt.json"
    source.write_text(json.dumps(gt))
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(folder), "--model", "sam_tiny", "--prompts", str(source),
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    predicted = json.loads((out / "predictions.json").read_text())
    assert sorted(img["id"] for img in predicted["images"]) == [0, 1]
    by_image = {img["id"]: img["file_name"] for img in predicted["images"]}
    assert by_image == {img["id"]: img["file_name"] for img in gt["images"]}
    pairs = sorted((a["image_id"], a["category_id"]) for a in predicted["annotations"])
    assert pairs == sorted((a["image_id"], a["category_id"]) for a in gt["annotations"])
    coco = COCO(str(source))
    evaluator = COCOeval(coco, coco.loadRes(predicted["annotations"]), iouType="segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert sorted(evaluator.params.imgIds) == [0, 1]
    assert evaluator.stats[0] >= 0  # every image and category matched: no -1
