"""RLE helpers against pycocotools and the official generators' uncompressed RLE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from segment_anything.utils.amg import mask_to_rle_pytorch, rle_to_mask

from samtune.infer.rle import (
    coco_results,
    decode_rle,
    encode_coco_rle,
    encode_coco_rles,
    masks_to_uncompressed_rles,
    rle_area,
    uncompressed_to_coco_rle,
)


@pytest.fixture
def masks() -> np.ndarray:
    rng = np.random.default_rng(0)
    m = rng.random((5, 13, 17)) > 0.6
    m[1] = False  # empty
    m[2] = True  # full
    m[3, 0, 0] = True  # starts with foreground
    return m


def test_uncompressed_rle_matches_official(masks):
    ours = masks_to_uncompressed_rles(torch.as_tensor(masks))
    official = mask_to_rle_pytorch(torch.as_tensor(masks))
    assert ours == official
    for rle, m in zip(ours, masks):
        np.testing.assert_array_equal(rle_to_mask(rle), m)
        np.testing.assert_array_equal(decode_rle(rle), m)
        assert rle_area(rle) == m.sum()
    assert masks_to_uncompressed_rles(np.zeros((0, 4, 5), dtype=bool)) == []


def test_coco_rle_round_trip_and_json(masks):
    rles = encode_coco_rles(masks)
    assert all(isinstance(r["counts"], str) for r in rles)
    json.dumps(rles)
    for rle, m, unc in zip(rles, masks, masks_to_uncompressed_rles(masks)):
        assert rle == encode_coco_rle(m) == uncompressed_to_coco_rle(unc)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), m)
        np.testing.assert_array_equal(decode_rle(rle), m)
        assert rle_area(rle) == m.sum()
    with pytest.raises(ValueError, match="H, W"):
        encode_coco_rle(masks)


def test_coco_results_from_any_output_mode(masks):
    records = [{"segmentation": seg, "predicted_iou": 0.5 + i / 10, "bbox": [1, 2, 3, 4],
                "area": int(m.sum())}
               for i, (seg, m) in enumerate(zip(
                   [masks[0], masks_to_uncompressed_rles(masks[2:3])[0], encode_coco_rle(masks[3])],
                   masks[[0, 2, 3]]))]
    results = coco_results(records, image_id=7)
    json.dumps(results)
    assert [r["score"] for r in results] == [0.5, 0.6, 0.7]
    for r, m in zip(results, masks[[0, 2, 3]]):
        assert r["image_id"] == 7 and r["category_id"] == 1
        np.testing.assert_array_equal(decode_rle(r["segmentation"]), m)
