"""The run configuration: pydantic models, one module per section, the one place defaults live.

``data`` (dataset sources), ``prompts`` (augmentation and prompt sampling) and ``train`` (model,
optimisation, Lightning) each hold their section's schema; :func:`build_run_config` reads a
YAML file, applies ``--set`` overrides and validates the result.
"""

from __future__ import annotations

from pathlib import Path

from samtune.config.loading import ConfigError, apply_overrides, read_yaml, validate
from samtune.config.train import RunConfig

#: What ``--print-config`` shows without a file: every default, and a placeholder dataset.
DEFAULT_DATA = {"train": [{"path": "data/"}]}


def build_run_config(path: str | Path | None, overrides: list[str], resume: str | Path | None = None) -> RunConfig:
    """The validated config from a YAML file (or a run folder's config.yaml when resuming,
    or the defaults), with ``a.b=c`` overrides applied."""
    if resume is not None:
        path = Path(resume) / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{resume}: not a run folder (no config.yaml)")
    data = read_yaml(path) if path is not None else {"data": DEFAULT_DATA}
    data = apply_overrides(data, overrides)
    return validate(RunConfig, data, str(path) if path is not None else "config")


__all__ = ["ConfigError", "RunConfig", "build_run_config"]
