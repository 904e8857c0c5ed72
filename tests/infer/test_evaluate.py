"""Evaluation: prompts per mode, metrics on constructed cases, aggregation, COCO AP, and a
tiny model through every mode."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from samtune.data.detect import open_source
from samtune.data.sample import Sample
from samtune.data.synthetic import make_scenes, write_coco
from samtune.infer.eval_modes import best_matches, object_prompts, predict_mode
from samtune.infer.evaluate import EvalSettings, evaluate_models
from samtune.infer.scoring import (
    GroundTruth,
    ImageRecord,
    ModeResult,
    coco_ap,
    coco_ap_per_category,
    score_image,
    summarize,
)
from samtune.prompts import interior_point
from samtune.infer.rle import encode_coco_rles
from samtune import load_model

PROMPTED = ("box", "point", "points3", "box+point", "none")


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory):
    """3 images (48x64) with 1-3 shapes each and their categories, as one COCO file."""
    root = tmp_path_factory.mktemp("coco_eval")
    scenes = make_scenes(3, seed=3, size=(48, 64), n_objects=(1, 3),
                         kinds=("ellipse", "rectangle", "polygon"))
    write_coco(root, scenes, encoding="rle")
    return open_source(root, split="all")


def rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


class OraclePredictor:
    """Answers every prompt with the ground-truth mask it points at (``empty``: nothing)."""

    model = SimpleNamespace(class_head=None)  # a model without a class head

    def __init__(self, masks, empty=False):
        self.masks, self.empty = masks, empty
        self.original_size = masks.shape[1:]

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
        if box is None and point_coords is None:
            out = self.masks.any(0, keepdims=True)[None]
        else:
            n = len(box) if box is not None else len(point_coords)
            picks = []
            for i in range(n):
                if box is not None:
                    x0, y0, x1, y1 = box[i].astype(int)
                    hit = [k for k, m in enumerate(self.masks) if m[y0:y1, x0:x1].sum() == m.sum()]
                else:
                    x, y = point_coords[i, 0].astype(int)
                    hit = [k for k, m in enumerate(self.masks) if m[y, x]]
                picks.append(self.masks[hit[0]])
            out = np.stack(picks)[:, None]
        c = 3 if multimask_output else 1
        out = np.repeat(out[:, :1], c, axis=1)
        if self.empty:
            out = np.zeros_like(out)
        scores = np.tile(np.linspace(0.2, 0.9, c), (len(out), 1))
        batched = box is not None or point_coords is not None  # unbatched: no leading N
        return (out, scores, None) if batched else (out[0], scores[0], None)


# --- prompts --------------------------------------------------------------------------------


def test_interior_point_is_the_deepest_pixel():
    mask = rect(20, 30, 4, 15, 2, 25)  # 11 rows x 23 columns: centre row 9
    x, y = interior_point(mask)
    assert y == 9 and mask[int(y), int(x)]
    # an L shape: the deepest pixel is in the thick part, never outside the mask
    ell = rect(30, 30, 0, 30, 0, 6) | rect(30, 30, 10, 30, 0, 30)
    x, y = interior_point(ell)
    assert ell[int(y), int(x)] and y >= 10


def test_object_prompts_are_seeded_and_inside():
    masks = np.stack([rect(40, 50, 5, 20, 5, 30), rect(40, 50, 25, 26, 40, 41)])
    boxes = np.array([[5, 5, 30, 20], [40, 25, 41, 26]], dtype=np.float32)
    a = object_prompts(masks, boxes, np.random.default_rng([7, 0]))
    b = object_prompts(masks, boxes, np.random.default_rng([7, 0]))
    c = object_prompts(masks, boxes, np.random.default_rng([8, 0]))
    def points(prompts):
        return np.stack([p.points for p in prompts])

    assert np.array_equal(points(a), points(b)) and not np.array_equal(points(a), points(c))
    x, y = a[0].points.T.astype(int)
    assert masks[0][y, x].all() and len({tuple(p) for p in a[0].points}) == 3
    # a one-pixel object: the interior point, and two padding points the model ignores
    assert a[1].point_labels.tolist() == [1, -1, -1] and a[1].points[0].tolist() == [40, 25]


# --- metrics on constructed cases -----------------------------------------------------------


def test_oracle_predictions_score_one_and_empty_ones_zero():
    masks = np.stack([rect(32, 40, 2, 12, 3, 20), rect(32, 40, 18, 30, 22, 38)])
    boxes = Sample(image=np.zeros((32, 40, 3), np.uint8), masks=masks).boxes()
    prompts = object_prompts(masks, boxes, np.random.default_rng(0))
    for mode in PROMPTED:
        truth = masks.any(0, keepdims=True) if mode == "none" else masks
        pred = predict_mode(OraclePredictor(masks), prompts, mode, batch_objects=1)
        record = score_image(pred, truth, [-1] * len(truth), "x.png", 2)
        assert record.values["iou"] == [1.0] * len(truth), mode
        assert record.values["dice"] == [1.0] * len(truth)
        assert record.values["pixel_accuracy"] == [1.0] * len(truth)
        assert record.values["boundary_f1"] == [1.0] * len(truth)
        empty = predict_mode(OraclePredictor(masks, empty=True), prompts, mode)
        zero = score_image(empty, truth, [-1] * len(truth), "x.png", 2)
        assert zero.values["iou"] == [0.0] * len(truth) and zero.values["boundary_f1"][0] == 0.0


def test_point_mode_keeps_the_highest_scoring_candidate():
    masks = np.stack([rect(20, 20, 2, 10, 2, 10)])

    class ThreeCandidates(OraclePredictor):
        def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
            assert multimask_output and point_coords.shape == (1, 1, 2) and box is None
            cands = np.stack([np.zeros((20, 20), bool), self.masks[0], np.ones((20, 20), bool)])
            return cands[None], np.array([[0.1, 0.8, 0.5]]), None

    prompts = object_prompts(masks, np.array([[2, 2, 10, 10]], np.float32), np.random.default_rng(0))
    assert np.array_equal(predict_mode(ThreeCandidates(masks), prompts, "point"), masks)


def test_summarize_known_numbers():
    # image a: masks of IoU 1 and 0; image b: one mask of IoU 1 (categories 1, 2, 1)
    a = score_image(np.stack([rect(10, 10, 0, 5, 0, 5), np.zeros((10, 10), bool)]),
                    np.stack([rect(10, 10, 0, 5, 0, 5), rect(10, 10, 5, 10, 5, 10)]),
                    [1, 2], "a.png", 2)
    b = score_image(rect(10, 10, 0, 2, 0, 10)[None], rect(10, 10, 0, 2, 0, 10)[None], [1],
                    "b.png", 1)
    out = summarize(ModeResult("box", [a, b]), {1: "cat", 2: "dog"})
    assert out["n_images"] == 2 and out["n_masks"] == 3
    assert out["mask"]["iou"] == pytest.approx(2 / 3)
    assert out["image"]["iou"] == pytest.approx((0.5 + 1.0) / 2)
    # pooled: tp = 25 + 20, fn = 25, fp = 0 -> 45 / 70
    assert out["micro"]["iou"] == pytest.approx(45 / 70)
    assert out["micro"]["pixel_accuracy"] == pytest.approx((300 - 25) / 300)
    assert out["per_category"]["1"] == pytest.approx(
        {"name": "cat", "n_masks": 2, "iou": 1.0, "dice": 1.0, "pixel_accuracy": 1.0,
         "precision": 1.0, "recall": 1.0, "boundary_f1": 1.0})
    assert out["per_category"]["2"]["iou"] == 0.0 and out["per_category"]["2"]["name"] == "dog"


def test_summarize_matches_mask_metrics_class():
    """The evaluator's aggregates equal the training metric's (same definitions)."""
    from samtune.metrics import MaskMetrics

    rng = np.random.default_rng(0)
    pred, truth = rng.random((5, 16, 16)) > 0.5, rng.random((5, 16, 16)) > 0.4
    groups = [[0, 1], [2], [3, 4]]
    result = ModeResult("box", [score_image(pred[g], truth[g], [-1] * len(g), f"{i}", len(g))
                                for i, g in enumerate(groups)])
    metric = MaskMetrics()
    metric.update(torch.from_numpy(pred), torch.from_numpy(truth),
                  image_index=torch.tensor([0, 0, 1, 2, 2]))
    expected = metric.compute()
    out = summarize(result)
    for name in ("iou", "dice", "pixel_accuracy", "boundary_f1"):
        assert out["mask"][name] == pytest.approx(float(expected[f"mask_{name}"]), abs=1e-6)
        assert out["image"][name] == pytest.approx(float(expected[f"image_{name}"]), abs=1e-6)
    assert out["micro"]["iou"] == pytest.approx(float(expected["micro_iou"]), abs=1e-6)


# --- automatic mode: AP and matching --------------------------------------------------------


def test_ap_size_ranges_follow_mask_area_not_box_area():
    """A small square object, its exact detection, and a higher-scored false positive along
    the diagonal: a small mask (under 32^2 pixels) in a large box (128x128). By mask area the
    false positive competes in AP_small (precision 1/2 at full recall: 0.5); by its box area,
    as with a ``bbox`` in the results, it would be ignored there (AP_small 1.0)."""
    h = w = 128
    square = rect(h, w, 10, 30, 90, 110)  # 400 pixels
    diagonal = np.zeros((h, w), dtype=bool)
    for i in range(h):
        diagonal[i, max(0, i - 1):i + 2] = True  # about 380 pixels
    assert diagonal.sum() < 32 ** 2 and not (diagonal & square).any()
    truth = GroundTruth()
    truth.add(1, square[None], [-1])
    dets = []
    for mask, score in ((diagonal, 0.95), (square, 0.9)):
        rle = encode_coco_rles(mask[None])[0]
        ys, xs = np.nonzero(mask)
        dets.append({"image_id": 1, "category_id": 1, "segmentation": rle, "score": score,
                     "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
                     "area": float(mask.sum())})
    stats = coco_ap(truth, dets)
    assert stats["AP_small"] == pytest.approx(0.5, abs=1e-6)
    assert stats["AP"] == pytest.approx(0.5, abs=1e-6)
    assert stats["AP_large"] is None and stats["AP_medium"] is None


def test_coco_ap_of_perfect_detections_is_one():
    truth = GroundTruth()
    masks = np.stack([rect(60, 80, 5, 25, 5, 30), rect(60, 80, 30, 55, 40, 75)])
    truth.add(1, masks, [3, 1])
    truth.add(2, masks[:1], [-1])
    dets = [{"image_id": i, "category_id": 1, "segmentation": rle, "score": 0.9}
            for i, m in ((1, masks), (2, masks[:1])) for rle in encode_coco_rles(m)]
    stats = coco_ap(truth, dets)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(1.0)
    assert stats["AP_large"] is None  # no object above 96x96 pixels: COCO's -1


def test_coco_ap_equals_cocoeval_and_zero_without_detections():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = GroundTruth()
    masks = np.stack([rect(60, 80, 5, 25, 5, 30), rect(60, 80, 30, 55, 40, 75)])
    truth.add(1, masks, [-1, -1])
    off = np.stack([rect(60, 80, 5, 25, 8, 30), rect(60, 80, 0, 10, 0, 10)])
    dets = [{"image_id": 1, "category_id": 1, "segmentation": rle, "score": s}
            for rle, s in zip(encode_coco_rles(off), (0.9, 0.8))]
    stats = coco_ap(truth, [dict(d) for d in dets])
    gt = COCO()
    gt.dataset = {"images": truth.images, "annotations": truth.annotations,
                  "categories": [{"id": 1, "name": "1"}]}
    gt.createIndex()
    e = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), iouType="segm")
    e.params.useCats = 0
    e.evaluate(), e.accumulate(), e.summarize()
    assert stats["AP"] == pytest.approx(e.stats[0]) and 0 < stats["AP"] < 1
    assert coco_ap(truth, [])["AP"] == 0.0


def test_coco_ap_per_category_ignores_masks_on_other_categories():
    """Category 1 has two objects, category 2 one; a mask on background scores highest. For
    category 1 the mask on category 2's object is ignored (not a false positive): precision
    2/3 at full recall; for category 2, 1/2."""
    truth = GroundTruth()
    objects = np.stack([rect(60, 80, 2, 20, 2, 20), rect(60, 80, 30, 50, 2, 22),
                        rect(60, 80, 5, 25, 40, 60)])
    truth.add(1, objects, [1, 1, 2])
    background = rect(60, 80, 40, 58, 60, 78)
    masks = np.stack([background, objects[0], objects[1], objects[2]])
    dets = [{"image_id": 1, "category_id": 1, "segmentation": rle, "score": s}
            for rle, s in zip(encode_coco_rles(masks), (0.99, 0.9, 0.8, 0.95))]
    per = coco_ap_per_category(truth, dets, {1: "cell", 2: "debris"})
    assert per["1"]["name"] == "cell" and per["1"]["n_objects"] == 2
    assert per["1"]["AP"] == pytest.approx(2 / 3, abs=1e-3)
    assert per["2"]["AP"] == pytest.approx(1 / 2, abs=1e-3)
    one = GroundTruth()
    one.add(1, objects, [-1, -1, -1])
    assert coco_ap_per_category(one, dets) == {}  # one category: the overall AP says it


def test_best_matches_picks_the_highest_iou_mask():
    truth = np.stack([rect(20, 20, 0, 10, 0, 10), rect(20, 20, 10, 20, 10, 20)])
    generated = np.stack([rect(20, 20, 10, 20, 10, 19), rect(20, 20, 0, 10, 0, 9),
                          np.ones((20, 20), bool)])
    matched = best_matches(truth, generated)
    assert np.array_equal(matched[0], generated[1]) and np.array_equal(matched[1], generated[0])
    assert not best_matches(truth, generated[:0]).any()
    assert mask_utils.area(encode_coco_rles(truth)).tolist() == [100, 100]


# --- a real tiny model ----------------------------------------------------------------------


def test_tiny_model_every_prompted_mode(coco_data):
    model = load_model("sam_tiny")
    settings = EvalSettings(modes=PROMPTED, seed=1, max_images=2, batch_objects=2)
    results, truth = evaluate_models({"m": model}, coco_data, settings, progress=False)
    n_objects = sum(len(coco_data[i]) for i in range(2))
    for mode in PROMPTED:
        records = results["m"][mode].images
        assert [r.path for r in records] == [coco_data[i].path for i in range(2)]
        masks = sum(len(r.values["iou"]) for r in records)
        assert masks == (2 if mode == "none" else n_objects)
        values = results["m"][mode].values("iou")
        assert ((values >= 0) & (values <= 1)).all()
    assert len(truth.annotations) == n_objects
    # the same seed gives the same numbers
    again, _ = evaluate_models({"m": model}, coco_data, settings, progress=False)
    assert again["m"]["points3"].values("iou").tolist() == results["m"]["points3"].values("iou").tolist()


def test_unknown_mode_is_refused():
    from samtune.errors import SamtuneError

    with pytest.raises(SamtuneError, match="unknown prompt mode"):
        EvalSettings(modes=("box", "boxes"))


def test_image_records_round_trip_to_json():
    r = ImageRecord("a.png", 2, {"iou": [0.5, 1.0]}, [1, 2], (1, 2, 3, 4))
    assert r.to_json() == {"path": "a.png", "n_objects": 2, "categories": [1, 2],
                           "iou": [0.5, 1.0]}


def test_tiny_model_auto_mode(coco_data):
    model = load_model("sam_tiny")
    settings = EvalSettings(modes=("auto",), max_images=2, amg={
        "points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    results, truth = evaluate_models({"m": model}, coco_data, settings, progress=False)
    result = results["m"]["auto"]
    assert result.detections and {d["image_id"] for d in result.detections} <= {1, 2}
    assert len(result.values("iou")) == len(truth.annotations)
    stats = coco_ap(truth, result.detections)
    assert all(v is None or 0.0 <= v <= 1.0 for v in stats.values())
    out = summarize(result, {1: "ellipse"})
    assert out["n_masks"] == len(truth.annotations) and out["per_category"]


def test_the_report_folder_of_a_run_is_where_eval_writes_it(tmp_path):
    """`samtune serve` shows RUN/eval/val/ (the run's own validation data) first, else a report
    written straight into RUN/eval/ (the demo, an older samtune), else the newest other
    dataset's; None without any."""
    import os

    from samtune.infer.evaluate import eval_folder_name, report_folder

    run = tmp_path / "run"
    assert report_folder(run) is None
    for name, stamp in (("scans", 100), ("coco", 200)):
        (run / "eval" / name).mkdir(parents=True)
        (run / "eval" / name / "metrics.json").write_text("{}")
        os.utime(run / "eval" / name / "metrics.json", (stamp, stamp))
    assert report_folder(run) == run / "eval" / "coco"
    (run / "eval" / "metrics.json").write_text("{}")
    assert report_folder(run) == run / "eval"
    (run / "eval" / eval_folder_name(None)).mkdir()
    assert report_folder(run) == run / "eval"  # a val/ folder without a report does not count
    (run / "eval" / "val" / "metrics.json").write_text("{}")
    assert report_folder(run) == run / "eval" / "val"
