"""Tiled inference: the tile grid, prompt routing, and tiled masks against untiled ones.

The correctness claims, with random-init tiny models (the masks are arbitrary, but the same
arbitrary masks must come out of the same encoding): an object decoded on its tile equals the
untiled prediction on that tile's outer crop, pasted; a prompt is decoded on the tile of its
centre only; the automatic generator with a tile as large as the image is the untiled one,
and its tiled records have no duplicates across tiles.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samtune import AutomaticMaskGenerator, load_model
from samtune.infer.predictor import Predictor
from samtune.errors import SamtuneError
from samtune.infer.rle import decode_rle
from samtune.infer.tiling import check_tiling, make_tiles, parse_pair, prompt_centres, tile_index


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model("sam_tiny")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (300, 340, 3), dtype=np.uint8)


def test_tiles_cover_the_image_with_clipped_halos():
    tiles = make_tiles((300, 340), (128, 128), (32, 16))
    assert len(tiles) == 3 * 3
    assert tiles[0].inner == (0, 0, 128, 128) and tiles[0].outer == (0, 0, 144, 160)
    assert tiles[4].inner == (128, 128, 256, 256) and tiles[4].outer == (112, 96, 272, 288)
    assert tiles[8].inner == (256, 256, 340, 300) and tiles[8].outer == (240, 224, 340, 300)
    covered = np.zeros((300, 340), dtype=int)
    for t in tiles:
        x0, y0, x1, y1 = t.inner
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all()  # inner tiles partition the image


def test_routing_by_centre():
    xy = np.array([[0, 0], [127.9, 0], [128, 0], [339, 299], [400, 400], [200, 130]])
    assert tile_index(xy, (300, 340), (128, 128)).tolist() == [0, 0, 1, 8, 8, 4]
    boxes = np.array([[100, 100, 200, 120]])
    assert prompt_centres(None, None, boxes).tolist() == [[150, 110]]
    points = np.array([[[10, 10], [30, 50], [999, 999]], [[10, 10], [30, 50], [999, 999]]])
    labels = np.array([[1, 1, 0], [0, 0, -1]])  # background clicks do not pull the centre
    assert prompt_centres(points, labels, None).tolist() == [[20, 30], [20, 30]]


def test_bad_tiling_is_a_user_error():
    assert check_tiling(None, None) is None
    assert check_tiling((512, 256), None) == ((512, 256), (0, 0))
    assert parse_pair("512", "--tile-shape") == (512, 512)
    for bad in [((0, 512), None), ((512, 512), (-1, 0)), ((512.5, 512), None)]:
        with pytest.raises(SamtuneError):
            check_tiling(*bad)
    with pytest.raises(SamtuneError, match="halo needs a tile_shape"):
        check_tiling(None, (64, 64))
    with pytest.raises(SamtuneError, match="ROWS,COLUMNS"):
        parse_pair("512x512", "--tile-shape")


def test_object_inside_a_tile_equals_untiled_on_the_tile_crop(model, image):
    tiled = Predictor(model, tile_shape=(128, 128), halo=(32, 32))
    tiled.set_image(image)
    box = np.array([150.0, 140.0, 230.0, 200.0])  # inside tile 4 (inner 128..256)
    masks, scores, low_res = tiled.predict(box=box, multimask_output=True)
    assert list(tiled._tile_features) == [4]  # only the owning tile was encoded
    tile = tiled.tiles[4]
    plain = Predictor(model)
    plain.set_image(tile.crop(image))
    ref_masks, ref_scores, ref_low = plain.predict(box=box - np.tile(tile.offset, 2),
                                                   multimask_output=True)
    x0, y0, x1, y1 = tile.outer
    np.testing.assert_array_equal(masks[:, y0:y1, x0:x1], ref_masks)
    assert not masks[:, :y0].any() and not masks[:, y1:].any()
    assert not masks[:, :, :x0].any() and not masks[:, :, x1:].any()
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    np.testing.assert_allclose(low_res, ref_low, atol=1e-5)


def test_object_across_a_border_is_one_mask_from_the_owning_tile(model, image):
    """A box that crosses the inner border at x = 128 is decoded on the tile of its centre,
    whose halo holds the rest of it: one decoding, no seam at the border."""
    tiled = Predictor(model, tile_shape=(128, 128), halo=(32, 32))
    tiled.set_image(image)
    box = np.array([[100.0, 20.0, 150.0, 60.0], [118.0, 20.0, 150.0, 60.0]])  # centres 125, 134
    masks, _, logits = tiled.predict(box=box, multimask_output=False, return_logits=True)
    assert sorted(tiled._tile_features) == [0, 1]
    for row, index in enumerate([0, 1]):
        tile = tiled.tiles[index]
        plain = Predictor(model)
        plain.set_image(tile.crop(image))
        ref, _, _ = plain.predict(box=box[row] - np.tile(tile.offset, 2), multimask_output=False,
                                  return_logits=True)
        x0, y0, x1, y1 = tile.outer
        np.testing.assert_allclose(masks[row, :, y0:y1, x0:x1], ref, atol=1e-4)
        assert np.isneginf(masks[row, :, y1:]).all()  # outside the tile: background


def test_points_outside_the_tile_become_padding(model, image):
    tiled = Predictor(model, tile_shape=(128, 128), halo=(16, 16))
    tiled.set_image(image)
    points = np.array([[40.0, 40.0], [60.0, 50.0], [330.0, 290.0]])  # foreground mean in tile 0
    labels = np.array([1, 1, 0])
    masks, _, _ = tiled.predict(point_coords=points, point_labels=labels, multimask_output=False)
    assert list(tiled._tile_features) == [0]
    tile = tiled.tiles[0]
    plain = Predictor(model)
    plain.set_image(tile.crop(image))
    ref, _, _ = plain.predict(point_coords=points - tile.offset, point_labels=np.array([1, 1, -1]),
                              multimask_output=False)
    x0, y0, x1, y1 = tile.outer
    np.testing.assert_array_equal(masks[:, y0:y1, x0:x1], ref)


def test_one_tile_as_large_as_the_image_is_the_untiled_predictor(model, image):
    box = np.array([20.0, 30.0, 200.0, 250.0])
    tiled = Predictor(model, tile_shape=(512, 512), halo=(64, 64))
    tiled.set_image(image)
    plain = Predictor(model)
    plain.set_image(image)
    for a, b in zip(tiled.predict(box=box), plain.predict(box=box)):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=1e-5)
    with pytest.raises(RuntimeError, match="one embedding per tile"):
        tiled.get_image_embedding()


LOW = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def test_automatic_with_one_tile_is_untiled(model, image):
    plain = AutomaticMaskGenerator(model, **LOW).generate(image)
    tiled = AutomaticMaskGenerator(model, tile_shape=(400, 400), halo=(8, 8), **LOW).generate(image)
    assert len(plain) == len(tiled) > 0
    for a, b in zip(plain, tiled):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        assert a["bbox"] == b["bbox"] and a["point_coords"] == b["point_coords"]


def colour_scene(size: tuple[int, int], centres: list[tuple[int, int]], radius: int):
    """Black image with one disc per centre, each in its own colour, and the (N, H, W) truth."""
    import cv2

    image = np.zeros((*size, 3), dtype=np.uint8)
    truth = []
    for i, (x, y) in enumerate(centres):
        colour = (40 + (i * 37) % 200, 40 + (i * 91) % 200, 40 + (i * 53) % 200)
        canvas = np.zeros(size, dtype=np.uint8)
        cv2.circle(canvas, (x, y), radius, 1, -1)
        image[canvas.astype(bool)] = colour
        truth.append(canvas.astype(bool))
    return image, np.stack(truth)


def oracle(model):
    """``model`` with an encoder that keeps the preprocessed image and a decoder that returns,
    for each point, the pixels of the point's colour (nothing on black): a perfect, local
    segmenter, so that tiling and merging are tested against ground truth exactly."""
    import types

    import torch.nn.functional as F

    def encode(self, images):
        from samtune.models.adapter import Features

        return Features(images)

    def decode(self, features, prompts, multimask_output):
        images = features.image_embed[prompts.image_index]  # (N, 3, S, S)
        xy = prompts.points[:, 0].round().long().clamp(0, images.shape[-1] - 1)
        rows = torch.arange(len(xy))
        colour = images[rows, :, xy[:, 1], xy[:, 0]]  # (N, 3)
        same = ((images - colour[:, :, None, None]).abs().amax(dim=1) < 1e-3).float()
        low = F.avg_pool2d(same[:, None], 4)  # (N, 1, S/4, S/4), the decoder's resolution
        logits = (low - 0.5) * 40
        background = (colour - images[:, :, -1:, -1:].amin(dim=(2, 3))).abs().amax(dim=1) < 1e-3
        logits[background] = -20.0
        k = 3 if multimask_output else 1
        return logits.expand(-1, k, -1, -1).contiguous(), torch.full((len(xy), k), 0.95)

    model.encode = types.MethodType(encode, model)
    model.decode = types.MethodType(decode, model)
    return model


def matched_iou(truth: np.ndarray, records: list[dict]) -> np.ndarray:
    masks = np.stack([decode_rle(r["segmentation"]) for r in records]) if records else np.zeros((0, *truth.shape[1:]), bool)
    inter = np.einsum("ahw,bhw->ab", truth.astype(np.float32), masks.astype(np.float32))
    union = truth.sum((1, 2))[:, None] + masks.sum((1, 2))[None] - inter
    return (inter / np.maximum(union, 1)).max(axis=1) if len(masks) else np.zeros(len(truth))


def test_automatic_tiles_stitch_objects_across_borders_without_duplicates():
    """A perfect local segmenter through the tiling: every disc, those that cross the inner
    borders at 256 included, comes out once and whole; shrunk to the model's 256 input, the
    whole 768-pixel image loses most of them."""
    torch.manual_seed(0)
    model = oracle(load_model("sam_tiny"))
    centres = [(256, 100), (100, 256), (256, 256), (512, 400), (400, 512), (700, 700),
               (60, 60), (620, 130), (130, 620), (380, 380), (512, 512), (300, 650)]
    image, truth = colour_scene((768, 768), centres, radius=14)
    options = dict(points_per_side=16, output_mode="coco_rle", stability_score_thresh=0.8,
                   multimask_output=False, points_per_batch=256)
    tiled = AutomaticMaskGenerator(model, tile_shape=(256, 256), halo=(40, 40), **options)
    records = tiled.generate(image)
    iou = matched_iou(truth, records)
    assert iou.min() >= 0.7, iou.round(2)  # the decoder's 4x coarser grid, not seams
    assert len(records) == len(truth)  # one record per disc: duplicates across tiles merged
    whole = AutomaticMaskGenerator(model, **options).generate(image)
    assert (matched_iou(truth, whole) >= 0.7).sum() < len(truth) // 2


def test_automatic_tiles_prompt_their_inner_block():
    torch.manual_seed(0)
    model = oracle(load_model("sam_tiny"))
    image, _ = colour_scene((300, 340), [(64, 64), (200, 150), (300, 250)], radius=20)
    generator = AutomaticMaskGenerator(model, tile_shape=(128, 128), halo=(48, 48),
                                       output_mode="coco_rle", points_per_side=8,
                                       multimask_output=False)
    records = generator.generate(image)
    assert len(records) == 3
    tiles = make_tiles(image.shape[:2], (128, 128), (48, 48))
    outer = {(t.outer[0], t.outer[1], t.outer[2] - t.outer[0], t.outer[3] - t.outer[1]): t
             for t in tiles}
    for r in records:
        tile = outer[tuple(r["crop_box"])]  # every mask comes from one tile's outer block
        (x, y), = r["point_coords"]
        ix0, iy0, ix1, iy1 = tile.inner
        assert ix0 <= x < ix1 and iy0 <= y < iy1  # prompted from the tile's inner block
        mask = decode_rle(r["segmentation"])
        assert mask.shape == image.shape[:2] and int(mask.sum()) == r["area"]
