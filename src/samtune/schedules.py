"""Learning-rate schedules as multipliers of each parameter group's base learning rate.

Each schedule is a small frozen dataclass whose instances are callables ``step -> multiplier``,
for :class:`torch.optim.lr_scheduler.LambdaLR` (one per parameter group, so groups with
different base rates share a shape). Being objects rather than closures, they pickle and show
their settings in ``repr``. ``step`` counts scheduler steps from 0: optimizer steps with
``interval="step"`` (gradient accumulation already folded in by Lightning), epochs with
``interval="epoch"``.

Warmup is linear, ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (``lightning_coco_boxes``'s form, so the
first step does not run at learning rate 0; ``dlo_cables`` uses ``step / warmup_steps``, one step behind).

The reference projects map to:

- ``labpics_sam2``: ``cosine_restarts`` with ``period``, ``eta_min=5e-8`` per epoch. ``labpics_sam2`` itself calls
  ``CosineAnnealingLR(T_max=300)`` for 900 epochs, which does not restart but oscillates back up
  with period 600 (a quirk); warm restarts are the intended behaviour.
- ``dlo_cables``: ``poly`` with ``warmup_steps=250``, ``power=0.9``.
- ``mobilesam_boxes``: ``cosine`` with ``eta_min=0`` over the whole run (``mobilesam_boxes`` steps it once per epoch with
  ``T_max`` = batches per epoch, a quirk).
- ``lightning_coco_boxes``: ``step`` with ``warmup_steps=250``, ``milestones=(0.66667, 0.86666)``, ``gamma=0.1``.
- ``finestsam_points``: ``plateau`` with ``factor=0.05, patience=10, threshold=1e-4, cooldown=0, min_lr=0``,
  monitoring the epoch's mean training loss.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

Multiplier = Callable[[int], float]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup ``(step + 1) / warmup_steps`` before ``warmup_steps``, then 1."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def _progress(step: int, start: int, length: int) -> float:
    """Fraction of ``length`` steps done since ``start``, clipped to [0, 1]."""
    if length <= 0:
        return 1.0
    return min(max((step - start) / length, 0.0), 1.0)


def _check_ratio(min_ratio: float) -> None:
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(
            f"min_ratio must be in [0, 1] (a fraction of the base lr), got {min_ratio}"
        )


@dataclass(frozen=True)
class Constant:
    """1 after an optional linear warmup."""

    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        return warmup_factor(step, self.warmup_steps)


def _half_cosine(t: float) -> float:
    """1 at t = 0 down to 0 at t = 1."""
    return 0.5 * (1 + math.cos(math.pi * t))


@dataclass(frozen=True)
class _WarmupDecay(ABC):
    """Linear warmup, then ``min_ratio + (1 − min_ratio) · decay(t)``, t the fraction of the
    post-warmup steps done (clipped to [0, 1], so the schedule holds its end value after
    ``total_steps``)."""

    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check_ratio(self.min_ratio)

    @abstractmethod
    def decay(self, t: float) -> float:
        """1 at t = 0 down to 0 at t = 1."""

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return warmup_factor(step, self.warmup_steps)
        t = _progress(step, self.warmup_steps, self.total_steps - self.warmup_steps)
        return self.min_ratio + (1 - self.min_ratio) * self.decay(t)


@dataclass(frozen=True)
class WarmupCosine(_WarmupDecay):
    """Linear warmup, then half a cosine from 1 down to ``min_ratio`` at ``total_steps``."""

    def decay(self, t: float) -> float:
        return _half_cosine(t)


@dataclass(frozen=True)
class WarmupPoly(_WarmupDecay):
    """Linear warmup, then ``(1 − t)^power`` from 1 down to ``min_ratio`` at ``total_steps``."""

    power: float = 0.9

    def decay(self, t: float) -> float:
        return (1 - t) ** self.power


@dataclass(frozen=True)
class CosineRestarts:
    """Linear warmup, then cosine cycles from 1 down to ``min_ratio``, restarting at 1.

    The first cycle lasts ``period`` steps, each next one ``period_mult`` times longer, as
    :class:`torch.optim.lr_scheduler.CosineAnnealingWarmRestarts` (``T_0``, ``T_mult``).
    """

    period: int
    warmup_steps: int = 0
    min_ratio: float = 0.0
    period_mult: int = 1

    def __post_init__(self) -> None:
        _check_ratio(self.min_ratio)
        if self.period < 1 or self.period_mult < 1:
            raise ValueError(
                f"period and period_mult must be >= 1, got {self.period}, {self.period_mult}"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return warmup_factor(step, self.warmup_steps)
        t, length = step - self.warmup_steps, self.period
        while t >= length:
            t, length = t - length, length * self.period_mult
        return self.min_ratio + (1 - self.min_ratio) * _half_cosine(t / length)


@dataclass(frozen=True)
class WarmupStepDecay:
    """Linear warmup, then ×``gamma`` at each milestone reached (``step >= milestone``).

    Milestones are absolute steps (``milestone_steps``) or fractions of ``total_steps``
    (``milestones``, ``lightning_coco_boxes``: 0.66667 and 0.86666 of the estimated stepping batches).
    """

    total_steps: int
    warmup_steps: int = 0
    milestones: Sequence[float] = ()
    gamma: float = 0.1
    milestone_steps: Sequence[int] = ()

    def __post_init__(self) -> None:
        bad = [m for m in self.milestones if not 0.0 < m <= 1.0]
        if bad:
            raise ValueError(
                f"milestones are fractions of total_steps in (0, 1], got {bad}; "
                "give absolute steps as milestone_steps"
            )

    def boundaries(self) -> list[float]:
        """The milestone steps, absolute."""
        return sorted([m * self.total_steps for m in self.milestones] + list(self.milestone_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return warmup_factor(step, self.warmup_steps)
        return self.gamma ** sum(1 for b in self.boundaries() if step >= b)


SCHEDULES: dict[str, type] = {
    "constant": Constant,
    "cosine": WarmupCosine,
    "cosine_restarts": CosineRestarts,
    "poly": WarmupPoly,
    "step": WarmupStepDecay,
}
PLATEAU = "plateau"


def _multipliers(
    optimizer: Optimizer, name: str, total_steps: int, params: dict[str, Any]
) -> list[Multiplier]:
    """One multiplier per parameter group; an absolute ``eta_min`` becomes each group's ratio."""
    cls = SCHEDULES[name]
    allowed = {f.name for f in fields(cls)} - {"total_steps"} | {"eta_min"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"lr schedule {name!r} takes {sorted(allowed)}, not {unknown}")
    eta_min = params.pop("eta_min", None)
    if eta_min is not None and "min_ratio" in params:
        raise ValueError(
            "give eta_min (absolute lr) or min_ratio (fraction of the base lr), not both"
        )
    if name not in ("constant", "cosine_restarts"):
        params["total_steps"] = total_steps
    out: list[Multiplier] = []
    for group in optimizer.param_groups:
        group_params = dict(params)
        if eta_min is not None:
            base = group.get("initial_lr", group["lr"])
            group_params["min_ratio"] = min(eta_min / base, 1.0) if base > 0 else 0.0
        out.append(cls(**group_params))
    return out


def build_scheduler(
    optimizer: Optimizer,
    name: str,
    total_steps: int,
    *,
    interval: str | None = None,
    monitor: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    """A scheduler config for Lightning's ``configure_optimizers``:
    ``{"scheduler": ..., "interval": "step" | "epoch", "frequency": 1[, "monitor": ...]}``.

    ``name``: one of :data:`SCHEDULES` (a :class:`LambdaLR`; ``params`` are the schedule's
    fields, plus ``eta_min`` as an absolute lr instead of ``min_ratio``) or ``"plateau"``
    (:class:`ReduceLROnPlateau`; ``params`` are its keyword arguments, ``monitor`` is required).
    ``total_steps`` is in units of ``interval`` (default ``"step"``; ``"epoch"`` for plateau).
    """
    if interval not in (None, "step", "epoch"):
        raise ValueError(f"interval must be 'step' or 'epoch', got {interval!r}")
    if name == PLATEAU:
        if not monitor:
            raise ValueError("the plateau scheduler needs monitor= the logged metric to watch")
        scheduler: Any = ReduceLROnPlateau(optimizer, **params)
        return {
            "scheduler": scheduler,
            "interval": interval or "epoch",
            "frequency": 1,
            "monitor": monitor,
        }
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown lr schedule {name!r}; choose from {sorted(SCHEDULES) + [PLATEAU]}"
        )
    scheduler = LambdaLR(optimizer, _multipliers(optimizer, name, total_steps, dict(params)))
    out = {"scheduler": scheduler, "interval": interval or "step", "frequency": 1}
    if monitor:
        out["monitor"] = monitor
    return out
