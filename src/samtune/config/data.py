"""The ``data`` section of a run config: where the images are and how to read them.

One :class:`SourceConfig` describes one dataset folder; :class:`DataConfig` mixes several of
them (each with a percentage drawn afresh every epoch, ``dlo_cables``'s ``MixedCableDataset``) and can
paste their objects on background images (:class:`CompositeConfig`). Every default here is
samtune's; where a reference project behaves differently the field says which option
reproduces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from samtune.config.prompts import ColorJitterConfig
from samtune.config.section import Section

Format = Literal["auto", "folder", "coco", "labpics"]


class SourceConfig(Section):
    """One dataset: a folder (or a COCO json file) and how to read it."""

    path: Path
    """The dataset root: the folder that holds the splits, imgs/ + masks/, the COCO json, or
    LabPicsV1's Simple/. A COCO json file may also be named directly."""
    format: Format = "auto"
    """Layout to read; ``auto`` detects folder, COCO (annotations.json, Roboflow's
    _annotations.coco.json, ``finestsam_points``'s data/ or train/ val/) and LabPicsV1 from the files present."""
    name: str | None = None
    """Name used in messages and logs; the folder name by default."""
    allow_outside_paths: bool = False
    """Read files that lie outside the dataset folder: COCO ``file_name`` entries with
    ``../`` or an absolute path, symlinks that point elsewhere. Off, they are errors that
    name the file (a dataset from elsewhere then cannot make samtune read other files)."""

    objects: Literal["auto", "components", "whole", "label_map"] = "auto"
    """Folder masks: how a mask becomes objects. ``whole``: everything > 0 is one object (``dlo_cables``,
    ``mobilesam_boxes``); ``components``: each connected component of the > 0 area is an object;
    ``label_map``: each distinct non-zero value is an object (instance label maps, cellpose);
    ``auto``: ``whole`` for a mask with one non-zero value, ``label_map`` for more."""
    invert: bool = False
    """Folder masks: objects are where the mask is 0. ``dlo_cables`` inverts by default (its ``--no_inv``
    turns it off); samtune does not."""
    mask_suffixes: tuple[str, ...] = ("", "_mask", "_masks")
    """Folder masks: a mask belongs to image NAME.ext when its stem is NAME + one of these
    (so masks/NAME.png, masks/NAME_mask.png and cellpose's NAME_masks.png all pair)."""

    iscrowd: Literal["use", "ignore"] = "use"
    """COCO: ``use`` keeps crowd annotations as objects (pycocotools annToMask, as ``finestsam_points`` does);
    ``ignore`` leaves them out and reports how many were left out."""
    categories: list[int | str] | None = None
    """COCO: keep only these categories (ids or names); all by default."""
    keep_empty: bool = True
    """COCO: images without (kept) annotations stay as background-only samples. ``finestsam_points`` drops
    them (``false``). Folder and LabPics masks that turn out empty are always kept, with a
    warning from ``samtune data check``."""

    labpics_target: Literal["instances", "union"] = "instances"
    """LabPicsV1: each instance of the merged material/vessel map is an object, or (``labpics_sam2``'s
    train.py) their union is one object."""

    val_size: float = Field(0.3, ge=0.0, lt=1.0)
    """An unsplit dataset is cut into train and ``int(N * val_size)`` val samples (``finestsam_points``'s
    auto_split, same default)."""
    seed: int = 42
    """Seed of that cut (``finestsam_points``'s dataset.seed, same default)."""

    percentage: float = Field(1.0, gt=0.0, le=1.0)
    """When mixed with other sources: the share of this source's images drawn (without
    replacement) each epoch (``dlo_cables``'s per-dataset ``percentage``)."""
    skip_bad: bool = False
    """Skip samples that cannot be read, with one warning each, instead of refusing to
    start. Off by default: a dataset with errors is refused before training begins."""

    @model_validator(mode="after")
    def _invert_needs_binary(self) -> SourceConfig:
        if self.invert and self.objects == "label_map":
            raise ValueError("invert: true reads masks as binary; it cannot be combined with "
                             "objects: label_map (use whole or components)")
        return self


class CompositeConfig(Section):
    """Cut each sample's objects out by their masks and paste them on a background image
    (``dlo_cables``). The defaults are ``dlo_cables``'s augmentation settings."""

    bg_paths: list[Path] = Field(default_factory=list)
    """Background image folders, searched recursively. Empty: no compositing."""
    fg_jitter: ColorJitterConfig = ColorJitterConfig(
        brightness=0.4, contrast=0.15, saturation=0.15, hue=0.5, p=0.5)
    """Colour jitter of the objects before pasting."""
    bg_crop_ratio: tuple[float, float] | None = None
    """Aspect-ratio range of the random crop taken from the background. None: the sample's own
    aspect ratio times (15/16, 17/16), which is ``dlo_cables``'s (15/9, 17/9) for its 16:9 images."""
    bg_aug_p: float = Field(0.5, ge=0.0, le=1.0)
    """Probability of jitter + blur on the background."""
    bg_jitter: ColorJitterConfig = ColorJitterConfig(
        brightness=(0.5, 1.0), contrast=0.2, saturation=0.2, p=1.0)
    """Colour jitter of the background (applied when the background augmentation fires)."""
    bg_blur_kernel: int = 5
    bg_blur_sigma: tuple[float, float] = (0.1, 5.0)
    crop_foreground: bool = False
    """``dlo_cables``'s ``aug_details: [crop_foreground]``: a random crop of image and masks together,
    resized back, before pasting."""
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_p: float = Field(0.5, ge=0.0, le=1.0)


class DataConfig(Section):
    """The dataset section: training sources (mixed when several), optional separate
    validation sources, optional compositing on backgrounds."""

    train: list[SourceConfig] = Field(min_length=1)
    """Training sources. Their ``train`` split is used; one with no splits is cut by its
    ``val_size``."""
    val: list[SourceConfig] | None = None
    """Validation sources (their ``val`` split, or ``test`` when there is no val). None: the
    ``val`` split of the training sources."""
    composite: CompositeConfig | None = None
    """Paste training objects on backgrounds (training only)."""
    seed: int = 0
    """Seed of the per-epoch resampling and of the compositing draws."""
    random_crop: Literal["model"] | int | None = None
    """Train on random square windows of large images at full resolution instead of shrinking
    each whole image to the model's input: ``model`` takes windows of the model's input size
    (1024 SAM, 256 LiteMedSAM), an integer that many pixels. Each window holds a randomly
    chosen object's centre; objects cut below ``augment.min_area`` pixels are dropped, and
    images no larger than the window pass whole. Training only (validation sees whole images;
    evaluate large images with ``samtune eval --tile-shape``). None: off."""

    @model_validator(mode="after")
    def _crop_size(self) -> DataConfig:
        if isinstance(self.random_crop, int) and self.random_crop < 16:
            raise ValueError(f"random_crop must be 'model' or at least 16 pixels, got {self.random_crop}")
        return self
