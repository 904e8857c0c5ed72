"""``samtune train CONFIG`` with the loss NaN at one step in one process only.

``python ddp_nonfinite_run.py CONFIG STEP RANK`` (under DDP, Lightning re-runs this script
per process): in the process of rank RANK, the training loss at global step STEP is NaN.
"""

import sys

import torch

from samtune.cli import app
from samtune.train import module


def main(config: str, step: int, rank: int) -> None:
    original = module.FineTuneModule._step

    def one_process_diverges(self, batch, stage):
        total, *rest = original(self, batch, stage)
        if stage == "train" and self.global_rank == rank and self.global_step == step:
            total = total * torch.tensor(float("nan"))
        return (total, *rest)

    module.FineTuneModule._step = one_process_diverges
    app(["train", config])


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
