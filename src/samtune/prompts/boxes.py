"""Box prompts: the tight box as SAM trains with it, and the whole image's box."""

from __future__ import annotations

from typing import Literal

import numpy as np


def full_image_box(size: tuple[int, int]) -> np.ndarray:
    """The box of a whole (H, W) image, (0, 0, W, H) (``dlo_cables``'s promptless box)."""
    h, w = size
    return np.array([0, 0, w, h], dtype=np.float32)


def clip_box(box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``box`` clipped to an (H, W) image."""
    h, w = size
    return np.clip(np.asarray(box, dtype=np.float32), 0, [w, h, w, h]).astype(np.float32)


def scale_box(box: np.ndarray, factor: float, size: tuple[int, int]) -> np.ndarray:
    """``box`` scaled by ``factor`` about its centre, clipped to the (H, W) image (``mobilesam_boxes``)."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2 * factor, (y2 - y1) / 2 * factor
    return clip_box(np.array([cx - hw, cy - hh, cx + hw, cy + hh]), size)


def jitter_box(
    box: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    fraction: float = 0.1,
    max_px: float = 20.0,
    distribution: Literal["normal", "uniform"] = "normal",
) -> np.ndarray:
    """``box`` with noise on each coordinate, as SAM trains with boxes.

    ``normal`` (the SAM paper): offsets ~ N(0, (fraction x side)^2), clipped to +-``max_px``;
    ``uniform`` (SAM 2's ``sample_box_points``): offsets ~ U(+-min(fraction x side, max_px)).
    The side is the box's width for x and height for y. The result is clipped to the image
    and kept ordered (x1 <= x2, y1 <= y2).
    """
    b = np.asarray(box, dtype=np.float64)
    w, h = b[2] - b[0], b[3] - b[1]
    spread = fraction * np.array([w, h, w, h])
    if distribution == "normal":
        noise = np.clip(rng.normal(0.0, 1.0, 4) * spread, -max_px, max_px)
    elif distribution == "uniform":
        noise = rng.uniform(-1.0, 1.0, 4) * np.minimum(spread, max_px)
    else:
        raise ValueError(f"jitter distribution must be 'normal' or 'uniform', got {distribution!r}")
    out = b + noise
    out = np.array([min(out[0], out[2]), min(out[1], out[3]), max(out[0], out[2]),
                    max(out[1], out[3])])
    return clip_box(out, size)
