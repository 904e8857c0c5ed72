"""Things a run tells its user once: settings it had to change or interpret, data it works
around (an object cap that trims an image, images without objects).

Issued as :class:`TrainWarning` from the first process only, so a DDP run with eight
processes says each thing once, like the single-process run.
"""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_warn


class TrainWarning(UserWarning):
    """A setting samtune changed or interpreted for a run (precision, strategy, object cap)."""


def notify(message: str) -> None:
    """Warn with ``message`` on rank 0 (once per message and call site, as ``warnings`` does)."""
    rank_zero_warn(message, category=TrainWarning, stacklevel=3)
