"""The ``augment`` and ``prompts`` sections of a run config.

Augmentation is off unless asked for, as in most of the reference projects (``lightning_coco_boxes``, ``finestsam_points`` train on the
images as they are); each transform has its own probability. ``labpics_sam2``'s colour jitter is
``color_jitter: {brightness: 0.3, contrast: 0.3, saturation: 0.3, hue: 0.2}``; ``dlo_cables``'s foreground
crop is ``resized_crop: {p: 0.5, scale: [0.35, 1.0]}`` with ``color_jitter: {brightness: 0.4,
contrast: 0.15, saturation: 0.15, hue: 0.5, p: 0.5}``.

Prompts are a mix of *kinds*, each drawn per object with the given weight. A kind is one
component or several joined with ``+`` (``box+points`` gives an object both a box and points,
as ``finestsam_points`` does with ``use_boxes`` and ``use_points``):

- ``box``: the object's tight box, scaled by ``box.scale_factor`` (``mobilesam_boxes``) and jittered (SAM);
- ``full_box``: the whole image (``dlo_cables``);
- ``points``: positive and negative points (``finestsam_points``'s rules, centre point, grid snapping);
- ``mask``: the ground-truth mask as low-res logits;
- ``logits``: the model's previous low-res logits for this object (``finestsam_points``'s ``use_logits``);
- ``none``: no prompt at all (``labpics_sam2``'s promptless mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from samtune.config.section import Section

PROMPT_COMPONENTS = ("box", "full_box", "points", "mask", "logits", "none")


@dataclass(frozen=True)
class PromptKind:
    """A parsed prompt kind: which box, whether points, which mask input."""

    box: Literal["tight", "full"] | None = None
    points: bool = False
    mask: Literal["gt", "logits"] | None = None

    @property
    def name(self) -> str:
        parts = {"tight": ["box"], "full": ["full_box"], None: []}[self.box]
        parts += ["points"] if self.points else []
        parts += [] if self.mask is None else [{"gt": "mask", "logits": "logits"}[self.mask]]
        return "+".join(parts) or "none"


def parse_prompt_kind(text: str, option: str = "prompts.mix") -> PromptKind:
    """``"box+points"`` -> :class:`PromptKind`; a bad name raises naming ``option`` and the
    valid components."""
    parts = [p.strip() for p in text.split("+")]
    valid = ", ".join(PROMPT_COMPONENTS)
    for p in parts:
        if p not in PROMPT_COMPONENTS:
            raise ValueError(f"{option}: unknown prompt kind {p!r} in {text!r}; valid kinds are "
                             f"{valid}, or several joined with '+' (e.g. 'box+points')")
    if len(set(parts)) != len(parts):
        raise ValueError(f"{option}: {text!r} names a prompt kind twice")
    if "none" in parts and len(parts) > 1:
        raise ValueError(f"{option}: 'none' cannot be combined with other kinds ({text!r})")
    if "box" in parts and "full_box" in parts:
        raise ValueError(f"{option}: {text!r} asks for two boxes; use 'box' or 'full_box'")
    if "mask" in parts and "logits" in parts:
        raise ValueError(f"{option}: {text!r} asks for two mask inputs; use 'mask' or 'logits'")
    box = "tight" if "box" in parts else "full" if "full_box" in parts else None
    mask = "gt" if "mask" in parts else "logits" if "logits" in parts else None
    return PromptKind(box=box, points="points" in parts, mask=mask)


# --- augmentation -------------------------------------------------------------------------


class ColorJitterConfig(Section):
    """Photometric jitter of the image only (masks untouched), as ``v2.ColorJitter``: a number
    x means the range [1 - x, 1 + x] ([-x, x] for hue), a pair is the range itself."""

    brightness: float | tuple[float, float] = 0.3
    contrast: float | tuple[float, float] = 0.3
    saturation: float | tuple[float, float] = 0.3
    hue: float | tuple[float, float] = 0.2
    """At most 0.5 (half the colour circle)."""
    p: float = Field(1.0, ge=0, le=1)
    """Probability of applying the jitter to an image (``labpics_sam2``: always; ``dlo_cables``: 0.5)."""

    @field_validator("brightness", "contrast", "saturation")
    @classmethod
    def _factor(cls, v):
        low = v[0] if isinstance(v, tuple) else v
        if low < 0 or (isinstance(v, tuple) and v[0] > v[1]):
            raise ValueError(f"must be a number >= 0 or a range (low, high) with 0 <= low <= high, got {v}")
        return v

    @field_validator("hue")
    @classmethod
    def _hue(cls, v):
        low, high = (v if isinstance(v, tuple) else (-v, v))
        if not -0.5 <= low <= high <= 0.5:
            raise ValueError(f"hue must lie within 0..0.5 (or a range inside -0.5..0.5), got {v}")
        return v


class ResizedCropConfig(Section):
    """A random crop resized back to the image's own size (``RandomResizedCrop``-like).

    The output keeps the input's height and width, since the model's preprocessing resizes
    anyway; ``ratio`` is relative to the image's own aspect, so ``(1, 1)`` (``dlo_cables``'s fixed aspect)
    never distorts.
    """

    p: float = Field(0.5, ge=0, le=1)
    """Probability of cropping an image."""
    scale: tuple[float, float] = (0.35, 1.0)
    """Range of the crop's area as a fraction of the image's area (``dlo_cables``: 0.35 to 1)."""
    ratio: tuple[float, float] = (1.0, 1.0)
    """Range of the crop's aspect ratio relative to the image's aspect (log-uniform)."""

    @field_validator("scale", "ratio")
    @classmethod
    def _ordered_positive(cls, v: tuple[float, float], info) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(
                f"augment.resized_crop.{info.field_name}: need 0 < low <= high, got {v}")
        if info.field_name == "scale" and v[1] > 1:
            raise ValueError(
                f"augment.resized_crop.scale: at most 1 (a crop of the image), got {v}")
        return v


class AugmentConfig(Section):
    """Augmentations applied to image, masks and boxes together (training only)."""

    hflip: float = Field(0.0, ge=0, le=1)
    """Probability of a horizontal flip."""
    vflip: float = Field(0.0, ge=0, le=1)
    """Probability of a vertical flip."""
    rotate90: float = Field(0.0, ge=0, le=1)
    """Probability of a rotation by 90, 180 or 270 degrees (one of them, uniformly)."""
    resized_crop: ResizedCropConfig | None = None
    """Random scale/crop; off when absent."""
    color_jitter: ColorJitterConfig | None = None
    """Colour jitter; off when absent."""
    min_area: int = Field(1, ge=1)
    """Objects with fewer mask pixels after the transforms are dropped (cropped away)."""

    @property
    def enabled(self) -> bool:
        return bool(self.hflip or self.vflip or self.rotate90 or self.resized_crop
                    or self.color_jitter)


# --- prompts --------------------------------------------------------------------------------


class BoxPromptConfig(Section):
    """How the ``box`` kind turns an object's tight box into a prompt."""

    scale_factor: float = Field(1.0, gt=0)
    """Box enlarged (or shrunk) about its centre by this factor, clipped to the image (``mobilesam_boxes``)."""
    jitter: float = Field(0.1, ge=0)
    """Noise on each coordinate with a spread of this fraction of the box side (SAM: 0.1);
    0 gives the exact box."""
    jitter_max: float = Field(20.0, ge=0)
    """No coordinate moves by more than this many pixels (SAM: 20)."""
    jitter_distribution: Literal["normal", "uniform"] = "normal"
    """``normal``: std = ``jitter`` x side, clipped to +-``jitter_max`` (the SAM paper);
    ``uniform``: within +-min(``jitter`` x side, ``jitter_max``) (SAM 2's ``sample_box_points``)."""


class PointPromptConfig(Section):
    """How the ``points`` kind samples clicks (``finestsam_points``'s rules)."""

    positive: int = Field(1, ge=0)
    """Positive points, on the mask."""
    negative: int = Field(0, ge=0)
    """Negative points, inside the object's box but off the mask."""
    use_center: bool = False
    """The first positive is the mask pixel nearest the mean of the mask pixels (``finestsam_points``)."""
    snap_to_grid: bool = False
    """Move the centre point to the nearest point of the automatic mask generator's grid (``finestsam_points``),
    so fine-tuning sees the points ``AutomaticMaskGenerator`` will use. It may leave the mask."""
    grid_size: int = Field(32, ge=1)
    """Points per side of that grid (the generator's ``points_per_side``)."""

    @model_validator(mode="after")
    def _some_points(self) -> PointPromptConfig:
        if self.positive + self.negative == 0:
            raise ValueError("prompts.points: positive + negative must be at least 1")
        return self


class MaskPromptConfig(Section):
    """How the ``mask`` and ``logits`` kinds fill the decoder's mask input."""

    logit: float = Field(10.0, gt=0)
    """The ground-truth mask becomes logits of +``logit`` inside and -``logit`` outside
    (area-weighted at the low-res size); 10 is the value SAM 2 gives a mask it takes as
    output (``mask * 20 - 10``), large enough to be confident, small enough to stay in the
    range of predicted logits."""
    logits_fallback: str = "box"
    """Kind used for an object with no stored previous logits (first epoch, or after an
    augmentation changed its geometry): a ``logits+...`` kind drops ``logits``; a kind with
    nothing else left uses this one."""

    @field_validator("logits_fallback")
    @classmethod
    def _valid_fallback(cls, v: str) -> str:
        kind = parse_prompt_kind(v, "prompts.mask.logits_fallback")
        if kind.mask == "logits":
            raise ValueError("prompts.mask.logits_fallback: cannot itself use 'logits'")
        return v


class PromptConfig(Section):
    """Which prompts each object gets during training and validation."""

    mix: dict[str, float] = Field(default_factory=lambda: {"box": 0.5, "points": 0.5})
    """Prompt kinds and their weights (normalized to sum 1), drawn independently per object."""
    box: BoxPromptConfig = BoxPromptConfig()
    """Settings of the ``box`` kind."""
    points: PointPromptConfig = PointPromptConfig()
    """Settings of the ``points`` kind."""
    mask: MaskPromptConfig = MaskPromptConfig()
    """Settings of the ``mask`` and ``logits`` kinds."""
    max_objects_per_image: int | None = Field(25, ge=1)
    """At most this many objects of an image per step, drawn without replacement and drawn
    afresh each epoch (so every object trains over the epochs); null for all. 25 is
    micro-sam's ``n_objects_per_batch`` (SAM 2's trainer caps objects per sample too): the
    decoder's activations and the loss at the input resolution grow with the object count (a
    400-object image took 8.5 GB of RAM with the tiny model), so an uncapped image with
    hundreds of objects can exhaust memory. The first image the cap trims is named in a
    warning. Validation prompts every object."""
    click_mode: Literal["sample", "farthest"] = "sample"
    """How the correction click of each ``train.correction_rounds`` round is picked from the
    error region (:func:`samtune.prompts.correction_clicks`): ``sample`` a uniform pixel
    (SAM), or the ``farthest`` pixel inside the error region that reaches farther inside
    (SAM 2)."""

    @field_validator("mix")
    @classmethod
    def _valid_mix(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("prompts.mix: give at least one prompt kind, e.g. {box: 1.0}")
        for name, weight in v.items():
            parse_prompt_kind(name)
            if weight < 0:
                raise ValueError(f"prompts.mix: weight of {name!r} is negative ({weight})")
        if sum(v.values()) <= 0:
            raise ValueError("prompts.mix: the weights sum to 0; give some kind a positive weight")
        return v

    def kinds(self) -> list[tuple[PromptKind, float]]:
        """The mix as parsed kinds with normalized probabilities."""
        total = sum(self.mix.values())
        return [(parse_prompt_kind(k), w / total) for k, w in self.mix.items()]


def validation_prompts() -> PromptConfig:
    """What validation prompts with unless ``val_prompts`` says otherwise: every object, each
    with the exact box or one centre point (half of them each), nothing that carries the
    ground-truth mask: the box and point prompts ``samtune eval`` scores. Validation then
    measures the model rather than the training prompt settings (a cap of 8 objects, a
    ``mask`` kind that hands the model the answer)."""
    return PromptConfig(mix={"box": 0.5, "points": 0.5}, box=BoxPromptConfig(jitter=0.0),
                        points=PointPromptConfig(positive=1, negative=0, use_center=True),
                        max_objects_per_image=None)
