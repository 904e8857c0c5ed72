"""``load_model``: a model name plus an optional checkpoint -> an :class:`Adapter`.

Loading is strict: every key of the file must match the architecture of the name, and every
parameter of the architecture must be in the file. A file of another family or size is refused
with what it is ("this checkpoint has a SAM ViT encoder with 32 encoder blocks of width 1280:
it is sam_vit_h, not sam_vit_b").
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from samtune.errors import CheckpointError
from samtune.models.adapter import Adapter
from samtune.models.checkpoints import (
    describe_state_dict,
    fetch_checkpoint,
    guess_family,
    read_state_dict,
)
from samtune.models.registry import ModelSpec, get_spec, list_models
from samtune.models.sam import MobileSamAdapter, SamAdapter, build_sam
from samtune.models.sam2 import Sam2Adapter, build_sam2

_ADAPTERS: dict[str, type[Adapter]] = {
    "sam": SamAdapter, "mobile_sam": MobileSamAdapter, "sam2": Sam2Adapter,
}


def build_official(spec: ModelSpec) -> nn.Module:
    """The official module for ``spec`` with random weights, in eval mode."""
    module = build_sam2(spec) if spec.family == "sam2" else build_sam(spec)
    return module.eval()


def build_adapter(spec: ModelSpec, module: nn.Module | None = None) -> Adapter:
    return _ADAPTERS[spec.family](module if module is not None else build_official(spec), spec)


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Adapter:
    """Build ``name`` and load its weights.

    ``checkpoint``: ``None`` keeps the random init (the tiny variants, tests); ``"auto"`` takes
    the official file from the cache folder, downloading it when missing; a path loads that
    file (official ``.pth``/``.pt``, SAM 2 ``{"model": ...}``, DDP-prefixed, or safetensors).
    """
    spec = get_spec(name)
    adapter = build_adapter(spec)
    if checkpoint is not None:
        path = fetch_checkpoint(spec) if str(checkpoint) == "auto" else Path(checkpoint)
        apply_state_dict(adapter, read_state_dict(path), source=str(path))
    return adapter.to(device).eval()


def apply_state_dict(adapter: Adapter, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` into ``adapter.model`` or raise naming every mismatch."""
    expected = adapter.model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong_shape = [
        k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(_mismatch_message(adapter.spec, sd, source, missing, unexpected, wrong_shape))
    adapter.model.load_state_dict(sd, strict=True)


def _mismatch_message(spec, sd, source, missing, unexpected, wrong_shape) -> str:
    found = identify(sd)
    what = describe_state_dict(sd)
    if found is not None and found.name != spec.name:
        return f"{source}: this checkpoint has {what}: it is {found.name}, not {spec.name}"
    parts = [f"{source}: does not match {spec.name} (the file has {what})"]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            parts.append(f"{len(keys)} {label} keys: {', '.join(keys[:5])}{more}")
    return "; ".join(parts)


def identify(sd: dict[str, torch.Tensor]) -> ModelSpec | None:
    """The registered model whose parameter names and shapes equal the file's, if any.

    MedSAM has sam_vit_b's layout, so a MedSAM file identifies as ``sam_vit_b``.
    """
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    size = sum(v.numel() for v in sd.values())
    candidates = [s for s in list_models(family=guess_family(sd) or "none") if s.name != "medsam"]
    # Closest parameter count first: usually the first candidate built is the match.
    for spec in sorted(candidates, key=lambda s: abs(s.params - size)):
        if _shapes(spec.name) == shapes:
            return spec
    return None


@functools.lru_cache(maxsize=None)
def _shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a registered model (built only when a file fails to match)."""
    module = build_without_weights(get_spec(name))
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def build_without_weights(spec: ModelSpec) -> nn.Module:
    """The official module on the meta device (no memory, no init) where the family allows.

    TinyViT and Hiera call ``.item()`` while building, which meta tensors refuse; those are
    built on the CPU instead (seconds).
    """
    try:
        with torch.device("meta"):
            return build_official(spec)
    except Exception:  # noqa: BLE001 - hydra wraps the RuntimeError in its own type
        return build_official(spec)
