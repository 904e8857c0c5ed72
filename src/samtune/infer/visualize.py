"""Overlays of masks and prompts on an image, for people to look at."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Distinct colours (RGB) cycled over objects; the first is SAM's demo blue.
PALETTE = np.array(
    [[30, 144, 255], [255, 99, 71], [60, 179, 113], [255, 215, 0], [186, 85, 211],
     [0, 206, 209], [255, 140, 0], [199, 21, 133], [154, 205, 50], [70, 130, 180]],
    dtype=np.uint8,
)


def overlay(
    image: np.ndarray,
    masks: np.ndarray,
    opacity: float = 0.5,
    boxes: np.ndarray | None = None,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    contour: bool = True,
    colours: Sequence[int] | None = None,
    texts: Sequence[str] | None = None,
) -> np.ndarray:
    """Blend (N, H, W) bool masks onto an HxWx3 uint8 RGB image, one colour per mask.

    Boxes (xyxy) are drawn in the mask's colour; points as green (foreground) or red
    (background) stars, as SAM's notebooks show them. ``colours``: a palette index per mask
    (one per category, so masks of a class share a colour); ``texts``: a caption per mask
    (its category), written at the mask's top-left.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be within 0..1, got {opacity}")
    out = image.astype(np.float32).copy()
    masks = np.asarray(masks, dtype=bool).reshape(-1, *image.shape[:2])
    index = list(range(len(masks))) if colours is None else list(colours)
    palette = [PALETTE[c % len(PALETTE)] for c in index]
    for mask, colour in zip(masks, palette):
        out[mask] = (1 - opacity) * out[mask] + opacity * colour.astype(np.float32)
    out = out.round().astype(np.uint8)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    if contour:
        for mask, colour in zip(masks, palette):
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour.tolist(), thickness)
    if texts is not None:
        scale = max(0.3, max(image.shape[:2]) / 1600)
        for mask, text, colour in zip(masks, texts, palette):
            ys, xs = np.nonzero(mask)
            if len(xs):
                at = (int(xs.min()), max(int(ys.min()) - 2, 10))
                cv2.putText(out, text, at, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                            thickness + 2, cv2.LINE_AA)
                cv2.putText(out, text, at, cv2.FONT_HERSHEY_SIMPLEX, scale, colour.tolist(),
                            thickness, cv2.LINE_AA)
    if boxes is not None:
        for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=float).reshape(-1, 4)):
            cv2.rectangle(out, (round(x0), round(y0)), (round(x1), round(y1)),
                          PALETTE[i % len(PALETTE)].tolist(), thickness + 1)
    if points is not None:
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        labels = np.ones(len(pts)) if point_labels is None else np.asarray(point_labels).reshape(-1)
        size = max(8, round(max(image.shape[:2]) / 40))
        for (x, y), label in zip(pts, labels):
            colour = (0, 200, 0) if label == 1 else (220, 0, 0)
            cv2.drawMarker(out, (round(x), round(y)), (255, 255, 255), cv2.MARKER_STAR, size + 4,
                           thickness + 2)
            cv2.drawMarker(out, (round(x), round(y)), colour, cv2.MARKER_STAR, size, thickness + 1)
    return out


def side_by_side(panels: list[np.ndarray], titles: list[str], gap: int = 6) -> np.ndarray:
    """HxWx3 panels in one row with a title above each, for comparisons people read at a
    glance (image | ground truth | base | fine-tuned)."""
    h = max(p.shape[0] for p in panels)
    band = max(18, h // 12)
    scale = band / 30
    tiles = []
    for panel, title in zip(panels, titles):
        tile = np.full((h + band, panel.shape[1], 3), 255, dtype=np.uint8)
        tile[band : band + panel.shape[0]] = panel
        cv2.putText(tile, title, (4, band - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    max(1, round(scale * 2)), cv2.LINE_AA)
        tiles.append(tile)
        tiles.append(np.full((h + band, gap, 3), 255, dtype=np.uint8))
    return np.concatenate(tiles[:-1], axis=1)
