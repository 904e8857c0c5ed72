"""The training progress bar: the run's optimizer steps, not the batches of one epoch.

Lightning's rich bar restarts every epoch and labels it "Epoch 3/<max_epochs - 1>", which a
run bounded by ``max_steps`` alone (``max_epochs: -1``) shows as "Epoch 3/-2". A samtune run
is counted in steps (``max_steps``, ``val_every_n_steps``, checkpoint names), so the bar is.
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


def total_steps(trainer: L.Trainer) -> int | float:
    """Optimizer steps the run will take: ``max_steps``, else what ``max_epochs`` gives."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return trainer.max_steps
    steps = trainer.estimated_stepping_batches
    return steps if math.isfinite(steps) else float("inf")


def step_description(trainer: L.Trainer) -> str:
    """``step`` with the epoch when the run is bounded by epochs too: "step (epoch 2/5)"."""
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        return f"step (epoch {trainer.current_epoch + 1}/{trainer.max_epochs})"
    return "step"


class StepProgressBar(RichProgressBar):
    """One bar over the whole run, at ``trainer.global_step`` of :func:`total_steps`."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        else:
            self.progress.update(self.train_progress_bar_id, description=step_description(trainer))

    def _initialize_train_progress_bar_id(self) -> None:
        self.train_progress_bar_id = self._add_task(total_steps(self.trainer),
                                                    step_description(self.trainer))
        self._update(self.train_progress_bar_id, self.trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
