"""train.optimizer and train.schedule: a variant per name, each with its own keys and build."""

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from samtune.config import build_run_config
from samtune.config.loading import ConfigError
from samtune.config.train import TrainConfig
from samtune.schedules import build_scheduler

DATA = "data.train=[{path: /nowhere}]"

#: what every run config.yaml held before the sections had variants
FLAT_OPTIMIZER = {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01, "betas": [0.9, 0.999],
                  "momentum": 0.9, "group_lr": {}, "grad_clip": None}
FLAT_SCHEDULE = {"name": "cosine", "warmup_steps": 0, "eta_min": 0.0, "period": None,
                 "power": 0.9, "milestones": [0.66667, 0.86666], "gamma": 0.1,
                 "monitor": "val/iou", "factor": 0.1, "patience": 10, "threshold": 1e-4,
                 "cooldown": 0, "min_lr": 0.0}


@pytest.mark.parametrize(("override", "message"), [
    ("train.schedule.power=0.5", "unknown key 'train.schedule.power'; name 'cosine' takes "
                                 "eta_min, name, warmup_steps"),
    ("train.optimizer.momentum=0.5", "unknown key 'train.optimizer.momentum'"),
    ("train.optimizer.name=lion", "train.optimizer.name: 'lion' is not one of 'adamw', 'adam', 'sgd'"),
    ("train.schedule.warmup_step=3", "did you mean 'train.schedule.warmup_steps'"),
])
def test_a_key_of_another_variant_is_refused_with_the_variants_keys(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_run_config(None, [DATA, override])


def test_name_defaults_and_each_variant_keeps_its_keys():
    config = build_run_config(None, [DATA, "train.schedule.warmup_steps=5",
                                     "train.optimizer.lr=0.001"])
    assert config.train.schedule.name == "cosine" and config.train.schedule.warmup_steps == 5
    assert config.train.optimizer.name == "adamw"
    poly = build_run_config(None, [DATA, "train.schedule={name: poly, power: 2}"]).train.schedule
    assert set(poly.model_dump()) == {"name", "warmup_steps", "eta_min", "power"} and poly.power == 2


def test_a_run_config_written_before_the_variants_reads_back():
    train = TrainConfig.model_validate({"optimizer": FLAT_OPTIMIZER, "schedule": FLAT_SCHEDULE})
    assert train == TrainConfig()
    sgd = TrainConfig.model_validate({"optimizer": {**FLAT_OPTIMIZER, "name": "sgd"}})
    assert sgd.optimizer.momentum == 0.9 and "betas" not in sgd.optimizer.model_dump()
    with pytest.raises(ValueError, match="power"):  # a value the user chose is not dropped
        TrainConfig.model_validate({"schedule": {**FLAT_SCHEDULE, "power": 2.0}})


@pytest.mark.parametrize(("schedule", "expected"), [
    ({"name": "constant", "warmup_steps": 2}, ("constant", {"warmup_steps": 2})),
    ({"name": "cosine", "warmup_steps": 2, "eta_min": 1e-6},
     ("cosine", {"warmup_steps": 2, "eta_min": 1e-6})),
    ({"name": "cosine_restarts", "eta_min": 1e-6},
     ("cosine_restarts", {"warmup_steps": 0, "eta_min": 1e-6, "period": 10})),
    ({"name": "poly", "power": 2.0}, ("poly", {"warmup_steps": 0, "eta_min": 0.0, "power": 2.0})),
    ({"name": "step", "gamma": 0.5},
     ("step", {"warmup_steps": 0, "milestones": (0.66667, 0.86666), "gamma": 0.5})),
])
def test_each_schedule_builds_what_build_scheduler_builds(schedule, expected):
    train = TrainConfig.model_validate({"schedule": schedule})
    ours = train.schedule.build(_optimizer(), 100)["scheduler"]
    name, params = expected
    theirs = build_scheduler(_optimizer(), name, 100, **params)["scheduler"]
    assert isinstance(ours, LambdaLR)
    assert [ours.lr_lambdas[0](s) for s in range(0, 100, 7)] == \
        [theirs.lr_lambdas[0](s) for s in range(0, 100, 7)]


def test_plateau_watches_its_metric_in_its_direction():
    train = TrainConfig.model_validate({"schedule": {"name": "plateau", "monitor": "val/loss",
                                                     "factor": 0.05}})
    entry = train.schedule.build(_optimizer(), 100)
    assert isinstance(entry["scheduler"], ReduceLROnPlateau) and entry["monitor"] == "val/loss"
    assert entry["scheduler"].mode == "min" and entry["scheduler"].factor == 0.05


@pytest.mark.parametrize(("optimizer", "cls", "setting"), [
    ({"name": "adamw", "betas": [0.8, 0.9]}, torch.optim.AdamW, ("betas", (0.8, 0.9))),
    ({"name": "adam", "weight_decay": 0.0}, torch.optim.Adam, ("weight_decay", 0.0)),
    ({"name": "sgd", "momentum": 0.5}, torch.optim.SGD, ("momentum", 0.5)),
])
def test_each_optimizer_builds_its_torch_class(optimizer, cls, setting):
    built = TrainConfig.model_validate({"optimizer": optimizer}).optimizer.build(
        [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.01}])
    assert type(built) is cls
    key, value = setting
    assert built.param_groups[0][key] == value and built.param_groups[0]["lr"] == 0.01


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_every_config_section_has_the_one_model_config():
    import inspect

    from pydantic import BaseModel

    from samtune.config import data, prompts, train
    from samtune.config.section import Section

    sections = [cls for module in (data, prompts, train)
                for _, cls in inspect.getmembers(module, inspect.isclass)
                if issubclass(cls, BaseModel) and cls.__module__ == module.__name__]
    assert len(sections) >= 20
    for cls in sections:
        assert issubclass(cls, Section), cls.__name__
        assert cls.model_config == Section.model_config, cls.__name__
