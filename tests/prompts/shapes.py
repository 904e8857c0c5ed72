"""Masks whose shape defeats the naive point pickers, shared by the prompt tests."""

from __future__ import annotations

import numpy as np

from samtune.data.sample import Sample

H, W = 48, 64


def ring_mask() -> np.ndarray:
    """An annulus: its mean pixel (the hole's centre) is off the mask."""
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(yy - 24, xx - 30)
    return (r >= 8) & (r <= 14)


def crescent_mask() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (np.hypot(yy - 24, xx - 30) <= 14) & (np.hypot(yy - 24, xx - 36) > 10)


def box_of(mask: np.ndarray) -> np.ndarray:
    return Sample(np.zeros((*mask.shape, 3), np.uint8), masks=mask[None]).boxes()[0]
