"""``Section``: the one base of every config section (``data``, ``augment``, ``prompts``,
``model``, ``train`` and everything below them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are refused (with the closest valid key suggested, see
    :func:`samtune.config.loading.validate`), values are fixed once read (change a copy with
    ``model_copy(update=...)``), and each field's docstring is its description."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
