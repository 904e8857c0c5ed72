"""The bench compares like with like: the official-code step it times computes the same loss
as samtune's step on the same batch, so its speed ratios measure the call pattern alone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
train_step = pytest.importorskip("train_step")

from samtune.config import build_run_config  # noqa: E402
from samtune.train.module import FineTuneModule  # noqa: E402


@pytest.mark.parametrize("setup", list(train_step.SETUPS))
def test_official_step_computes_samtune_loss(setup):
    overrides = ["model.name=sam_tiny", *train_step.SETUPS[setup]]
    module = FineTuneModule(build_run_config(None, overrides)).train()
    batch = train_step.make_batch(module, images=2, objects=3, size=(120, 160), seed=0)
    ours = train_step.samtune_loss(module, batch)
    official = train_step.official_loss(module, batch)
    assert batch.num_objects == 6
    torch.testing.assert_close(official, ours, rtol=1e-5, atol=1e-6)
