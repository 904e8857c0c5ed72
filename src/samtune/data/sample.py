"""``Sample``: one image and its objects, the record every dataset source yields.

Objects are held either as a stack of binary masks or as one instance label map; the label
map form keeps a large image with hundreds of small objects at one int32 plane instead of
hundreds of full-size planes. Consumers ask for what they need (:meth:`Sample.object_masks`,
:meth:`Sample.boxes`) and never care which form a source produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """An HxWx3 uint8 RGB image and its N objects.

    Exactly one of ``masks`` ((N, H, W) bool) and ``label_map`` ((H, W) integer, 0 =
    background, object i is ``label_map == object_ids[i]``) is set. ``path`` is the image file
    relative to the source root and ``source`` names the source: both go into error messages.
    """

    image: np.ndarray
    masks: np.ndarray | None = None
    label_map: np.ndarray | None = None
    object_ids: list[int] = field(default_factory=list)
    category_ids: list[int] | None = None
    path: str = ""
    source: str = ""
    annotation_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if (self.masks is None) == (self.label_map is None):
            raise ValueError(f"{self.path}: a Sample needs exactly one of masks and label_map")
        if self.masks is not None and not self.object_ids:
            self.object_ids = list(range(len(self.masks)))
        if self.category_ids is not None and len(self.category_ids) != len(self.object_ids):
            raise ValueError(f"{self.path}: {len(self.category_ids)} category ids for "
                             f"{len(self.object_ids)} objects")

    def __len__(self) -> int:
        return len(self.object_ids)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.image.shape[0], self.image.shape[1]

    def object_masks(self, which: Sequence[int] | None = None) -> np.ndarray:
        """(k, H, W) bool masks of the objects at positions ``which`` (all by default)."""
        idx = range(len(self)) if which is None else which
        if self.masks is not None:
            return self.masks[list(idx)].astype(bool, copy=False)
        ids = np.asarray([self.object_ids[i] for i in idx])
        if len(ids) == 0:
            return np.zeros((0, *self.size), dtype=bool)
        return self.label_map[None] == ids[:, None, None]

    def boxes(self) -> np.ndarray:
        """(N, 4) float xyxy boxes, pixel-edge convention: a one-pixel object at (x, y) has box
        (x, y, x + 1, y + 1). Empty objects get (0, 0, 0, 0)."""
        if self.label_map is not None:
            return label_map_boxes(self.label_map, self.object_ids)
        out = np.zeros((len(self), 4), dtype=np.float32)
        for i in range(len(self)):
            ys, xs = np.nonzero(self.object_masks([i])[0])
            if len(xs):
                out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        return out


def label_map_boxes(label_map: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """(len(ids), 4) float32 xyxy boxes (pixel-edge convention) of ``label_map == id`` for
    each id, in one pass over the labelled pixels: hundreds of small objects on a large image
    cost one sort of their pixels, not one full-image scan each. Absent ids get zeros."""
    out = np.zeros((len(ids), 4), dtype=np.float32)
    if len(ids) == 0:
        return out
    ys, xs = np.nonzero(label_map)
    values = label_map[ys, xs]
    order = np.argsort(values, kind="stable")
    values, ys, xs = values[order], ys[order], xs[order]
    wanted = np.asarray(ids, dtype=values.dtype)
    starts = np.searchsorted(values, wanted, side="left")
    ends = np.searchsorted(values, wanted, side="right")
    for i, (a, b) in enumerate(zip(starts, ends)):
        if b > a:
            out[i] = (xs[a:b].min(), ys[a:b].min(), xs[a:b].max() + 1, ys[a:b].max() + 1)
    return out
