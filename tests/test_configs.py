"""Every example in configs/ is a valid run config."""

from pathlib import Path

import pytest

from samtune.config import build_run_config
from samtune.models import get_spec

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_are_examples():
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_valid(path):
    config = build_run_config(path, [])
    get_spec(config.model.name)
