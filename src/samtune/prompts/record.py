"""``ObjectPrompt``: one object's prompt, and the grouping that batches objects per decoder call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from samtune.errors import SamtuneError

if TYPE_CHECKING:
    from samtune.config.prompts import PromptKind

PAD_LABEL = -1
"""Label of a padding point: the prompt encoder gives it the "not a point" embedding."""

#: (number of points, has a box, has a mask input): objects that share it go through the
#: decoder in one call (one ``Prompts`` record holds prompts of one shape)
Structure = tuple[int, bool, bool]


@dataclass
class ObjectPrompt:
    """One object's prompt in original image pixels (or, once a collator mapped it, in the
    model input frame).

    ``box`` (4,) float xyxy; ``points`` (P, 2) float xy with ``point_labels`` (P,) int64 (1
    object, 0 background, :data:`PAD_LABEL` padding); a mask input as ``logits`` (h, w)
    float32, the model's previous low-res logits, or as ``mask_logit``, the magnitude the
    ground-truth mask gets when a collator makes it the mask input. ``kind``: the training
    prompt kind that drew it; ``category_id``/``category_name``/``image_id``: what a prompt
    file said the object is and where (predictions keep them).
    """

    box: np.ndarray | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    kind: PromptKind | None = None
    logits: np.ndarray | None = None
    mask_logit: float | None = None
    category_id: int | None = None
    category_name: str | None = None
    image_id: int | None = None
    """The id of its image in the COCO file it came from (predictions keep it)."""

    @property
    def has_mask_input(self) -> bool:
        return self.logits is not None or self.mask_logit is not None

    @property
    def structure(self) -> Structure:
        """What must agree for objects to share a decoder call (see :func:`group_by_structure`)."""
        n_points = 0 if self.points is None else len(self.points)
        return n_points, self.box is not None, self.has_mask_input

    def check_inside(self, size: tuple[int, int], where: str) -> None:
        """Refuse prompts outside an (H, W) image: SAM would silently segment nonsense."""
        h, w = size
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                raise SamtuneError(f"{where}: box {_fmt(self.box)} is outside the image ({w}x{h})")
        for p in [] if self.points is None else self.points:
            if not (0 <= p[0] < w and 0 <= p[1] < h):
                raise SamtuneError(f"{where}: point {_fmt(p)} is outside the image ({w}x{h})")

    def to_json(self) -> dict:
        """The prompt as a samtune prompt file writes it (``box``, ``points``, ``labels``,
        ``category_id``)."""
        out: dict = {}
        if self.box is not None:
            out["box"] = [float(v) for v in self.box]
        if self.points is not None:
            out["points"] = self.points.tolist()
            out["labels"] = self.point_labels.tolist()
        if self.category_id is not None:
            out["category_id"] = self.category_id
        return out


def group_by_structure(prompts: Sequence[ObjectPrompt]) -> list[list[int]]:
    """Indices of ``prompts`` grouped by :attr:`ObjectPrompt.structure`, groups in the order
    of their first object, objects in their order: one decoder call per group."""
    groups: dict[Structure, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt.structure, []).append(i)
    return list(groups.values())


def _fmt(values) -> str:
    return ",".join(f"{v:g}" for v in values)
