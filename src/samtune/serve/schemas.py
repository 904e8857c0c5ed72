"""The JSON bodies the API accepts, and the checks that need the image (prompts inside it).

Coordinates are image pixels of the image as served (``GET /api/images/{id}/image.png``),
x to the right and y down, as ``samtune predict`` and the official predictors take them.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from samtune.errors import SamtuneError


class PromptError(SamtuneError):
    """A prompt the image cannot take (outside it, inverted box, no prompt at all)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Body):
    """Prompts for one object on one image; every listed model (all ready ones by default)
    answers."""

    image: str
    points: list[tuple[float, float]] = Field(default_factory=list)
    labels: list[Literal[0, 1]] = Field(default_factory=list)
    box: Optional[tuple[float, float, float, float]] = None
    multimask: bool = True
    models: Optional[list[str]] = None

    @model_validator(mode="after")
    def _consistent(self) -> PredictRequest:
        if len(self.points) != len(self.labels):
            raise ValueError(f"{len(self.points)} points but {len(self.labels)} labels; give one "
                             "label per point (1 object, 0 background)")
        if not self.points and self.box is None:
            raise ValueError("no prompt: give points (with labels) and/or a box")
        return self


class AutoRequest(_Body):
    """Segment everything; the generator options the page exposes (official defaults when
    omitted)."""

    image: str
    models: Optional[list[str]] = None
    points_per_side: int = Field(16, ge=1, le=64)
    pred_iou_thresh: Optional[float] = Field(None, ge=0.0, le=1.0)
    stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0)
    min_mask_region_area: int = Field(0, ge=0)


class SaveRequest(_Body):
    """A mask to save as a new object of an image (COCO RLE, ``counts`` as a string, or an
    uncompressed RLE with ``counts`` as a list), and which model produced it."""

    image: str
    mask: dict
    model: Optional[str] = None


class EncodeRequest(_Body):
    image: str
    models: Optional[list[str]] = None


def check_prompts(request: PredictRequest, size: tuple[int, int]) -> None:
    """Refuse points or a box outside the (H, W) image, and a box with no area."""
    h, w = size
    for x, y in request.points:
        if not (0 <= x <= w and 0 <= y <= h):
            raise PromptError(f"point ({x:g}, {y:g}) is outside the image ({w}x{h}); x must be "
                              f"within 0..{w} and y within 0..{h}")
    if request.box is not None:
        x0, y0, x1, y1 = request.box
        if not (0 <= x0 <= w and 0 <= x1 <= w and 0 <= y0 <= h and 0 <= y1 <= h):
            raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the image "
                              f"({w}x{h})")
        if x1 <= x0 or y1 <= y0:
            raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has no area; give x0 < x1 "
                              "and y0 < y1")
