"""Image + mask folders: ``imgs/`` (or ``images/``) beside ``masks/``, or cellpose's
``NAME.png`` beside ``NAME_masks.png`` in one folder.

Images and masks are paired by name (path below the folder, without the extension; a mask may
add ``_mask``/``_masks``), never by sorted position as ``dlo_cables`` and ``mobilesam_boxes`` do: one missing file would
silently shift every later pair. A mask may be binary (0/1, 0/255, 3-channel, palette) or an
instance label map (8/16/32-bit PNG or TIFF, any ids, 0 = background); ``objects`` says how it
becomes objects.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from samtune.config.data import SourceConfig
from samtune.data.images import IMAGE_SUFFIXES
from samtune.data.sample import Sample
from samtune.data.source import BadSample, Problem, Source, exif_note, read_checked, size_text
from samtune.errors import SamtuneError

IMAGE_DIR_NAMES = ("imgs", "images", "image", "img")
MASK_DIR_NAMES = ("masks", "mask", "labels")
CELLPOSE_SUFFIX = "_masks"
CELLPOSE_EXTRA = ("_flows", "_seg", "_cp_masks")
JPEG_SUFFIXES = (".jpg", ".jpeg")


@dataclass(frozen=True)
class FolderItem:
    image: Path
    mask: Path


def pair_dirs(folder: Path) -> tuple[Path, Path] | None:
    """(image folder, mask folder) of one split folder, or None when it is not a folder layout.
    Cellpose style (masks beside images) returns the folder twice."""
    if not folder.is_dir():
        return None
    children = {c.name.lower(): c for c in folder.iterdir() if c.is_dir()}
    images = next((children[n] for n in IMAGE_DIR_NAMES if n in children), None)
    masks = next((children[n] for n in MASK_DIR_NAMES if n in children), None)
    if images is not None and masks is not None:
        return images, masks
    if any(_is_image(f) and f.stem.endswith(CELLPOSE_SUFFIX) for f in folder.iterdir()):
        return folder, folder
    return None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _files_by_key(folder: Path) -> dict[str, list[Path]]:
    """Image files below ``folder`` (recursively) grouped by path without extension."""
    out: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.rglob("*")):
        if _is_image(path) and not any(part.startswith(".") for part in path.parts):
            out[path.relative_to(folder).with_suffix("").as_posix()].append(path)
    return out


class FolderSource(Source):
    """Samples from one split folder of an image + mask folder layout.

    Each sample's objects are a label map: ``object_ids`` are the map's non-zero values.
    """

    format = "folder"

    def __init__(self, root: Path, folder: Path, config: SourceConfig, name: str) -> None:
        super().__init__(root, name)
        self.config = config
        dirs = pair_dirs(folder)
        if dirs is None:
            raise SamtuneError(f"{folder}: no imgs/ (or images/) + masks/ folders and no "
                               "cellpose NAME_masks.png files")
        self.image_dir, self.mask_dir = dirs
        self._index()

    @property
    def cellpose(self) -> bool:
        return self.image_dir == self.mask_dir

    def _index(self) -> None:
        found = _files_by_key(self.image_dir)
        suffixes = [s for s in self.config.mask_suffixes if s or not self.cellpose]
        if self.cellpose:
            masks = {k: v for k, v in found.items() if k.endswith(CELLPOSE_SUFFIX)}
            images = {k: v for k, v in found.items()
                      if k not in masks and not k.endswith(CELLPOSE_EXTRA)}
        else:
            images, masks = found, _files_by_key(self.mask_dir)
        duplicated = {key for key, paths in images.items() if len(paths) > 1}
        images = self._unique(images, "images")
        masks = self._unique(masks, "masks")
        used = {key + s for key in duplicated for s in suffixes}  # reported with the images
        for key, image in images.items():
            mask_key = next((key + s for s in suffixes if key + s in masks), None)
            if mask_key is None:
                looked = " or ".join(f"{Path(key).name}{s}.*" for s in suffixes)
                self.problem("error", image, f"no mask for this image in "
                             f"{self.rel(self.mask_dir)}/ (looked for {looked}); add the mask (all "
                             "zeros for a background-only image) or remove the image")
                continue
            used.add(mask_key)
            allow = self.config.allow_outside_paths
            if self.confined(image, allow) and self.confined(masks[mask_key], allow):
                self._items.append(FolderItem(image, masks[mask_key]))
        for key, mask in masks.items():
            if key not in used:
                self.problem("warning", mask, "mask without an image (no image with the stem "
                             f"{Path(key).name!r}); it is not used. Add the image or remove the mask")

    def _unique(self, groups: dict[str, list[Path]], what: str) -> dict[str, Path]:
        """One file per name; names shared by several extensions are errors (which one is
        meant cannot be told) and are left out."""
        out = {}
        for key, paths in groups.items():
            if len(paths) == 1:
                out[key] = paths[0]
                continue
            listed = ", ".join(self.rel(p) for p in paths)
            self.problem("error", paths[0], f"{len(paths)} {what} share the name {key!r} and "
                         f"differ only in extension ({listed}); rename or remove all but one")
        return out

    def load(self, index: int) -> tuple[Sample, list[Problem]]:
        item: FolderItem = self._items[index]
        image = self.read_image(item.image)
        mask_rel = self.rel(item.mask)
        values, notes = read_checked(item.mask, mask_rel, read_mask)
        warnings = [Problem("warning", mask_rel, n) for n in notes]
        if values.shape != image.shape[:2]:
            raise BadSample(Problem(
                "error", mask_rel, f"size {size_text(values.shape)} does not match image "
                f"{self.rel(item.image)} ({size_text(image.shape[:2])})"
                f"{exif_note(item.image, values.shape)}; resize or re-export the mask"))
        mode = self.config.objects
        if item.mask.suffix.lower() in JPEG_SUFFIXES and mode in ("auto", "label_map"):
            mode = "whole"  # read_mask thresholded it: only a binary mask remains
        label_map, ids = mask_objects(values, mode, self.config.invert, mask_rel)
        if not ids:
            warnings.append(Problem("warning", mask_rel, "empty mask: the image has no objects "
                                    "and is used as background only"))
        sample = Sample(image=image, label_map=label_map, object_ids=ids,
                        path=self.rel(item.image), source=self.name)
        return sample, warnings


def read_mask(path: Path) -> tuple[np.ndarray, list[str]]:
    """The mask at ``path`` as a 2-D integer array of its values, plus notes about how it was
    read. JPEG masks are thresholded at 128 (their compression noise would otherwise become
    extra values); colour masks get one id per distinct colour (black = 0)."""
    notes: list[str] = []
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            values = np.squeeze(tifffile.imread(path))
        except Exception as e:  # tifffile raises many types for damaged files
            raise SamtuneError(f"{path}: not a readable TIFF ({e})") from e
    else:
        values = _read_pil_values(path)
        if suffix in JPEG_SUFFIXES:
            grey = values if values.ndim == 2 else values[..., :3].mean(axis=2)
            values = (grey >= 128).astype(np.uint8)
            notes.append("mask saved as JPEG: its compression noise was removed by "
                         "thresholding at 128 (as one binary object). Save masks as PNG to "
                         "keep exact labels")
    if values.ndim == 3 and values.shape[2] <= 4:
        values = _channels_to_ids(values)
    if values.ndim != 2:
        raise SamtuneError(f"{path}: a mask must be one plane (HxW) or an RGB image, got shape "
                           f"{values.shape}; save one mask image per image")
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise SamtuneError(f"{path}: float mask with non-integer values; save instance ids "
                               "as an integer image")
        values = values.astype(np.int64)
    return values, notes


def _read_pil_values(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "1":
                im = im.convert("L")
            return np.array(im)  # palette images keep their indices
    except (OSError, SyntaxError, ValueError) as e:
        raise SamtuneError(f"{path}: not a readable image ({e})") from e


def _channels_to_ids(values: np.ndarray) -> np.ndarray:
    """HxWxC mask -> HxW: alpha dropped; equal channels -> the first; colours -> ids."""
    if values.shape[2] in (2, 4):
        values = values[..., :-1]
    if values.shape[2] == 1 or all(np.array_equal(values[..., 0], values[..., c])
                                   for c in range(1, values.shape[2])):
        return values[..., 0]
    colours, ids = np.unique(values.reshape(-1, values.shape[2]), axis=0, return_inverse=True)
    black = np.flatnonzero(~colours.any(axis=1))
    ids = ids.reshape(values.shape[:2]).astype(np.int32) + 1
    if len(black):
        ids[ids == black[0] + 1] = 0
    return ids


def mask_objects(values: np.ndarray, mode: str, invert: bool,
                 rel: str = "") -> tuple[np.ndarray, list[int]]:
    """(int32 label map, object ids) of a mask read by :func:`read_mask`.

    ``mode`` is the config's ``objects`` (auto, whole, components, label_map); ``invert``
    makes the zero area the foreground and implies a binary reading.
    """
    if mode == "label_map" or (mode == "auto" and not invert):
        ids = nonzero_values(values)
        if mode == "label_map" or len(ids) > 1:
            if ids and ids[-1] > np.iinfo(np.int32).max:
                raise BadSample(Problem("error", rel, f"label id {ids[-1]} is too large; "
                                        "renumber the labels below 2**31"))
            return values.astype(np.int32, copy=False), ids
        mode = "whole"
    foreground = values == 0 if invert else values > 0
    if mode == "components":
        count, labels = cv2.connectedComponents(foreground.astype(np.uint8), connectivity=8,
                                                ltype=cv2.CV_32S)
        return labels, list(range(1, count))
    return foreground.astype(np.int32), [1] if foreground.any() else []


def nonzero_values(values: np.ndarray) -> list[int]:
    """Sorted distinct non-zero values of an integer array (bincount when ids are small)."""
    if values.size == 0:
        return []
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high < 4 * values.size + 65536:
        present = np.flatnonzero(np.bincount(values.ravel(), minlength=1))
        return [int(v) for v in present if v != 0]
    return [int(v) for v in np.unique(values) if v != 0]
