"""A run's checkpoint files written whole or not at all.

Lightning's default writer stages a checkpoint in ``$TMPDIR`` and moves it into place; when
``$TMPDIR`` is another filesystem (a tmpfs ``/tmp``) the move is a copy, and a kill during it
leaves a truncated file under the final name. :class:`AtomicCheckpointIO` writes to a
temporary name beside the target instead (:func:`samtune.files.atomic_path`), so the rename
is atomic on every setup. The files and their sidecars are :mod:`samtune.runs`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from samtune.files import atomic_path
from samtune.runs import load_checkpoint_file, remove_checkpoint_files


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
