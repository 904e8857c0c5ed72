"""Tiles of a large image, in micro-sam's convention (``tile_shape`` and ``halo``).

A whole-slide or satellite image of 4096 pixels shrunk to the model's 1024 (or LiteMedSAM's
256) input loses every object smaller than a few pixels of the input. Tiling keeps the
image's resolution instead: the image is cut into a regular grid of *inner* tiles of
``tile_shape`` (the last row and column are smaller where the image does not divide evenly),
and each tile is encoded on its *outer* block, the inner tile grown by ``halo`` on every side
and clipped to the image, so that an object that crosses an inner border is still whole in
the outer block of the tile that owns it.

Ownership is by position: a prompt belongs to the tile whose inner block contains its centre
(the centre of its box, else the mean of its points), as micro-sam's
``prompt_based_segmentation`` routes prompts; the automatic generator lays each tile's point
grid over its inner block only, so every image pixel is prompted from exactly one tile.

Shapes are (rows, columns) = (height, width), as micro-sam's and numpy's; boxes here are
XYXY pixel edges (``x1``/``y1`` exclusive), ready for slicing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samtune.errors import SamtuneError


@dataclass(frozen=True)
class Tile:
    """One tile: its position in the grid and its inner and outer XYXY boxes (image pixels)."""

    index: int
    inner: tuple[int, int, int, int]
    outer: tuple[int, int, int, int]

    @property
    def offset(self) -> np.ndarray:
        """(x, y) of the outer block's top-left corner: tile pixels + offset = image pixels."""
        return np.array(self.outer[:2], dtype=np.float64)

    @property
    def outer_size(self) -> tuple[int, int]:
        """(H, W) of the outer block, the image the model encodes for this tile."""
        x0, y0, x1, y1 = self.outer
        return y1 - y0, x1 - x0

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The outer block of an HxW[xC] array, contiguous."""
        x0, y0, x1, y1 = self.outer
        return np.ascontiguousarray(image[y0:y1, x0:x1])


def check_tiling(tile_shape: tuple[int, int] | None, halo: tuple[int, int] | None
                 ) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``(tile_shape, halo)`` as int pairs, or None without a ``tile_shape``.

    Refuses non-positive tiles, negative halos and a halo without a tile shape (micro-sam
    needs both too): each is a user mistake, so a :class:`SamtuneError`.
    """
    if tile_shape is None:
        if halo is not None and any(int(v) for v in halo):
            raise SamtuneError("halo needs a tile_shape (e.g. tile_shape=(512, 512), halo=(64, 64))")
        return None
    shape = _pair(tile_shape, "tile_shape")
    border = (0, 0) if halo is None else _pair(halo, "halo")
    if min(shape) < 1:
        raise SamtuneError(f"tile_shape must be positive (rows, columns), got {shape}")
    if min(border) < 0:
        raise SamtuneError(f"halo must be >= 0 (rows, columns), got {border}")
    return shape, border


def parse_pair(text: str | None, flag: str) -> tuple[int, int] | None:
    """``"512,512"`` (or one number, ``"512"``, for both) -> (512, 512); None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise SamtuneError(f"{flag} {text!r}: expected ROWS,COLUMNS (two integers, e.g. 512,512)")
    return values[0], values[1]


def make_tiles(image_size: tuple[int, int], tile_shape: tuple[int, int],
               halo: tuple[int, int]) -> list[Tile]:
    """The tiles of an (H, W) image, row by row (index = row * columns + column)."""
    h, w = image_size
    th, tw = tile_shape
    hy, hx = halo
    tiles = []
    for y0 in range(0, h, th):
        for x0 in range(0, w, tw):
            x1, y1 = min(x0 + tw, w), min(y0 + th, h)
            outer = (max(x0 - hx, 0), max(y0 - hy, 0), min(x1 + hx, w), min(y1 + hy, h))
            tiles.append(Tile(len(tiles), (x0, y0, x1, y1), outer))
    return tiles


def tile_index(xy: np.ndarray, image_size: tuple[int, int], tile_shape: tuple[int, int]) -> np.ndarray:
    """(N,) index of the tile whose inner block contains each (N, 2) xy position (clipped to
    the image, so a centre on the far edge belongs to the last tile)."""
    h, w = image_size
    th, tw = tile_shape
    columns = -(-w // tw)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    col = np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, w - 1) // tw
    row = np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, h - 1) // th
    return row * columns + col


def prompt_centres(points: np.ndarray | None, labels: np.ndarray | None,
                   boxes: np.ndarray | None) -> np.ndarray:
    """(N, 2) xy centre of each object's prompts: its box's centre, else the mean of its
    foreground points (of all its non-padding points when it has none). ``points`` (N, P, 2),
    ``labels`` (N, P), ``boxes`` (N, 4). micro-sam averages background points too; a
    background click is context, not the object, so it does not pull the object's tile here."""
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64)
        return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    if points is None:
        raise ValueError("routing prompts to tiles needs boxes or points")
    labels = np.asarray(labels)
    weights = (labels == 1).astype(np.float64)[..., None]
    none = weights.sum(axis=1)[:, 0] == 0
    weights[none] = (labels[none] >= 0).astype(np.float64)[..., None]
    weights[weights.sum(axis=1)[:, 0] == 0] = 1.0  # all padding: plain mean
    return (np.asarray(points, dtype=np.float64) * weights).sum(axis=1) / weights.sum(axis=1)


def _pair(value, name: str) -> tuple[int, int]:
    values = [value, value] if isinstance(value, (int, np.integer)) else list(value)
    if len(values) != 2 or any(isinstance(v, bool) or int(v) != v for v in values):
        raise SamtuneError(f"{name} must be two integers (rows, columns), got {value!r}")
    return int(values[0]), int(values[1])
