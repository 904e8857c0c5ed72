"""A training run that kills itself (SIGKILL, as ``kill -9`` would) at a chosen moment.

``python killed_run.py CONFIG MOMENT STEP``; MOMENT is one of:

- ``write``: half-way through writing ``last.ckpt`` at global step STEP (the temporary file
  holds part of the bytes, as when a kill lands during ``torch.save``);
- ``validation``: inside the first validation batch at global step STEP;
- ``train``: inside the training step that starts at global step STEP;
- ``logged``: right after the checkpoints at the end of the batch that made global step STEP,
  before Lightning writes that step's row to ``metrics.csv``.
"""

import os
import signal
import sys
from pathlib import Path

import torch

from samtune.config import build_run_config
from samtune.files import atomic_path
from samtune.train import callbacks, module
from samtune.train.run import train


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(config: str, moment: str, step: int) -> None:
    if moment == "write":
        original = callbacks.RunCheckpointIO.save_checkpoint

        def save(self, checkpoint, path, storage_options=None):
            if Path(path).name == "last.ckpt" and checkpoint["global_step"] == step:
                with atomic_path(path) as tmp:
                    torch.save(checkpoint, tmp)
                    with open(tmp, "r+b") as f:
                        f.truncate(tmp.stat().st_size // 2)
                    die()
            original(self, checkpoint, path, storage_options)

        callbacks.RunCheckpointIO.save_checkpoint = save
    elif moment == "logged":
        original = callbacks.LastCheckpoint.on_train_batch_end

        def saved_then_die(self, trainer, *args):
            original(self, trainer, *args)
            if trainer.global_step == step:
                die()

        callbacks.LastCheckpoint.on_train_batch_end = saved_then_die
    else:
        name = "validation_step" if moment == "validation" else "training_step"
        original = getattr(module.FineTuneModule, name)

        def step_then_die(self, batch, batch_idx):
            if self.global_step == step and self.trainer.state.fn == "fit":
                die()
            return original(self, batch, batch_idx)

        setattr(module.FineTuneModule, name, step_then_die)
    train(build_run_config(config, []))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
