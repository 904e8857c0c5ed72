"""Augmentations keep image, masks and boxes together, and drop objects cropped away."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torchvision import tv_tensors
from torchvision.transforms import v2

from samtune.config.prompts import AugmentConfig, ColorJitterConfig, ResizedCropConfig
from samtune.data.sample import Sample
from samtune.data.transforms import (
    Augmenter,
    RandomRotate90,
    RandomScaleCrop,
    build_transform,
    rotate_boxes90,
    select_objects,
)

H, W = 40, 64


def painted_sample(label_map: bool = False) -> Sample:
    """Two rectangles; the image's red channel is 255 exactly on the objects, so any
    geometric transform can be checked by comparing it with the masks."""
    masks = np.zeros((2, H, W), dtype=bool)
    masks[0, 4:12, 6:20] = True      # top-left
    masks[1, 25:37, 44:60] = True    # bottom-right
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[..., 0] = masks.any(0) * 255
    image[..., 1] = 80
    if label_map:
        lm = np.zeros((H, W), dtype=np.int32)
        lm[masks[0]], lm[masks[1]] = 5, 9
        return Sample(image, label_map=lm, object_ids=[5, 9], category_ids=[1, 2])
    return Sample(image, masks=masks, category_ids=[1, 2], annotation_ids=[10, 11])


def test_horizontal_flip_mirrors_image_mask_and_box():
    s = painted_sample()
    out = Augmenter(AugmentConfig(hflip=1.0))(s, np.random.default_rng(0))
    assert out.masks[0, 4:12, W - 20:W - 6].all() and out.masks[0].sum() == s.masks[0].sum()
    np.testing.assert_array_equal(out.boxes()[0], [W - 20, 4, W - 6, 12])
    np.testing.assert_array_equal(out.image[..., 0] == 255, out.masks.any(0))
    _, _, boxes = Augmenter(AugmentConfig(hflip=1.0)).apply(s.image, s.masks, s.boxes())
    np.testing.assert_allclose(boxes, out.boxes())


def test_vertical_flip_mirrors_rows():
    s = painted_sample()
    out = Augmenter(AugmentConfig(vflip=1.0))(s, np.random.default_rng(0))
    np.testing.assert_array_equal(out.boxes()[1], [44, H - 37, 60, H - 25])
    np.testing.assert_array_equal(out.image[..., 0] == 255, out.masks.any(0))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_quarter_turns_swap_sides_and_boxes_follow_masks(k):
    s = painted_sample()
    t = RandomRotate90(p=1.0)
    image = tv_tensors.Image(torch.from_numpy(s.image).permute(2, 0, 1))
    masks = tv_tensors.Mask(torch.from_numpy(s.masks))
    boxes = tv_tensors.BoundingBoxes(torch.from_numpy(s.boxes()), format="XYXY", canvas_size=(H, W))
    img2, m2, b2 = (t.transform(x, {"k": k}) for x in (image, masks, boxes))
    expected = (W, H) if k % 2 else (H, W)
    assert tuple(img2.shape[-2:]) == expected and tuple(m2.shape[-2:]) == expected
    assert tuple(b2.canvas_size) == expected
    rotated = Sample(img2.permute(1, 2, 0).numpy(), masks=m2.numpy())
    np.testing.assert_array_equal(b2.numpy(), rotated.boxes())
    np.testing.assert_array_equal(rotated.image[..., 0] == 255, rotated.masks.any(0))


def test_rotation_through_augmenter_on_non_square_image():
    s = painted_sample()
    aug = Augmenter(AugmentConfig(rotate90=1.0))
    shapes = set()
    for seed in range(12):
        out = aug(s, np.random.default_rng(seed))
        shapes.add(out.image.shape[:2])
        assert out.masks.shape[1:] == out.image.shape[:2]
        np.testing.assert_array_equal(out.image[..., 0] == 255, out.masks.any(0))
        torch.manual_seed(seed)
        image, masks, boxes = aug.apply(s.image, s.masks, s.boxes())
        np.testing.assert_array_equal(boxes, Sample(image, masks=masks).boxes())
    assert shapes == {(W, H), (H, W)}


def test_rotate_boxes90_matches_rot90_of_masks():
    s = painted_sample()
    for k in range(4):
        rotated = torch.rot90(torch.from_numpy(s.masks), k, dims=(-2, -1)).numpy()
        expect = Sample(np.zeros((*rotated.shape[1:], 3), np.uint8), masks=rotated).boxes()
        got = rotate_boxes90(torch.from_numpy(s.boxes()), (H, W), k).numpy()
        np.testing.assert_array_equal(got, expect)


def test_crop_keeps_size_and_drops_objects_cropped_away():
    s = painted_sample()
    aug = Augmenter(AugmentConfig(resized_crop=ResizedCropConfig(p=1.0, scale=(0.2, 0.3)),
                                  min_area=4))
    dropped = 0
    for seed in range(30):
        out = aug(s, np.random.default_rng(seed))
        assert out.image.shape == s.image.shape
        assert set(out.object_ids) <= {0, 1}
        assert out.category_ids == [s.category_ids[i] for i in out.object_ids]
        assert out.annotation_ids == [s.annotation_ids[i] for i in out.object_ids]
        assert all(m.sum() >= 4 for m in out.masks)
        # masks (nearest-exact) and image (bilinear) cover the same pixels
        painted, covered = out.image[..., 0] > 127, out.masks.any(0)
        if covered.any():
            assert (painted & covered).sum() / (painted | covered).sum() > 0.95
        dropped += 2 - len(out)
    assert dropped > 0


def test_crop_of_label_map_keeps_ids_and_clears_dropped_specks():
    s = painted_sample(label_map=True)
    aug = Augmenter(AugmentConfig(resized_crop=ResizedCropConfig(p=1.0, scale=(0.2, 0.3)),
                                  min_area=30))
    for seed in range(20):
        out = aug(s, np.random.default_rng(seed))
        assert out.label_map is not None and out.label_map.shape == (H, W)
        assert set(np.unique(out.label_map)) <= {0, *out.object_ids}
        assert out.category_ids == [{5: 1, 9: 2}[i] for i in out.object_ids]
        assert all(m.sum() >= 30 for m in out.object_masks())


def test_crop_ratio_is_relative_to_the_image_aspect():
    t = RandomScaleCrop(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    torch.manual_seed(0)
    params = t.make_params([tv_tensors.Image(torch.zeros(3, H, W, dtype=torch.uint8))])
    _, _, ch, cw = params["crop"]
    assert (ch, cw) == (H // 2, W // 2)


def test_color_jitter_changes_the_image_only():
    s = painted_sample()
    out = Augmenter(AugmentConfig(color_jitter=ColorJitterConfig()))(s, np.random.default_rng(3))
    assert not np.array_equal(out.image, s.image)
    np.testing.assert_array_equal(out.masks, s.masks)


def test_reference_settings_are_expressible_from_config():
    r0 = AugmentConfig.model_validate(
        {"color_jitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.2}})
    jitter = build_transform(r0).transforms[0].transforms[0]
    assert isinstance(jitter, v2.ColorJitter)
    assert jitter.brightness == (0.7, 1.3) and jitter.hue == (-0.2, 0.2)
    r1 = AugmentConfig.model_validate({
        "resized_crop": {"p": 0.5, "scale": [0.35, 1.0], "ratio": [1.0, 1.0]},
        "color_jitter": {"brightness": 0.4, "contrast": 0.15, "saturation": 0.15, "hue": 0.5,
                         "p": 0.5},
    })
    crop, apply = build_transform(r1).transforms
    assert isinstance(crop, RandomScaleCrop) and crop.scale == (0.35, 1.0)
    assert apply.p == 0.5 and apply.transforms[0].saturation == (0.85, 1.15)


def test_bad_augment_config_names_the_option():
    with pytest.raises(ValidationError, match="hue"):
        AugmentConfig.model_validate({"color_jitter": {"hue": 0.7}})
    with pytest.raises(ValidationError, match="flip_h"):
        AugmentConfig.model_validate({"flip_h": 0.5})
    with pytest.raises(ValidationError, match="resized_crop.scale"):
        AugmentConfig.model_validate({"resized_crop": {"scale": [0.5, 0.2]}})


def test_same_generator_same_result_and_no_objects_is_fine():
    cfg = AugmentConfig(hflip=0.5, rotate90=0.5, resized_crop=ResizedCropConfig(),
                        color_jitter=ColorJitterConfig())
    s = painted_sample()
    a = Augmenter(cfg)(s, np.random.default_rng(7))
    b = Augmenter(cfg)(s, np.random.default_rng(7))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    empty = select_objects(s, [])
    out = Augmenter(cfg)(empty, np.random.default_rng(7))
    assert len(out) == 0 and out.masks.shape == (0, *out.image.shape[:2])


def test_disabled_config_only_drops_empty_objects():
    s = painted_sample()
    assert Augmenter(AugmentConfig())(s, np.random.default_rng(0)) is s
    masks = np.concatenate([s.masks, np.zeros((1, H, W), bool)])
    with_empty = Sample(s.image, masks=masks, category_ids=[1, 2, 3])
    out = Augmenter(AugmentConfig())(with_empty, np.random.default_rng(0))
    assert out.object_ids == [0, 1] and out.category_ids == [1, 2]
