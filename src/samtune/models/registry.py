"""Families and model names: the one table of what samtune knows.

A *family* is an adapter class (``sam.py``, ``sam2.py``, ...) that carries everything samtune
knows about its models: how to build them, recognise and describe their checkpoints, write
and load the official format, which encoder blocks to checkpoint, which attention classes to
fuse, its segment-everything defaults, and its model names (``specs``). Adding a family is one
new file with its adapter class and one line in :data:`FAMILIES`.

Every other part of samtune (loading, the CLI's ``models`` listing, the trainer) goes through
:func:`get_spec` / :func:`list_models` / :func:`family_class`; nothing else hard-codes a model
name or branches on a family.
"""

from __future__ import annotations

import difflib

from samtune.errors import SamtuneError
from samtune.models.adapter import Adapter
from samtune.models.litemedsam import LiteMedSamAdapter
from samtune.models.sam import MobileSamAdapter, SamAdapter
from samtune.models.sam2 import Sam2Adapter
from samtune.models.spec import ModelSpec

#: family name -> adapter class, in listing order
FAMILIES: dict[str, type[Adapter]] = {cls.family: cls for cls in (
    SamAdapter,
    LiteMedSamAdapter,  # before MobileSAM: both are TinyViT; describe names the first match
    MobileSamAdapter,
    Sam2Adapter,
)}

# the official models of every family first, then the tiny test variants
_SPECS: tuple[ModelSpec, ...] = tuple(sorted(
    (spec for cls in FAMILIES.values() for spec in cls.specs), key=lambda spec: spec.tiny))
_BY_NAME = {spec.name: spec for spec in _SPECS}
_ALIASES = {alias: spec.name for spec in _SPECS for alias in spec.aliases}

__all__ = ["FAMILIES", "ModelSpec", "UnknownModelError", "family_class", "get_spec",
           "list_models"]


def family_class(family: str) -> type[Adapter]:
    """The adapter class of a family name (``ModelSpec.family``)."""
    try:
        return FAMILIES[family]
    except KeyError:
        raise SamtuneError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}") from None


def list_models(family: str | None = None, include_tiny: bool = True) -> list[ModelSpec]:
    """All known model specs, in table order, optionally filtered by family."""
    return [
        spec for spec in _SPECS
        if (family is None or spec.family == family) and (include_tiny or not spec.tiny)
    ]


class UnknownModelError(SamtuneError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def get_spec(name: str) -> ModelSpec:
    """The spec for ``name`` (or an alias such as ``vit_b``); a close-match hint otherwise."""
    name = _ALIASES.get(name, name)
    if name in _BY_NAME:
        return _BY_NAME[name]
    close = difflib.get_close_matches(name, list(_BY_NAME) + list(_ALIASES), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} Run `samtune models` to list the known names."
    )
