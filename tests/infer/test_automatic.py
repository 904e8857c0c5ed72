"""samtune.AutomaticMaskGenerator against the official generators, same module, same image.

The official generator of each family (``segment_anything``'s, MobileSAM's copy, SAM 2's) is
built around the very module samtune wraps (``model.model``). Random-init models score their
masks poorly, so the comparisons lower the thresholds (and often lift box NMS to 1.0) to keep
tens of masks, then ask for the same records: same number, each mask matched one-to-one with
IoU >= 0.99, and the same scores, boxes, areas, points and crop boxes.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from samtune import AutomaticMaskGenerator, load_model
from samtune.errors import SamtuneError
from samtune.infer.automatic import PRESETS
from samtune.models.sam2 import Sam2Adapter
from samtune.infer.mask_ops import component_areas
from samtune.infer.rle import decode_rle

TINY = ["sam_tiny", "mobile_sam_tiny", "sam2_tiny"]
LOW = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    return {name: load_model(name) for name in TINY}


def make_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Noise over a horizontal ramp and a bright disc: a few regions for the masks to follow."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, (h, w, 3)) + np.linspace(0, 150, w)[None, :, None]
    cv2.circle(image, (w // 3, h // 2), min(h, w) // 4, (250, 250, 250), -1)
    return image.clip(0, 255).astype(np.uint8)


def official_generator(model, **kwargs):
    if model.family == "sam":
        from segment_anything import SamAutomaticMaskGenerator as Generator
    elif model.family == "mobile_sam":
        from mobile_sam import SamAutomaticMaskGenerator as Generator
    else:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Generator
    generator = Generator(model.model, **kwargs)
    if model.family == "sam2":  # the official predictor hard-codes 1024-input feature sizes
        generator.predictor._bb_feat_sizes = model.feature_sizes
    return generator


def reference_connected_components(mask: torch.Tensor):
    """A CPU stand-in for SAM 2's CUDA ``get_connected_components`` (absent here), one OpenCV
    call per mask, so that the official generator does its low-res hole filling."""
    labels, counts = torch.zeros_like(mask, dtype=torch.int32), torch.zeros_like(mask, dtype=torch.int32)
    for i, m in enumerate(mask[:, 0].numpy().astype(np.uint8)):
        _n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA][lab]
        area[lab == 0] = 0
        labels[i, 0], counts[i, 0] = torch.from_numpy(lab), torch.from_numpy(area.astype(np.int32))
    return labels, counts


@pytest.fixture(autouse=True)
def _sam2_components(monkeypatch):
    import sam2.utils.misc

    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", reference_connected_components)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, H, W), (M, H, W) bool -> (N, M) IoU."""
    a2, b2 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    inter = a2 @ b2.T
    union = a2.sum(1)[:, None] + b2.sum(1)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def match_records(ours: list[dict], official: list[dict]) -> list[tuple[int, int, float]]:
    """One-to-one (official, ours, mask IoU) pairs, greedily by a cost of mask IoU, predicted
    IoU and prompt point, so that duplicate masks (same mask from different points) pair up
    with the record of the same point."""
    iou = mask_iou(np.stack([r["segmentation"] for r in official]),
                   np.stack([r["segmentation"] for r in ours]))
    score = np.array([[abs(o["predicted_iou"] - r["predicted_iou"]) for r in ours] for o in official])
    point = np.array([[np.abs(np.subtract(o["point_coords"], r["point_coords"])).max() for r in ours]
                      for o in official])
    cost = (1 - iou) + score + point / 100
    pairs, used_official, used_ours = [], set(), set()
    for flat in np.argsort(cost, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, cost.shape)
        if i not in used_official and j not in used_ours:
            pairs.append((int(i), int(j), float(iou[i, j])))
            used_official.add(i)
            used_ours.add(j)
    return pairs


def assert_same_records(ours: list[dict], official: list[dict], what: str) -> None:
    assert len(ours) == len(official), f"{what}: {len(ours)} masks, official {len(official)}"
    if not official:
        return
    pairs = match_records(ours, official)
    assert min(iou for _, _, iou in pairs) >= 0.99, f"{what}: a mask with IoU < 0.99"
    for i, j, _ in pairs:
        o, r = official[i], ours[j]
        assert r["segmentation"].dtype == bool and r["segmentation"].shape == o["segmentation"].shape
        assert r["area"] == o["area"] and r["bbox"] == o["bbox"] and r["crop_box"] == o["crop_box"], what
        np.testing.assert_allclose(r["predicted_iou"], o["predicted_iou"], atol=1e-4, err_msg=what)
        np.testing.assert_allclose(r["stability_score"], o["stability_score"], atol=1e-3, err_msg=what)
        np.testing.assert_allclose(r["point_coords"], o["point_coords"], atol=1e-4, err_msg=what)


def compare(model, image: np.ndarray, **kwargs) -> list[dict]:
    ours = AutomaticMaskGenerator(model, **kwargs).generate(image)
    official = official_generator(model, **kwargs).generate(image)
    assert_same_records(ours, official, f"{model.spec.name} {image.shape[:2]} {kwargs}")
    return ours


CASES = {
    "many masks": ((96, 128), dict(points_per_side=6, box_nms_thresh=1.0, **LOW)),
    "nms, non-square": ((120, 72), dict(points_per_side=8, box_nms_thresh=0.5, **LOW)),
    "crops": ((96, 128), dict(points_per_side=4, crop_n_layers=1, crop_nms_thresh=1.0,
                              box_nms_thresh=1.0, **LOW)),
    "min region area": ((96, 128), dict(points_per_side=5, box_nms_thresh=1.0,
                                        min_mask_region_area=40, **LOW)),
    "thresholds": ((96, 128), {"points_per_side": 5, "box_nms_thresh": 1.0,
                               "pred_iou_thresh": 0.02, "stability_score_thresh": 0.3,
                               "stability_score_offset": 0.5, "points_per_batch": 7}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", TINY)
def test_same_records_as_official(models, name, case):
    size, kwargs = CASES[case]
    records = compare(models[name], make_image(*size), **kwargs)
    if case in ("many masks", "crops"):
        assert len(records) >= 20, "the comparison should cover many masks"


@pytest.mark.parametrize("kwargs", [
    {"use_m2m": True},
    {"multimask_output": False},
    # SAM 2's low-res clean-up stays at logit 0 whatever mask_threshold says, as the official
    {"use_m2m": True, "mask_threshold": -0.5, "min_mask_region_area": 20},
])
def test_sam2_options_match_official(models, kwargs):
    records = compare(models["sam2_tiny"], make_image(96, 128, seed=1), points_per_side=5,
                      box_nms_thresh=1.0, **LOW, **kwargs)
    assert len(records) >= 5


def test_r0_settings_match_official(models):
    """R0's seg_all.py settings (crops with half the points, m2m, offset 0.7, min area 25),
    with fewer points and no score thresholds so that a random model keeps masks."""
    kwargs = {**PRESETS["labpics_sam2"], "points_per_side": 6, **LOW}
    compare(models["sam2_tiny"], make_image(96, 128, seed=2), **kwargs)


def test_explicit_point_grids_match_official(models):
    grids = [np.array([[0.1, 0.2], [0.5, 0.5], [0.9, 0.7], [0.3, 0.8]])]
    compare(models["sam_tiny"], make_image(80, 100), points_per_side=None, point_grids=grids,
            box_nms_thresh=1.0, **LOW)


@pytest.mark.parametrize("name", ["sam_tiny", "sam2_tiny"])
def test_output_modes(models, name):
    model, image = models[name], make_image(72, 90, seed=3)
    kwargs = dict(points_per_side=4, box_nms_thresh=1.0, **LOW)
    binary = AutomaticMaskGenerator(model, **kwargs).generate(image)
    assert len(binary) > 0
    uncompressed = AutomaticMaskGenerator(model, output_mode="uncompressed_rle", **kwargs).generate(image)
    coco = AutomaticMaskGenerator(model, output_mode="coco_rle", **kwargs).generate(image)
    official = official_generator(model, output_mode="uncompressed_rle", **kwargs).generate(image)
    assert [r["segmentation"] for r in uncompressed] == [r["segmentation"] for r in official]
    for b, u, c in zip(binary, uncompressed, coco):
        assert isinstance(c["segmentation"]["counts"], str)
        rle = {"size": c["segmentation"]["size"], "counts": c["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), b["segmentation"])
        np.testing.assert_array_equal(decode_rle(u["segmentation"]), b["segmentation"])
        assert u["segmentation"]["size"] == [72, 90]
        assert b["area"] == u["area"] == c["area"] == int(mask_utils.area(rle))
        for key in ("bbox", "predicted_iou", "stability_score", "point_coords", "crop_box"):
            assert b[key] == u[key] == c[key]


def test_family_defaults_and_nothing_found(models):
    assert AutomaticMaskGenerator(models["sam_tiny"]).pred_iou_thresh == 0.88
    assert AutomaticMaskGenerator(models["mobile_sam_tiny"]).pred_iou_thresh == 0.88
    assert AutomaticMaskGenerator(models["sam2_tiny"]).pred_iou_thresh == 0.8 == Sam2Adapter.everything.pred_iou_thresh
    generator = AutomaticMaskGenerator(models["sam_tiny"], **PRESETS["finestsam_points"])
    assert generator.min_mask_region_area == 300 and len(generator.point_grids[0]) == 32 * 32
    for mode in ("binary_mask", "uncompressed_rle", "coco_rle"):
        assert AutomaticMaskGenerator(models["sam_tiny"], points_per_side=2, pred_iou_thresh=1.0,
                                      output_mode=mode).generate(make_image(40, 50)) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"output_mode": "png"}, "output_mode"),
    ({"points_per_side": None}, "exactly one"),
    ({"point_grids": [np.zeros((4, 2))]}, "exactly one"),
    ({"points_per_side": 0}, "points_per_side"),
    ({"points_per_batch": 0}, "points_per_batch"),
    ({"points_per_side": 2, "crop_n_layers": 1, "crop_n_points_downscale_factor": 4}, "no points"),
    ({"points_per_side": None, "point_grids": [np.zeros((4, 3))]}, r"\(P, 2\)"),
    ({"points_per_side": None, "point_grids": [np.full((4, 2), 2.0)]}, r"\[0, 1\]"),
    ({"points_per_side": None, "point_grids": [np.zeros((4, 2))], "crop_n_layers": 1}, "one per layer"),
    ({"box_nms_thresh": 1.5}, "box_nms_thresh"),
    ({"min_mask_region_area": -1}, "min_mask_region_area"),
    ({"crop_n_layers": -1}, "crop_n_layers"),
])
def test_bad_arguments(models, kwargs, match):
    with pytest.raises(ValueError, match=match):
        AutomaticMaskGenerator(models["sam_tiny"], **kwargs)


def test_bad_model_and_image(models):
    with pytest.raises(TypeError, match="samtune model"):
        AutomaticMaskGenerator(models["sam_tiny"].model)
    generator = AutomaticMaskGenerator(models["sam_tiny"], points_per_side=2)
    with pytest.raises(ValueError, match="uint8"):
        generator.generate(np.zeros((20, 20, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        generator.generate(np.zeros((20, 20), dtype=np.uint8))


def test_grid_crops_and_components_match_official_helpers(models):
    """Grids and crops are the official helpers' own (imported); the batched connected
    components equal SAM 2's reference."""
    from segment_anything.utils.amg import build_all_layer_point_grids, build_point_grid

    for n, layers, scale in [(1, 0, 1), (4, 2, 2), (7, 1, 1)]:
        generator = AutomaticMaskGenerator(models["sam_tiny"], points_per_side=n,
                                           crop_n_layers=layers, crop_n_points_downscale_factor=scale)
        expected = build_all_layer_point_grids(n, layers, scale)
        assert len(generator.point_grids) == layers + 1
        for ours, official in zip(generator.point_grids, expected):
            np.testing.assert_allclose(ours, official, atol=1e-12)
        np.testing.assert_allclose(generator.point_grids[0], build_point_grid(n), atol=1e-12)
    binary = np.random.default_rng(0).random((7, 9, 11)) > 0.55
    expected = reference_connected_components(torch.as_tensor(binary)[:, None])[1][:, 0].numpy()
    np.testing.assert_array_equal(component_areas(binary), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobile_sam", "sam2.1_hiera_t"])
def test_full_size_models_match_official(name):
    torch.manual_seed(0)
    compare(load_model(name), make_image(120, 160), points_per_side=8, box_nms_thresh=0.9,
            min_mask_region_area=30, **LOW)


@pytest.mark.parametrize("name", TINY)
def test_record_types_are_the_official_ones(models, name):
    """SAM 2's generator gives float ``bbox`` and ``crop_box`` values, SAM's and MobileSAM's
    integers; a record read by code written for the official generator finds the same types."""
    image = make_image(64, 80, seed=4)
    kwargs = dict(points_per_side=4, box_nms_thresh=1.0, **LOW)
    official = official_generator(models[name], **kwargs).generate(image)
    ours = AutomaticMaskGenerator(models[name], **kwargs).generate(image)
    assert official and ours
    for key in ("bbox", "crop_box", "area", "predicted_iou", "stability_score"):
        want = {type(v) for r in official for v in np.atleast_1d(r[key]).tolist()}
        got = {type(v) for r in ours for v in np.atleast_1d(r[key]).tolist()}
        assert got == want, (key, got, want)


@pytest.mark.parametrize("name", ["sam_tiny", "mobile_sam_tiny"])
def test_use_m2m_is_refused_outside_sam2(models, name):
    with pytest.raises(SamtuneError, match="use_m2m is SAM 2's"):
        AutomaticMaskGenerator(models[name], use_m2m=True)
