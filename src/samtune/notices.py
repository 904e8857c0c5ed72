"""Things a run tells its user once: settings it had to change or interpret, data it works
around (an object cap that trims an image, images without objects).

Issued as :class:`TrainWarning` from the first process only, so a DDP run with eight
processes says each thing once, like the single-process run.
"""

from __future__ import annotations

import warnings

from lightning.pytorch.utilities import rank_zero_only

from samtune.errors import SamtuneWarning


class TrainWarning(SamtuneWarning):
    """A setting samtune changed or interpreted for a run (precision, strategy, object cap);
    the CLI prints it as one ``warning:`` line, as every samtune warning."""


def notify(message: str) -> None:
    """Warn with ``message`` on rank 0 (once per message and call site, as ``warnings`` does)."""
    if rank_zero_only.rank == 0:
        # issued from the caller's line (Lightning's rank_zero_warn would name its own file,
        # and Lightning prints warnings from its files with that file's path)
        warnings.warn(message, TrainWarning, stacklevel=2)
