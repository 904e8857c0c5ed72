"""The public surface of ``samtune.Predictor`` beyond ``set_image``/``predict``: SAM 2's
``set_image_batch``/``predict_batch``/``normalize_coords`` and SamPredictor's
``set_torch_image``/``predict_torch``, each against the official predictor on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samtune
from samtune.errors import SamtuneError
from samtune.infer.predictor import Predictor
from tests.infer.test_predictor_parity import ATOL, assert_same, official_predictor


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def images(seed: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (300, 200, 3), dtype=np.uint8),
            rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)]


def test_public_names():
    assert samtune.Predictor is Predictor
    from samtune.infer.automatic import AutomaticMaskGenerator

    assert samtune.AutomaticMaskGenerator is AutomaticMaskGenerator
    assert callable(samtune.load_model)
    assert "sam_tiny" in {spec.name for spec in samtune.list_models()}
    for name in samtune.__all__:
        assert getattr(samtune, name) is not None


@pytest.mark.parametrize("given", ["sam_tiny", torch.nn.Linear(2, 2), None])
def test_predictor_refuses_what_is_not_a_samtune_model(given):
    with pytest.raises(SamtuneError, match="samtune.load_model") as info:
        Predictor(given)
    assert isinstance(info.value, TypeError)
    assert type(given).__name__ in str(info.value)


def test_official_module_is_refused_with_the_fix():
    official = samtune.load_model("sam_tiny").model
    with pytest.raises(TypeError, match="takes a samtune model.*got Sam: wrap"):
        Predictor(official)
    with pytest.raises(TypeError, match="AutomaticMaskGenerator takes a samtune model"):
        samtune.AutomaticMaskGenerator(official)


def test_image_batch_matches_sam2_official_batch():
    model = samtune.load_model("sam2_tiny")
    official, ours = official_predictor(model), Predictor(model)
    pictures = images()
    boxes = [np.array([10, 20, 150, 250.0]), np.array([[5, 5, 200, 100], [30, 40, 300, 230.0]])]
    points = [np.array([[60, 70.0]]), np.array([[[100, 100.0]], [[20, 30.0]]])]
    labels = [np.array([1]), np.array([[1], [1]])]
    official.set_image_batch(pictures)
    ours.set_image_batch(pictures)
    for multimask in (True, False):
        theirs = official.predict_batch(points, labels, box_batch=boxes,
                                        multimask_output=multimask, return_logits=True)
        mine = ours.predict_batch(points, labels, box_batch=boxes, multimask_output=multimask,
                                  return_logits=True)
        for i in range(2):
            assert_same([t[i] for t in theirs], [m[i] for m in mine], f"image {i} mm={multimask}")
    masks, _, _ = ours.predict_batch(box_batch=boxes)
    assert masks[0].dtype == bool and masks[0].shape == (3, 300, 200)
    assert masks[1].shape == (2, 3, 240, 320)
    with pytest.raises(RuntimeError, match="predict_batch"):
        ours.predict(box=boxes[0])
    with pytest.raises(ValueError, match="2 images"):
        ours.predict_batch(box_batch=boxes[:1])


def test_image_batch_equals_one_image_at_a_time():
    model = samtune.load_model("sam_tiny")
    batch, single = Predictor(model), Predictor(model)
    pictures = images(5)
    boxes = [np.array([10, 20, 150, 250.0]), np.array([30, 40, 300, 230.0])]
    batch.set_image_batch(pictures)
    together = batch.predict_batch(box_batch=boxes, return_logits=True)
    for i, (image, box) in enumerate(zip(pictures, boxes)):
        single.set_image(image)
        alone = single.predict(box=box, return_logits=True)
        for a, b in zip(alone, (t[i] for t in together)):
            np.testing.assert_allclose(b, a, atol=ATOL, rtol=0)
    with pytest.raises(RuntimeError, match="set_image_batch"):
        single.predict_batch(box_batch=boxes)


@pytest.mark.parametrize("name", ["sam_tiny", "sam2_tiny"])
def test_normalized_coords_equal_pixels(name):
    model = samtune.load_model(name)
    ours = Predictor(model)
    image = images(6)[1]
    h, w = image.shape[:2]
    ours.set_image(image)
    box = np.array([30, 40, 300, 230.0])
    point = np.array([[100, 150.0]])
    pixels = ours.predict(point_coords=point, point_labels=[1], box=box, return_logits=True)
    scale = np.array([w, h])
    fractions = ours.predict(point_coords=point / scale, point_labels=[1],
                             box=box / np.tile(scale, 2), normalize_coords=False,
                             return_logits=True)
    for a, b in zip(pixels, fractions):
        np.testing.assert_allclose(b, a, atol=ATOL, rtol=0)
    if name == "sam2_tiny":  # the official option, same numbers
        official = official_predictor(model)
        official.set_image(image)
        theirs = official.predict(point_coords=point / scale, point_labels=[1],
                                  box=box / np.tile(scale, 2), normalize_coords=False,
                                  return_logits=True)
        assert_same(theirs, fractions, "normalize_coords=False")


@pytest.mark.parametrize("name", ["sam_tiny", "mobile_sam_tiny"])
def test_torch_image_and_prompts_match_sam_predictor(name):
    model = samtune.load_model(name)
    official, ours = official_predictor(model), Predictor(model)
    image = images(7)[0]
    transform = official.transform
    resized = torch.as_tensor(transform.apply_image(image)).permute(2, 0, 1)[None].float()
    official.set_torch_image(resized, image.shape[:2])
    ours.set_torch_image(resized, image.shape[:2])
    boxes = torch.as_tensor(transform.apply_boxes(np.array([[10, 20, 150, 250.0],
                                                            [0, 0, 100, 100.0]]), image.shape[:2]))
    points = torch.as_tensor(transform.apply_coords(np.array([[[60, 70.0]], [[20, 30.0]]]),
                                                    image.shape[:2])).float()
    labels = torch.ones(2, 1, dtype=torch.int)
    for multimask in (True, False):
        theirs = official.predict_torch(points, labels, boxes.float(), multimask_output=multimask,
                                        return_logits=True)
        mine = ours.predict_torch(points, labels, boxes.float(), multimask_output=multimask,
                                  return_logits=True)
        assert_same([t.numpy() for t in theirs], [m.numpy() for m in mine], f"{name} mm={multimask}")
    masks = ours.predict_torch(None, None, boxes.float())[0]
    assert masks.dtype == torch.bool and masks.shape == (2, 3, 300, 200)
    with pytest.raises(ValueError, match="disagree"):
        ours.predict_torch(points[:1], labels[:1], boxes.float())
    # the same image through set_image gives the same embedding
    plain = Predictor(model)
    plain.set_image(image)
    torch.testing.assert_close(plain.get_image_embedding(), ours.get_image_embedding())
