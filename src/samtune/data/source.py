"""What every dataset source shares: the ``Problem`` record, the ``Source`` sequence, splits.

A source indexes its files once when it is built. Anything wrong that indexing can see (an
image without a mask, an annotation pointing at a missing image) becomes a :class:`Problem` in
``source.problems`` and the affected item or annotation is left out; anything wrong that only
reading can see (a truncated file, a mask of the wrong size) raises :class:`BadSample` from
:meth:`Source.load`. What to do about either (refuse, or skip with a warning) is decided once,
in :func:`samtune.data.detect.open_source`, and ``samtune data check`` reports both.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from samtune.data.images import read_image_rgb
from samtune.data.sample import Sample
from samtune.errors import SamtuneError, SamtuneWarning

T = TypeVar("T")

#: Folder names accepted for each split, compared without case.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


class DataWarning(SamtuneWarning):
    """A dataset problem that samtune worked around (skipped sample, thresholded JPEG mask)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset. ``file`` is relative to the dataset root (empty for the
    dataset as a whole); an ``error`` makes the dataset untrainable as it stands, a
    ``warning`` does not."""

    level: Literal["error", "warning"]
    file: str
    message: str
    annotation_id: int | None = None

    def __str__(self) -> str:
        if not self.file:
            return self.message
        where = self.file if self.annotation_id is None else (
            f"{self.file} [annotation {self.annotation_id}]")
        return f"{where}: {self.message}"


class BadSample(SamtuneError):
    """Raised by :meth:`Source.load` when one sample cannot be used; carries every Problem
    found in it (``problem`` is the first)."""

    def __init__(self, problem: Problem, *more: Problem) -> None:
        self.problems = [problem, *more]
        self.problem = problem
        super().__init__("\n".join(str(p) for p in self.problems))


class Source(Sequence[Sample]):
    """A dataset split as a sequence of :class:`Sample`.

    Subclasses fill ``self._items`` (records with an ``image`` attribute, the absolute image
    path) while indexing, append to ``self.problems``, and implement ``load(i) -> (Sample,
    warnings)``. ``root`` is the dataset root the user named; sample paths and problem files
    are relative to it.
    """

    format: str = ""

    def __init__(self, root: Path, name: str) -> None:
        self.root = Path(root)
        self.name = name
        self.problems: list[Problem] = []
        self._items: list[Any] = []

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        return self.load(index % len(self))[0]

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    @property
    def image_paths(self) -> list[Path]:
        """Absolute paths of the images, in sample order."""
        return [item.image for item in self._items]

    def rel(self, path: Path) -> str:
        """``path`` relative to the dataset root, with forward slashes, for messages."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return Path(path).as_posix()

    def confined(self, path: Path, allow_outside: bool) -> bool:
        """Whether ``path`` (symlinks followed) lies inside the dataset folder; when it does
        not and ``allow_outside`` is off, an error problem names it and the file is not read."""
        if allow_outside:
            return True
        root = self.root.resolve()
        if not root.is_dir():
            root = root.parent
        if path.resolve().is_relative_to(root):
            return True
        self.problem("error", path, f"leads outside the dataset folder {self.root} (to "
                     f"{path.resolve()}); move the file into it, or set "
                     "allow_outside_paths: true on this data source")
        return False

    def problem(self, level: Literal["error", "warning"], path: Path | str, message: str,
                annotation_id: int | None = None) -> Problem:
        """Record a problem found while indexing and return it."""
        file = path if isinstance(path, str) else self.rel(path)
        found = Problem(level, file, message, annotation_id)
        self.problems.append(found)
        return found

    def subset(self, indices: Sequence[int], name: str | None = None) -> Source:
        """A shallow copy holding only the items at ``indices`` (same problems, same root)."""
        out = copy.copy(self)
        out._items = [self._items[i] for i in indices]
        out.name = name or self.name
        return out

    def read_image(self, path: Path) -> np.ndarray:
        """The image at ``path`` as HxWx3 uint8 RGB, or :class:`BadSample` naming it."""
        return read_checked(path, self.rel(path), read_image_rgb)


def read_checked(path: Path, rel: str, reader: Any) -> Any:
    """``reader(path)``, with an empty or unreadable file raised as :class:`BadSample` whose
    message names ``rel`` rather than the absolute path."""
    try:
        if path.stat().st_size == 0:
            raise BadSample(Problem("error", rel, "the file is empty (0 bytes); replace it with "
                                    "the real file or remove it"))
    except FileNotFoundError:
        raise BadSample(Problem("error", rel, "the file does not exist")) from None
    try:
        return reader(path)
    except BadSample:
        raise
    except SamtuneError as e:
        message = str(e).replace(f"{path}: ", "").replace(str(path), rel)
        raise BadSample(Problem("error", rel, f"{message}; re-save or remove the file")) from e


def canonical_split(name: str) -> str | None:
    """'Valid' -> 'val', 'Train' -> 'train'; None for a name that is not a split."""
    low = name.lower()
    for split, aliases in SPLIT_ALIASES.items():
        if low in aliases:
            return split
    return None


def split_dirs(root: Path) -> dict[str, Path]:
    """The split folders directly under ``root`` (train/, Val/, valid/, Test/ ...) by split,
    in the order train, val, test."""
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for child in sorted(root.iterdir()):
        split = canonical_split(child.name) if child.is_dir() else None
        if split and split not in found:
            found[split] = child
    return {split: found[split] for split in SPLIT_ALIASES if split in found}


def choose_split(parts: Mapping[str, T], split: str, where: Path) -> T:
    """The part for ``split``. A missing ``val`` falls back to ``test`` (``labpics_sam2``, ``dlo_cables`` and ``mobilesam_boxes`` validate
    on their test folder); anything else missing is a SamtuneError listing what exists."""
    want = canonical_split(split) or split
    if want in parts:
        return parts[want]
    if want == "val" and "test" in parts:
        return parts["test"]
    raise SamtuneError(f"{where}: no '{split}' split; found {', '.join(sorted(parts)) or 'none'}."
                       " Name a split that exists, or add the folder.")


def split_indices(n: int, split: str, val_size: float, seed: int) -> list[int]:
    """Indices of ``split`` ('train' or 'val') when an unsplit dataset of ``n`` samples is cut
    into ``int(n * val_size)`` validation samples. Uses ``torch.randperm`` with a generator
    seeded by ``seed`` exactly as ``finestsam_points``'s ``random_split(dataset, [train, val])`` does, so the
    same seed gives ``finestsam_points``'s split."""
    import torch

    n_val = int(n * val_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[: n - n_val] if split == "train" else order[n - n_val:]


def warn_problem(problem: Problem, prefix: str = "") -> None:
    """Issue ``problem`` as a :class:`DataWarning`."""
    warnings.warn(f"{prefix}{problem}", DataWarning, stacklevel=3)


def size_text(hw: tuple[int, int]) -> str:
    """(H, W) -> 'WxH', the order image viewers and file managers show."""
    return f"{hw[1]}x{hw[0]}"


def exif_note(image_path: Path, expected_hw: tuple[int, int]) -> str:
    """A hint for a size mismatch caused by EXIF orientation: samtune compares masks and COCO
    sizes with the image as displayed (EXIF rotation applied, as every viewer and annotation
    tool shows it); when ``expected_hw`` matches the stored, unrotated pixels instead, say so."""
    from PIL import Image

    try:
        with Image.open(image_path) as im:
            stored_hw = (im.height, im.width)
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):  # an unreadable image is reported elsewhere
        return ""
    if orientation in (5, 6, 7, 8) and tuple(expected_hw) == stored_hw:
        return (" (it matches the image before its EXIF rotation: samtune uses the image as "
                "displayed, rotated; rotate the mask/annotation too, or save the image "
                "without an EXIF orientation tag)")
    return ""


def sources_of(data: Sequence[Sample]) -> list[Source]:
    """The dataset sources behind a split (a mixed or composited set holds several)."""
    inner = getattr(data, "source", None)  # CompositeSource
    if inner is not None:
        return sources_of(inner)
    return list(getattr(data, "sources", [data]))


def category_names(data: Sequence[Sample]) -> dict[int, str]:
    """Category id -> name from the COCO categories of a split's sources, if any."""
    names: dict[int, str] = {}
    for source in [*sources_of(data), data]:
        names.update(getattr(source, "categories", None) or {})
    return names
