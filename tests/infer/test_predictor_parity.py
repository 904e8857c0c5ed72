"""samtune.Predictor against the official predictors, same weights, same image, same prompts.

Tiny variants run every prompt kind at several image sizes; the full-size MobileSAM (vit_t) and
SAM 2.1 Hiera-T run one image size with the official builders' modules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samtune import load_model
from samtune.infer.predictor import Predictor

SIZES = [(480, 640), (300, 200), (1024, 768)]
ATOL = 1e-4


def official_predictor(model):
    if model.family == "sam":
        from segment_anything import SamPredictor

        return SamPredictor(model.model)
    if model.family == "mobile_sam":
        from mobile_sam import SamPredictor

        return SamPredictor(model.model)
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model.model)
    # The official predictor hard-codes the 1024-input feature sizes.
    predictor._bb_feat_sizes = model.feature_sizes
    return predictor


def prompt_cases(h: int, w: int) -> dict[str, dict]:
    return {
        "box": dict(box=np.array([0.1 * w, 0.2 * h, 0.6 * w, 0.7 * h])),
        "pos_neg_points": dict(
            point_coords=np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.2 * h], [0.5 * w, 0.9 * h]]),
            point_labels=np.array([1, 0, 1]),
        ),
        "box_and_point": dict(
            box=np.array([5, 5, w - 10, h - 12]),
            point_coords=np.array([[0.5 * w, 0.5 * h]]),
            point_labels=np.array([1]),
        ),
        "one_point": dict(point_coords=np.array([[w // 3, h // 3]]), point_labels=np.array([1])),
    }


def assert_same(official_out, ours_out, what: str) -> None:
    for a, b, name in zip(official_out, ours_out, ("masks", "scores", "low_res")):
        a = np.asarray(a, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        assert a.shape == b.shape, f"{what} {name}: shape {b.shape} != official {a.shape}"
        np.testing.assert_allclose(b, a, atol=ATOL, rtol=0, err_msg=f"{what} {name}")


def run_parity(model, sizes, seed: int = 0) -> None:
    """One predictor call per case and side: masks are the returned logits thresholded as the
    predictors threshold them (``> mask_threshold``), checked against the boolean output once
    per image."""
    official = official_predictor(model)
    ours = Predictor(model)
    rng = np.random.default_rng(seed)
    for h, w in sizes:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        official.set_image(image)
        ours.set_image(image)
        checked_bool = False
        # SamPredictor thresholds at its model's mask_threshold, SAM 2's predictor at its own
        cut = getattr(official, "mask_threshold", None)
        cut = official.model.mask_threshold if cut is None else cut
        for name, prompts in prompt_cases(h, w).items():
            for multimask in (True, False):
                what = f"{model.spec.name} {h}x{w} {name} multimask={multimask}"
                logits_official = official.predict(**prompts, multimask_output=multimask, return_logits=True)
                logits_ours = ours.predict(**prompts, multimask_output=multimask, return_logits=True)
                assert_same(logits_official, logits_ours, what)
                masks_official = logits_official[0] > cut
                masks_ours = logits_ours[0] > ours.mask_threshold
                np.testing.assert_array_equal(masks_ours, masks_official, err_msg=what)
                if not checked_bool:
                    plain = ours.predict(**prompts, multimask_output=multimask)
                    assert plain[0].dtype == bool
                    np.testing.assert_array_equal(plain[0], masks_ours, err_msg=f"{what} bool")
                    checked_bool = True
                # feed the best low-res logits back as the mask prompt, as SAM's notebooks do
                best = int(np.argmax(logits_official[1]))
                fed_official = official.predict(
                    **prompts, mask_input=logits_official[2][best][None], multimask_output=multimask,
                    return_logits=True)
                fed_ours = ours.predict(
                    **prompts, mask_input=logits_ours[2][best][None], multimask_output=multimask,
                    return_logits=True)
                np.testing.assert_array_equal(fed_ours[0] > ours.mask_threshold,
                                              fed_official[0] > cut,
                                              err_msg=f"{what} mask_input")
                np.testing.assert_allclose(fed_ours[1], fed_official[1], atol=ATOL)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", ["sam_tiny", "mobile_sam_tiny", "sam2_tiny"])
def test_tiny_models_match_official_predictor(name):
    run_parity(load_model(name), SIZES)


@pytest.mark.parametrize("name", ["mobile_sam", "sam2.1_hiera_t"])
def test_full_size_models_match_official_predictor(name):
    run_parity(load_model(name), [(480, 640)])


@pytest.mark.parametrize("name", ["sam_tiny", "sam2_tiny"])
def test_batched_boxes_match_one_call_per_box(name):
    """N boxes in one decoder call give what N official single-box calls give."""
    model = load_model(name)
    official = official_predictor(model)
    ours = Predictor(model)
    image = np.random.default_rng(1).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    official.set_image(image)
    ours.set_image(image)
    boxes = np.array([[10, 10, 120, 200], [50, 60, 190, 290], [0, 0, 200, 300]], dtype=float)
    masks, scores, low_res = ours.predict(box=boxes, multimask_output=True, return_logits=True)
    assert masks.shape == (3, 3, 300, 200) and scores.shape == (3, 3)
    for i, box in enumerate(boxes):
        m, s, lr = official.predict(box=box, multimask_output=True, return_logits=True)
        np.testing.assert_allclose(masks[i], m, atol=ATOL)
        np.testing.assert_allclose(scores[i], s, atol=ATOL)
        np.testing.assert_allclose(low_res[i], lr, atol=ATOL)


def test_decode_mixes_images_in_one_call():
    """Objects from two images in one decode equal each image decoded alone."""
    from samtune.models import Prompts

    model = load_model("sam_tiny")
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (200, 300, 3), dtype=np.uint8),
              rng.integers(0, 256, (256, 128, 3), dtype=np.uint8)]
    with torch.no_grad():
        batch = model.preprocess(images)
        features = model.encode(batch.images)
        boxes = torch.tensor([[10.0, 10, 100, 90], [20, 30, 120, 200], [5, 5, 60, 60]])
        index = torch.tensor([0, 1, 1])
        joint, joint_iou = model.decode(features, Prompts(index, boxes=boxes), multimask_output=True)
        for i in range(3):
            alone = features.select(index[i : i + 1])
            single, single_iou = model.decode(
                alone, Prompts(torch.zeros(1, dtype=torch.long), boxes=boxes[i : i + 1]), True)
            torch.testing.assert_close(joint[i : i + 1], single, atol=ATOL, rtol=0)
            torch.testing.assert_close(joint_iou[i : i + 1], single_iou, atol=ATOL, rtol=0)


def test_predictor_errors_are_clear():
    ours = Predictor(load_model("sam_tiny"))
    with pytest.raises(RuntimeError, match="set_image"):
        ours.predict(box=np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="HxWx3"):
        ours.set_image(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ours.set_image(np.zeros((10, 10, 3), dtype=np.float32))
    ours.set_image(np.zeros((10, 12, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="point_labels"):
        ours.predict(point_coords=np.array([[1, 1]]))
    with pytest.raises(ValueError, match="mask_input"):
        ours.predict(box=np.array([0, 0, 5, 5]), mask_input=np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="disagree"):
        ours.predict(box=np.zeros((2, 4)), point_coords=np.zeros((3, 1, 2)), point_labels=np.ones((3, 1)))


def test_bgr_input_equals_rgb_input():
    ours = Predictor(load_model("sam_tiny"))
    image = np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    ours.set_image(image)
    rgb = ours.predict(box=np.array([5, 5, 60, 50]))
    ours.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    bgr = ours.predict(box=np.array([5, 5, 60, 50]))
    np.testing.assert_array_equal(rgb[0], bgr[0])
