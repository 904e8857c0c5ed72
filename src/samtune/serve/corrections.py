"""Accepted masks become training data: a folder dataset ``imgs/`` + ``masks/`` that
``samtune train`` (and ``samtune data check``) read as they are.

Each image is written once, as the RGB pixels the models saw (EXIF rotation applied, any
depth scaled to 8 bits), to ``imgs/STEM.png``; its objects accumulate in one instance label
map ``masks/STEM.png`` (16-bit PNG, 0 = background, one id per accepted object). A new object
takes the pixels it covers, also from objects saved before it, as a labelling tool paints on
top. Every write goes through :mod:`samtune.files` (temporary file beside the target, then a
rename): a crash leaves the previous map or the new one, never half of one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samtune.data.folder import nonzero_values, read_mask
from samtune.errors import SamtuneError
from samtune.files import write_png

#: Ids a 16-bit label map holds.
MAX_OBJECTS = 65535


@dataclass(frozen=True)
class Counts:
    """What the folder holds: images with at least one object, and objects in all."""

    images: int
    objects: int


class CorrectionFolder:
    """The folder accepted masks are saved into (created on the first save)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._ids: dict[str, tuple[tuple[int, int, int], list[int]]] = {}  # stem -> (stat, ids)

    @property
    def image_dir(self) -> Path:
        return self.root / "imgs"

    @property
    def mask_dir(self) -> Path:
        return self.root / "masks"

    def label_map(self, stem: str) -> np.ndarray | None:
        """The saved label map of an image, or None when nothing is saved for it."""
        path = self.mask_dir / f"{stem}.png"
        if not path.is_file():
            return None
        values, _ = read_mask(path)
        return values.astype(np.int32)

    def object_ids(self, stem: str) -> list[int]:
        """Ids of the saved objects of an image; read again only when its file changed, so
        that counting a large folder after each save stays cheap."""
        path = self.mask_dir / f"{stem}.png"
        try:
            stat = path.stat()
        except FileNotFoundError:
            return []
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # a rename makes a new inode
        cached = self._ids.get(stem)
        if cached is None or cached[0] != key:
            label_map = self.label_map(stem)
            cached = (key, [] if label_map is None else nonzero_values(label_map))
            self._ids[stem] = cached
        return list(cached[1])

    def add(self, stem: str, image: np.ndarray, mask: np.ndarray) -> int:
        """Save ``mask`` ((H, W) bool) as a new object of the image ``stem``; returns its id."""
        if mask.shape != image.shape[:2]:
            raise SamtuneError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                               f"{image.shape[1]}x{image.shape[0]}")
        if not mask.any():
            raise SamtuneError("the mask is empty: there is no object to save")
        with self._lock:
            label_map = self.label_map(stem)
            if label_map is not None and label_map.shape != mask.shape:
                raise SamtuneError(f"{self.mask_dir / (stem + '.png')}: saved for an image of "
                                   f"another size ({label_map.shape[1]}x{label_map.shape[0]}); "
                                   "move it away to start this image afresh")
            if label_map is None:
                label_map = np.zeros(mask.shape, dtype=np.int32)
                write_png(self.image_dir / f"{stem}.png", image)
            new_id = int(label_map.max()) + 1
            if new_id > MAX_OBJECTS:
                raise SamtuneError(f"{stem}: {MAX_OBJECTS} objects is the most one 16-bit label "
                                   "map holds")
            label_map[mask] = new_id
            write_png(self.mask_dir / f"{stem}.png", label_map.astype(np.uint16))
            return new_id

    def remove(self, stem: str, object_id: int) -> None:
        """Delete one saved object; an image left without objects is removed with its map."""
        with self._lock:
            label_map = self.label_map(stem)
            if label_map is None or not (label_map == object_id).any():
                raise SamtuneError(f"{stem}: no saved object {object_id}")
            label_map[label_map == object_id] = 0
            if label_map.any():
                write_png(self.mask_dir / f"{stem}.png", label_map.astype(np.uint16))
            else:
                (self.mask_dir / f"{stem}.png").unlink()
                (self.image_dir / f"{stem}.png").unlink(missing_ok=True)

    def counts(self) -> Counts:
        """Images and objects saved so far (read from the folder, so counts from an earlier
        session, or another tool writing the same folder, are included)."""
        if not self.mask_dir.is_dir():
            return Counts(0, 0)
        images = objects = 0
        for path in sorted(self.mask_dir.glob("*.png")):
            if path.name.startswith("."):
                continue  # a temporary file being written
            n = len(self.object_ids(path.stem))
            images += n > 0
            objects += n
        return Counts(images, objects)
