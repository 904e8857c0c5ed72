"""The images the page can show: a dataset's (with their ground truth) and uploaded ones.

Dataset images are listed from their paths and read only when opened, so a dataset of
thousands of images starts the server at once. Uploads are checked before they are decoded:
at most :data:`MAX_UPLOAD_BYTES` and :data:`MAX_PIXELS` (read from the file header), so a
huge or malicious file is refused with a message instead of filling the server's memory.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samtune.data.images import IMAGE_SUFFIXES, image_size, read_image_rgb
from samtune.data.sample import Sample
from samtune.errors import SamtuneError

#: Largest upload accepted, in bytes (32 MiB).
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: Largest upload accepted, in pixels (width x height): 40 megapixels, e.g. 8000 x 5000.
MAX_PIXELS = 40_000_000
#: Samples (image + ground truth) kept decoded in memory.
SAMPLES_KEPT = 8


class UnknownImage(SamtuneError):
    """No image has this id."""


class UploadRefused(SamtuneError):
    """An uploaded file is not an image, or is too large; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageEntry:
    """One image the page can open. ``id`` is what the API takes; ``name`` is what people
    read (the path inside the dataset, or the uploaded file's name); ``stem`` names it in a
    corrections folder; ``index`` is its position in the dataset (None for an upload)."""

    id: str
    name: str
    path: Path
    stem: str
    index: int | None = None

    @property
    def kind(self) -> str:
        return "upload" if self.index is None else "data"


@dataclass
class Opened:
    """A decoded image (HxWx3 uint8 RGB) and its ground-truth objects, if it has any."""

    entry: ImageEntry
    image: np.ndarray
    truth: Sample | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.image.shape[0], self.image.shape[1]


class ImageStore:
    """Dataset images by position (ids ``d0``, ``d1``, ...) and uploads by content hash
    (``u`` + 12 hex digits: the same file uploaded twice is one image)."""

    def __init__(self, dataset: Sequence[Sample] | None = None, upload_dir: Path | None = None,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS) -> None:
        self.dataset = dataset
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self._uploads_tmp = None if upload_dir is not None else tempfile.TemporaryDirectory(
            prefix="samtune-serve-")
        self.upload_dir = Path(upload_dir or self._uploads_tmp.name)
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, ImageEntry] = {}
        self._opened: OrderedDict[str, Opened] = OrderedDict()
        self._lock = threading.Lock()
        for i, path in enumerate(getattr(dataset, "image_paths", []) if dataset is not None else []):
            name = _dataset_name(dataset, Path(path))
            entry = ImageEntry(f"d{i}", name, Path(path), _flat_stem(name), i)
            self._entries[entry.id] = entry

    def entries(self) -> list[ImageEntry]:
        return list(self._entries.values())

    def entry(self, image_id: str) -> ImageEntry:
        try:
            return self._entries[image_id]
        except KeyError:
            raise UnknownImage(f"unknown image id {image_id!r}; GET /api/images lists the ids") from None

    def open(self, image_id: str) -> Opened:
        """The decoded image (and ground truth for a dataset image), read once and kept
        while it is among the :data:`SAMPLES_KEPT` most recently used."""
        entry = self.entry(image_id)
        with self._lock:
            if image_id in self._opened:
                self._opened.move_to_end(image_id)
                return self._opened[image_id]
        if entry.index is not None:
            sample = self.dataset[entry.index]
            opened = Opened(entry, sample.image, sample if len(sample) else None)
        else:
            opened = Opened(entry, read_image_rgb(entry.path))
        with self._lock:
            self._opened[image_id] = opened
            while len(self._opened) > SAMPLES_KEPT:
                self._opened.popitem(last=False)
        return opened

    def add_upload(self, filename: str, data: bytes) -> ImageEntry:
        """Check and keep an uploaded file; its entry (the same one for the same bytes)."""
        if len(data) > self.max_upload_bytes:
            raise UploadRefused(f"{filename}: larger than the {_mib(self.max_upload_bytes)} upload "
                                "limit", 413)
        if not data:
            raise UploadRefused(f"{filename}: the file is empty", 400)
        digest = hashlib.sha256(data).hexdigest()[:12]
        image_id = f"u{digest}"
        if image_id in self._entries:
            return self._entries[image_id]
        suffix = Path(filename).suffix.lower()
        suffix = suffix if suffix in IMAGE_SUFFIXES else ".img"
        path = self.upload_dir / f"{digest}{suffix}"
        path.write_bytes(data)
        try:
            self._check_upload(path, filename)
        except UploadRefused:
            path.unlink()
            raise
        stem = f"{_flat_stem(Path(filename).stem or 'upload')}-{digest[:8]}"
        entry = ImageEntry(image_id, Path(filename).name or "upload", path, stem)
        self._entries[image_id] = entry
        return entry

    def _check_upload(self, path: Path, filename: str) -> None:
        try:
            h, w = image_size(path)
        except SamtuneError:
            raise UploadRefused(f"{filename}: not an image this server can read (PNG, JPEG, TIFF, "
                                "BMP or WebP)", 400) from None
        if h * w > self.max_pixels:
            raise UploadRefused(f"{filename}: {w}x{h} is {h * w / 1e6:.3g} megapixels, more than "
                                f"the {self.max_pixels / 1e6:.3g} megapixel limit; downscale it "
                                "or cut it into tiles", 413)
        try:
            read_image_rgb(path)
        except SamtuneError as e:
            raise UploadRefused(f"{filename}: not a readable image ({e})", 400) from None


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


def _dataset_name(dataset: Sequence[Sample], path: Path) -> str:
    rel = getattr(dataset, "rel", None)
    return rel(path) if rel is not None else path.name


def _flat_stem(name: str) -> str:
    """'val/imgs/cell 01.png' -> 'val__imgs__cell_01': one file name per dataset image, so
    two images with the same file name in different folders never share a corrections file."""
    stem = Path(name).with_suffix("").as_posix().replace("/", "__")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "image"
