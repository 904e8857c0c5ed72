"""The geometry and mask arithmetic of automatic mask generation, batched on tensors.

Each function reproduces one step of the official generators (``segment_anything`` /
``sam2`` ``utils/amg.py``) with the same numbers, batched: mask boxes, stability scores, the
crop-edge filter, and SAM 2's holes and sprinkles on the low-res logits. What the official
``amg`` already does per image (point grids, crop boxes, SAM's small-region removal on a final
mask) is imported from ``segment_anything.utils.amg``, not rewritten. Boxes are XYXY
with inclusive right/bottom pixel indices, as the official ``batched_mask_to_box``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from samtune.metrics import mask_areas


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) int64 XYXY boxes (inclusive max indices); 0s for empty masks."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.long, device=masks.device)
    as_bytes = masks.view(torch.uint8)  # amax over bytes is several times faster than any()
    rows, cols = as_bytes.amax(dim=2).bool(), as_bytes.amax(dim=1).bool()
    boxes = torch.stack([
        cols.int().argmax(1), rows.int().argmax(1),
        w - 1 - cols.flip(1).int().argmax(1), h - 1 - rows.flip(1).int().argmax(1),
    ], dim=1)
    return boxes * rows.any(1, keepdim=True)


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) XYXY -> XYWH with ``w = x1 - x0`` (the official records' convention)."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)


def stability_scores(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks at ``threshold + offset`` and ``threshold - offset`` (the first lies
    inside the second, so it is a ratio of pixel counts); NaN for a mask empty at both."""
    return mask_areas(logits > threshold + offset) / mask_areas(logits > threshold - offset)


def near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """(N,) bool: a box (XYXY, image frame) within ``atol`` of a crop side that is not also an
    image side, i.e. a mask probably cut off by the crop."""
    boxes = boxes.float()
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float, device=boxes.device)
    at_crop = (boxes - crop).abs() <= atol
    at_image = (boxes - image).abs() <= atol
    return (at_crop & ~at_image).any(dim=1)


def component_areas(binary: np.ndarray) -> np.ndarray:
    """(N, h, w) bool -> (N, h, w) int: each True pixel's 8-connected component area, 0
    elsewhere (what SAM 2's CUDA ``get_connected_components`` returns as counts).

    All N images go through one OpenCV call: they are tiled into one mosaic with a row and a
    column of False between tiles, which no 8-connected component can cross.
    """
    n, h, w = binary.shape
    if n == 0:
        return np.zeros(binary.shape, dtype=np.int64)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    mosaic = np.zeros((rows * (h + 1), cols * (w + 1)), dtype=np.uint8)
    tiles = mosaic.reshape(rows, h + 1, cols, w + 1)
    padded = np.zeros((rows * cols, h, w), dtype=np.uint8)
    padded[:n] = binary
    tiles[:, :h, :, :w] = padded.reshape(rows, cols, h, w).transpose(0, 2, 1, 3)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mosaic, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA][labels]
    areas[labels == 0] = 0
    areas = areas.reshape(rows, h + 1, cols, w + 1)[:, :h, :, :w].transpose(0, 2, 1, 3)
    return areas.reshape(rows * cols, h, w)[:n]


def fill_holes_and_sprinkles(logits: torch.Tensor, threshold: float, max_area: float) -> torch.Tensor:
    """SAM 2's low-res clean-up (``SAM2Transforms.postprocess_masks`` with ``max_hole_area =
    max_sprinkle_area = max_area``): background regions of at most ``max_area`` pixels become
    ``threshold + 10``, foreground regions of at most ``max_area`` become ``threshold - 10``;
    both found on the input logits. (N, K, h, w) float -> same shape.

    The official needs its CUDA extension for the connected components and skips the step
    without it; OpenCV does it here on any device.
    """
    flat = logits.detach().float().flatten(0, 1).cpu().numpy()
    holes = component_areas(flat <= threshold)
    sprinkles = component_areas(flat > threshold)
    out = logits.float()
    is_hole = torch.as_tensor((holes > 0) & (holes <= max_area), device=logits.device)
    is_sprinkle = torch.as_tensor((sprinkles > 0) & (sprinkles <= max_area), device=logits.device)
    out = torch.where(is_hole.view_as(out), threshold + 10.0, out)
    return torch.where(is_sprinkle.view_as(out), threshold - 10.0, out)
