"""Learning-rate multipliers at given steps, and the schedulers built from them."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LambdaLR, ReduceLROnPlateau

from samtune.schedules import (
    Constant,
    CosineRestarts,
    WarmupCosine,
    WarmupPoly,
    WarmupStepDecay,
    build_scheduler,
    warmup_factor,
)


def optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def run(config: dict, steps: int) -> list[list[float]]:
    """Learning rates of every group before each of ``steps`` scheduler steps."""
    opt, sched = config["scheduler"].optimizer, config["scheduler"]
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_warmup_is_linear_from_one_step():
    assert warmup_factor(4, 10) == pytest.approx(0.5)  # midpoint
    assert warmup_factor(9, 10) == 1.0  # last warmup step
    assert warmup_factor(0, 0) == 1.0
    assert Constant(warmup_steps=4)(1) == 0.5 and Constant()(123) == 1.0


def test_warmup_cosine():
    s = WarmupCosine(total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert s(4) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)


def test_cosine_restarts_match_torch():
    s = CosineRestarts(period=10, min_ratio=0.0)
    assert [s(0), s(5), s(10), s(15)] == pytest.approx([1.0, 0.5, 1.0, 0.5])
    longer = CosineRestarts(period=10, period_mult=2)
    assert [longer(10), longer(20), longer(30)] == pytest.approx([1.0, 0.5, 1.0])
    opt = optimizer(1.0)
    ref = CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2, eta_min=0.05)
    ours = CosineRestarts(period=10, period_mult=2, min_ratio=0.05)
    for step in range(70):
        assert opt.param_groups[0]["lr"] == pytest.approx(ours(step), abs=1e-9), step
        opt.step()
        ref.step()


def test_warmup_poly_r1():
    s = WarmupPoly(total_steps=1250, warmup_steps=250, power=0.9)
    assert s(124) == pytest.approx(0.5)
    assert s(250) == pytest.approx(1.0)
    assert s(750) == pytest.approx(0.5**0.9)
    assert s(1250) == 0.0 and s(2000) == 0.0


def test_warmup_step_decay_r3():
    """R3: (s+1)/250 warmup, x0.1 from 66.667% and again from 86.666% of 1500 steps."""
    s = WarmupStepDecay(
        total_steps=1500, warmup_steps=250, milestones=(0.66667, 0.86666), gamma=0.1
    )
    assert s(124) == pytest.approx(0.5)
    assert s(249) == 1.0 and s(250) == 1.0
    assert s(1000) == 1.0  # milestone at 1000.005
    assert s(1001) == pytest.approx(0.1)
    assert s(1299) == pytest.approx(0.1)
    assert s(1300) == pytest.approx(0.01)  # milestone at 1299.99
    absolute = WarmupStepDecay(total_steps=100, milestone_steps=(10, 20), gamma=0.6)
    assert [absolute(9), absolute(10), absolute(20)] == pytest.approx([1.0, 0.6, 0.36])
    with pytest.raises(ValueError, match="milestone_steps"):
        WarmupStepDecay(total_steps=100, milestones=(600,))


def test_build_scheduler_for_lightning_with_absolute_eta_min_per_group():
    config = build_scheduler(
        optimizer(1e-3, 1e-4), "cosine", total_steps=20, warmup_steps=4, eta_min=1e-5
    )
    assert isinstance(config["scheduler"], LambdaLR)
    assert config["interval"] == "step" and config["frequency"] == 1 and "monitor" not in config
    lrs = run(config, 25)
    assert lrs[1] == pytest.approx([5e-4, 5e-5])  # warmup midpoint, both groups
    assert lrs[3] == pytest.approx([1e-3, 1e-4])
    assert lrs[20] == pytest.approx([1e-5, 1e-5])  # both groups end at the absolute eta_min
    assert lrs[24] == pytest.approx([1e-5, 1e-5])


def test_build_scheduler_names_map_to_schedules():
    config = build_scheduler(
        optimizer(1.0), "step", 1500, warmup_steps=250, milestones=(0.66667, 0.86666)
    )
    lrs = [row[0] for row in run(config, 1301)]
    assert lrs[124] == pytest.approx(0.5) and lrs[1001] == pytest.approx(0.1)
    assert lrs[1300] == pytest.approx(0.01)
    poly = build_scheduler(optimizer(2.0), "poly", 10, power=1.0, interval="epoch")
    assert poly["interval"] == "epoch"
    assert [row[0] for row in run(poly, 11)][::5] == pytest.approx([2.0, 1.0, 0.0])
    restarts = build_scheduler(optimizer(1.0), "cosine_restarts", 0, period=4, min_ratio=0.5)
    assert [row[0] for row in run(restarts, 5)] == pytest.approx(
        [
            1.0,
            0.75 + 0.25 * math.cos(math.pi / 4),
            0.75,
            0.75 + 0.25 * math.cos(3 * math.pi / 4),
            1.0,
        ]
    )


def test_plateau_r4_reduces_after_patience():
    config = build_scheduler(
        optimizer(1.0),
        "plateau",
        0,
        monitor="train/loss_epoch",
        mode="min",
        factor=0.05,
        patience=10,
        threshold=1e-4,
        cooldown=0,
        min_lr=0.0,
    )
    sched = config["scheduler"]
    assert isinstance(sched, ReduceLROnPlateau)
    assert config["interval"] == "epoch" and config["monitor"] == "train/loss_epoch"
    sched.step(1.0)  # the best so far
    for _ in range(10):  # ten epochs without improvement: still within patience
        sched.step(1.0)
    assert sched.optimizer.param_groups[0]["lr"] == 1.0
    sched.step(0.99995)  # an improvement below the 1e-4 relative threshold does not count
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_schedules_pickle_and_bad_arguments_fail_clearly():
    s = WarmupCosine(total_steps=10, warmup_steps=2, min_ratio=0.1)
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(ValueError, match="monitor"):
        build_scheduler(optimizer(1.0), "plateau", 0)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        build_scheduler(optimizer(1.0), "cosine_annealing", 10)
    with pytest.raises(ValueError, match="takes"):
        build_scheduler(optimizer(1.0), "cosine", 10, power=2)
    with pytest.raises(ValueError, match="not both"):
        build_scheduler(optimizer(1.0), "cosine", 10, eta_min=0.1, min_ratio=0.1)
    with pytest.raises(ValueError, match="min_ratio"):
        WarmupCosine(total_steps=10, min_ratio=2.0)


class _Tiny:
    """A LightningModule whose configure_optimizers returns ``build_scheduler``'s dict."""

    @staticmethod
    def make(name: str, **params):
        import lightning.pytorch as pl

        class Module(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(1))
                self.lrs: list[float] = []

            def training_step(self, batch, batch_idx):
                self.lrs.append(self.optimizers().param_groups[0]["lr"])
                loss = (self.w * batch[0]).sum() ** 2
                self.log("train_loss", loss, on_step=False, on_epoch=True)
                return loss

            def train_dataloader(self):
                return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)))

            def configure_optimizers(self):
                opt = torch.optim.SGD(self.parameters(), lr=1.0)
                return {"optimizer": opt, "lr_scheduler": build_scheduler(opt, name, **params)}

        return Module()


@pytest.mark.parametrize(
    "name,params,expected",
    [
        (
            "step",
            {"total_steps": 8, "warmup_steps": 2, "milestone_steps": (6,)},
            [0.5, 1, 1, 1, 1, 1] + [0.1] * 6,
        ),
        (
            "plateau",
            {"total_steps": 0, "monitor": "train_loss", "factor": 0.5, "patience": 0},
            [1] * 8 + [0.5] * 4,
        ),  # epoch 1 sets the best, epoch 2 does not improve
    ],
)
def test_lightning_accepts_the_scheduler_config(tmp_path, name, params, expected):
    import lightning.pytorch as pl

    module = _Tiny.make(name, **params)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    assert module.lrs == pytest.approx(expected)
