"""Suite-wide switches: slow tests are skipped in CI, GPU tests without CUDA, benchmarks always
(they run from bench/, not from the suite)."""

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    for item in items:
        if "bench" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="benchmarks run from bench/"))
        elif "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        elif "slow" in item.keywords and in_ci:
            item.add_marker(pytest.mark.skip(reason="slow; skipped when CI=true"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Never read or write the user's real cache, and never reach the network by accident
    (the download tests lift SAMTUNE_OFFLINE and talk to their own 127.0.0.1 server)."""
    monkeypatch.setenv("SAMTUNE_HOME", str(tmp_path / "samtune_home"))
    monkeypatch.setenv("SAMTUNE_OFFLINE", "1")
