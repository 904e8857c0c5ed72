"""A run's checkpoint files: written whole or not at all, each with a sha256 sidecar.

Lightning's default writer stages a checkpoint in ``$TMPDIR`` and moves it into place; when
``$TMPDIR`` is another filesystem (a tmpfs ``/tmp``) the move is a copy, and a kill during it
leaves a truncated file under the final name. :class:`AtomicCheckpointIO` writes to a
temporary name beside the target instead (:func:`samtune.files.atomic_path`), so the rename
is atomic on every setup.

Each ``X.ckpt`` gets ``X.sha256`` beside it, in ``sha256sum`` format (``sha256sum -c X.sha256``
checks it by hand), covering ``X.ckpt`` and the ``X.safetensors`` of its trained tensors. It
is written after both files, so a checkpoint is *complete* when its sidecar matches it: a kill
between the writes leaves a checkpoint whose sidecar is missing or stale, which a resume skips
(see :func:`resume_candidates`) and an explicit load refuses with the file named.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from samtune.errors import CheckpointError, SamtuneWarning
from samtune.files import atomic_path, is_temporary, write_text
from samtune.models.checkpoints import load_tensors_file, sha256_of

SIDECAR_SUFFIX = ".sha256"


def sidecar_of(path: Path) -> Path:
    """``X.sha256`` for ``X.ckpt`` or ``X.safetensors``."""
    return path.with_suffix(SIDECAR_SUFFIX)


def companions(checkpoint: Path) -> list[Path]:
    """The files one checkpoint consists of: the ``.ckpt`` and its trained-tensor file."""
    return [checkpoint, checkpoint.with_suffix(".safetensors")]


def write_checksums(checkpoint: Path) -> Path:
    """Write ``X.sha256`` for the files of ``checkpoint`` that exist (after they are written)."""
    lines = [f"{sha256_of(p)}  {p.name}\n" for p in companions(checkpoint) if p.is_file()]
    return write_text(sidecar_of(checkpoint), "".join(lines))


def read_checksums(sidecar: Path) -> dict[str, str]:
    """``{file name: sha256}`` from a sidecar; lines that do not parse are ignored."""
    out = {}
    for line in sidecar.read_text(encoding="utf-8", errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name:
            out[name.strip()] = digest
    return out


def verify_file(path: Path) -> bool | None:
    """True when ``path`` matches its sidecar, False when it does not (damaged, changed, or
    written after its sidecar by an interrupted save), None when there is no sidecar to check."""
    sidecar = sidecar_of(path)
    if not sidecar.is_file():
        return None
    expected = read_checksums(sidecar).get(path.name)
    return expected is not None and sha256_of(path) == expected


def check_file(path: Path) -> None:
    """Raise a one-line CheckpointError when ``path`` does not match its sidecar."""
    if verify_file(path) is False:
        raise CheckpointError(
            f"{path}: damaged or changed: its sha256 does not match {sidecar_of(path).name} "
            "beside it. Use another checkpoint of the run (e.g. --checkpoint last), or "
            "re-train; if you changed the file on purpose, delete the .sha256 file")


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, checked against its sidecar and loaded without unpickling
    objects; any file that is not a whole, tensor-only checkpoint is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    check_file(path)
    state = load_tensors_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(state).__name__})")
    return state


def remove_checkpoint_files(checkpoint: Path) -> None:
    for p in [*companions(checkpoint), sidecar_of(checkpoint)]:
        p.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with the temporary file beside its target, tensor-only
    loading checked against the sidecar, and removal of a checkpoint's companion files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return load_checkpoint_file(path)

    def remove_checkpoint(self, path) -> None:
        remove_checkpoint_files(Path(path))


def resume_candidates(ckpt_dir: Path) -> list[Path]:
    """The run's ``.ckpt`` files a resume may start from, newest first: complete ones (the
    sidecar matches), and ones without a sidecar (written by an older samtune) that load.
    Damaged or half-saved ones are skipped with a warning naming them."""
    files = [p for p in ckpt_dir.glob("*.ckpt")
             if p.is_file() and not p.is_symlink() and not is_temporary(p)]
    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)
    out = []
    for path in files:
        ok = verify_file(path)
        if ok is None:
            try:
                load_checkpoint_file(path)
                ok = True
            except CheckpointError:
                ok = False
        if ok:
            out.append(path)
        else:
            warnings.warn(f"{path}: incomplete or damaged (interrupted save?); not resuming "
                          "from it", SamtuneWarning, stacklevel=2)
    return out
