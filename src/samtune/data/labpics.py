"""LabPicsV1 (``labpics_sam2``): ``Simple/{Train,Test}/Image/NAME.jpg`` + ``Instance/NAME.png``.

The Instance PNG holds two instance maps in two colour channels. ``labpics_sam2`` reads it with cv2 (BGR):
channel 0 is the material map and channel 2 the vessel map, merged by
``mat[mat==0] = ves[mat==0] * (mat.max()+1)`` so that vessel ids land above every material id.
samtune reads and merges them the same way and makes each distinct value of the merged map an
object; ``labpics_target: union`` gives ``labpics_sam2``'s train.py target instead (all of it as one object).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from samtune.config.data import SourceConfig
from samtune.data.folder import nonzero_values
from samtune.data.sample import Sample
from samtune.data.source import BadSample, Problem, Source, read_checked, size_text, split_dirs
from samtune.errors import SamtuneError


@dataclass(frozen=True)
class LabPicsItem:
    image: Path
    instance: Path


def labpics_parts(root: Path) -> dict[str, Path] | None:
    """The split folders (those holding ``Image/`` and ``Instance/``) of a LabPicsV1 root, or
    of its ``Simple/`` folder; None when ``root`` is not LabPics."""
    base = root / "Simple" if (root / "Simple").is_dir() else root
    parts = {split: folder for split, folder in split_dirs(base).items()
             if (folder / "Image").is_dir() and (folder / "Instance").is_dir()}
    return parts or None


def merge_instance_maps(annotation_bgr: np.ndarray) -> np.ndarray:
    """``labpics_sam2``'s merge of a LabPics Instance image read by cv2 (BGR): int32 map where material ids
    keep their values and vessel ids become ``ves * (mat.max() + 1)``."""
    mat = annotation_bgr[..., 0].astype(np.int32)
    ves = annotation_bgr[..., 2].astype(np.int32)
    empty = mat == 0
    mat[empty] = ves[empty] * (mat.max() + 1)
    return mat


def _read_instance(path: Path) -> np.ndarray:
    annotation = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if annotation is None:
        raise SamtuneError(f"{path}: not a readable image")
    return annotation


class LabPicsSource(Source):
    """Samples of one LabPicsV1 split; objects are the merged map's instances (or their
    union)."""

    format = "labpics"

    def __init__(self, root: Path, folder: Path, config: SourceConfig, name: str) -> None:
        super().__init__(root, name)
        self.config = config
        instances = {p.stem: p for p in sorted((folder / "Instance").iterdir())
                     if p.suffix.lower() == ".png"}
        for image in sorted((folder / "Image").iterdir()):
            if not image.is_file() or image.name.startswith("."):
                continue
            if image.stem not in instances:
                self.problem("error", image, f"no Instance/{image.stem}.png for this image; "
                             "add it or remove the image")
                continue
            self._items.append(LabPicsItem(image, instances.pop(image.stem)))
        for orphan in instances.values():
            self.problem("warning", orphan, "instance map without an image in Image/; not used")

    def load(self, index: int) -> tuple[Sample, list[Problem]]:
        item: LabPicsItem = self._items[index]
        image = self.read_image(item.image)
        rel = self.rel(item.instance)
        merged = merge_instance_maps(read_checked(item.instance, rel, _read_instance))
        if merged.shape != image.shape[:2]:
            raise BadSample(Problem("error", rel, f"size {size_text(merged.shape)} does not "
                                    f"match image {self.rel(item.image)} "
                                    f"({size_text(image.shape[:2])})"))
        if self.config.labpics_target == "union":
            merged = (merged > 0).astype(np.int32)
        ids = nonzero_values(merged)
        warnings = [] if ids else [Problem("warning", rel, "no labelled pixels: the image is "
                                           "used as background only")]
        return (Sample(image=image, label_map=merged, object_ids=ids, path=self.rel(item.image),
                       source=self.name), warnings)
