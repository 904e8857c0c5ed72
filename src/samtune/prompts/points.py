"""Point prompts: where on an object a click goes.

Two rules name a single point on a mask, each used wherever it is meant:
:func:`interior_point`, the pixel farthest from the mask's edge (``samtune eval``'s point
mode, SAM 2's farthest correction click), and :func:`center_point`, the mask pixel nearest
the mean of the mask pixels (``finestsam_points``'s ``use_center``, the training option).
"""

from __future__ import annotations

import cv2
import numpy as np

from samtune.prompts.record import PAD_LABEL


def inner_distance(region: np.ndarray) -> np.ndarray:
    """Distance of each region pixel to the nearest non-region pixel or image border."""
    padded = np.pad(region, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) pixel of ``mask`` farthest from its edge (and the image border); ties go to the
    first pixel in row-major order."""
    if not mask.any():
        raise ValueError("interior_point: the mask is empty")
    y, x = np.unravel_index(int(np.argmax(inner_distance(mask))), mask.shape)
    return np.array([x, y], dtype=np.float32)


def center_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the mask pixel nearest the mean of the mask pixels: on the mask even for a
    ring or a crescent (``finestsam_points``)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("center_point: the mask is empty")
    d = (xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2
    i = int(np.argmin(d))
    return np.array([xs[i], ys[i]], dtype=np.float32)


def snap_to_grid(point: np.ndarray, size: tuple[int, int], n: int = 32) -> np.ndarray:
    """The nearest point of the automatic generator's n x n grid ``(i + 0.5) / n * (W, H)``
    (``finestsam_points``'s ``snap_to_grid``). The grid is separable, so each axis snaps on its own."""
    h, w = size
    out = []
    for v, extent in ((point[0], w), (point[1], h)):
        # the cell containing v: its centre is the nearest grid coordinate
        i = np.clip(np.floor(v / extent * n), 0, n - 1)
        out.append((i + 0.5) / n * extent)
    return np.array(out, dtype=np.float32)


def sample_points(
    mask: np.ndarray,
    box: np.ndarray,
    positive: int,
    negative: int,
    rng: np.random.Generator,
    use_center: bool = False,
    snap: bool = False,
    grid_size: int = 32,
    first: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``positive`` points on the mask and ``negative`` points inside ``box`` but off the mask
    (``finestsam_points``'s rules), drawn without replacement.

    The first positive may be given: ``first``, an (x, y) pixel of the mask (``samtune eval``
    gives :func:`interior_point`), or with ``use_center`` :func:`center_point`; it is snapped
    to the grid with ``snap``, and the others are drawn from the remaining mask pixels. When an object has too
    few candidates (a rectangle has no negatives in its box), the missing points are padding
    (label -1 at (0, 0)), which the model ignores, so every object has P = positive + negative.
    Returns (P, 2) float32 xy and (P,) int64 labels.
    """
    h, w = mask.shape
    x1, y1 = int(np.floor(max(box[0], 0))), int(np.floor(max(box[1], 0)))
    x2, y2 = int(np.ceil(min(box[2], w))), int(np.ceil(min(box[3], h)))
    region = np.zeros_like(mask, dtype=bool)
    region[y1:y2, x1:x2] = True
    pos_yx = np.argwhere(mask)
    neg_yx = np.argwhere(region & ~mask)

    points: list[np.ndarray] = []
    labels: list[int] = []
    n_pos = positive
    if first is None and use_center and len(pos_yx):
        first = center_point(mask)
    if first is not None and positive > 0:
        c = np.asarray(first, dtype=np.float32)
        pos_yx = pos_yx[~((pos_yx[:, 0] == c[1]) & (pos_yx[:, 1] == c[0]))]
        points.append(snap_to_grid(c, (h, w), grid_size) if snap else c)
        labels.append(1)
        n_pos -= 1
    for candidates, n, label in ((pos_yx, n_pos, 1), (neg_yx, negative, 0)):
        take = min(n, len(candidates))
        if take:
            chosen = candidates[rng.choice(len(candidates), size=take, replace=False)]
            points.extend(chosen[:, ::-1].astype(np.float32))
            labels.extend([label] * take)
    pad = positive + negative - len(points)
    points.extend([np.zeros(2, dtype=np.float32)] * pad)
    labels.extend([PAD_LABEL] * pad)
    return np.stack(points).astype(np.float32), np.asarray(labels, dtype=np.int64)
