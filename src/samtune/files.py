"""Writing output files so that a reader never sees a half-written one.

Everything samtune writes (masks, overlays, reports, checkpoints, cache entries) goes to a
temporary name in the target folder and is renamed into place when complete: an interrupted
run leaves either the old file or the new one, never a truncated file under the real name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(folder: str | Path, what: str = "output folder") -> None:
    """Refuse, before any work, a folder that cannot be created or written (nothing is
    created here: the nearest existing parent is checked)."""
    from samtune.errors import SamtuneError

    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SamtuneError(f"{folder}: cannot be the {what}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SamtuneError(f"{folder}: the {what} is not writable ({existing}: permission "
                           "denied); choose another folder")


def is_temporary(path: Path) -> bool:
    """A file :func:`atomic_path` left behind when a kill interrupted the write."""
    return path.name.startswith(".") and ".tmp" in path.name


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary files interrupted writes left in ``folder``; returns them."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_file() and is_temporary(p)]
    for p in found:
        p.unlink(missing_ok=True)
    return found


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; when the block succeeds it replaces
    ``path`` whole (the old folder is moved aside, the new one renamed in, the old one
    deleted), so a reader finds the old complete folder or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a kill
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        aside = None
        if path.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", suffix=".tmp",
                                          dir=path.parent))
            os.replace(path, aside / path.name)
        os.replace(staging, path)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 HxW or HxWx3/4 array (or a bool mask, as 0/255) as PNG, atomically."""
    from PIL import Image

    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """JSON that every parser reads: NaN and infinity are refused, never written."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError as e:
        from samtune.errors import SamtuneError

        raise SamtuneError(f"{path}: not written: it would hold a NaN or infinite number") from e
    return write_text(path, text + "\n")
