"""``load_weights``: a model name or weights file -> an :class:`Adapter`.

Loading is strict: every key of the file must match the architecture of the name, and every
parameter of the architecture must be in the file. A file of another family or size is refused
with what it is ("this checkpoint has a SAM ViT encoder with 32 encoder blocks of width 1280:
it is sam_vit_h, not sam_vit_b").

A *delta* (``export/trained.safetensors``) holds only the tensors fine-tuning changed, LoRA
adapters un-merged, and a checksum of the base tensors it was trained on; loading one onto a
base checks that checksum first, so a delta never lands silently on the wrong base.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from samtune.devices import check_device
from samtune.errors import CheckpointError, SamtuneError
from samtune.models.adapter import Adapter
from samtune.models.checkpoints import (
    describe_state_dict,
    fetch_checkpoint,
    families_of,
    read_state_dict,
    tensor_checksum,
)
from samtune.models.hf import (
    SAM2_MEMORY_PREFIXES,
    image_path_only,
    is_hf_folder,
)
from samtune.models.lora import add_lora, is_lora_tensor, merge_lora, official_name
from samtune.models.registry import (
    ModelSpec,
    UnknownModelError,
    family_class,
    get_spec,
    list_models,
)

#: Suffixes that make an unknown name read as a file the user meant.
_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")


def build_official(spec: ModelSpec) -> nn.Module:
    """The official module for ``spec`` with random weights, in eval mode."""
    return family_class(spec.family).build(spec).eval()


def build_adapter(spec: ModelSpec, module: nn.Module | None = None) -> Adapter:
    return family_class(spec.family)(module if module is not None else build_official(spec), spec)


def load_weights(
    name_or_path: str | Path,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    delta: str | Path | None = None,
) -> Adapter:
    """A model name or weights file -> an :class:`Adapter` with those weights.

    ``name_or_path`` is a model name (``samtune models``) or a weights file whose
    architecture identifies the model (:func:`identify`). With a name, ``checkpoint``:
    ``None`` keeps the random init (the tiny variants, tests); ``"auto"`` takes the official
    file from the cache folder, downloading it when missing; a path loads that file (official
    ``.pth``/``.pt``, SAM 2 ``{"model": ...}``, DDP-prefixed, safetensors).

    ``delta``: a ``trained.safetensors`` from ``samtune export``, applied on top of the base
    (``checkpoint=None`` means the base the delta records). The base must be the one the
    delta was trained from, else :class:`CheckpointError`.

    Run folders and training checkpoints (LoRA un-merged, the run config inside) are the run
    folder's business: :func:`samtune.load_model` reads those and everything this reads.
    """
    device = check_device(device)
    target = str(name_or_path)
    spec = _known_name(target)
    if spec is not None:
        adapter = (load_delta(spec, checkpoint, Path(delta)) if delta is not None
                   else _load_named(spec, checkpoint))
    else:
        adapter = _load_path(Path(target), checkpoint, delta)
    return adapter.to(device).eval()


def seeded(seed: int | None, build: Callable[[], Adapter]) -> Adapter:
    """``build()`` with its random init drawn under ``torch.manual_seed(seed)`` (``None``:
    the global random state). The global random state is left as it was, so the same seed
    always rebuilds the same model."""
    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def load_base_model(
    name: str,
    checkpoint: str | Path | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> Adapter:
    """``load_weights(name, checkpoint)`` with its random init (everything, for the tiny
    variants; nothing once a checkpoint is loaded) drawn under ``torch.manual_seed(seed)``:
    the base a delta records."""
    return seeded(seed, lambda: load_weights(name, checkpoint, device))


def _known_name(target: str) -> ModelSpec | None:
    try:
        return get_spec(target)
    except UnknownModelError:
        return None


def _load_named(spec: ModelSpec, checkpoint: str | Path | None) -> Adapter:
    if checkpoint is None:
        return build_adapter(spec)
    path = fetch_checkpoint(spec) if str(checkpoint) == "auto" else Path(checkpoint)
    adapter = build_adapter(spec)
    apply_state_dict(adapter, read_state_dict(path), source=str(path))
    return adapter


def _load_path(path: Path, checkpoint, delta) -> Adapter:
    """A weights file given in place of a name."""
    if not path.exists():
        if len(path.parts) > 1 or path.suffix in _FILE_SUFFIXES:
            raise SamtuneError(f"{path}: no such run folder or checkpoint file")
        get_spec(str(path))  # raises the unknown-name error, with close matches
    if checkpoint is not None:
        raise SamtuneError(f"{path} is a run folder or checkpoint file itself; checkpoint= goes "
                           "only with a model name")
    if path.is_dir() and not is_hf_folder(path):
        raise SamtuneError(f"{path} is a folder: samtune.load_model reads run folders; "
                           "load_weights takes a model name, a weights file or a transformers "
                           "folder")
    sd = read_state_dict(path)
    spec = identify(sd)
    if spec is None:
        raise CheckpointError(f"{path}: cannot tell which model this is (it has "
                              f"{describe_state_dict(sd)}); pass its name: "
                              f"load_model(NAME, checkpoint='{path}')")
    if delta is not None:
        return load_delta(spec, path, Path(delta))
    adapter = build_adapter(spec)
    apply_state_dict(adapter, sd, source=str(path))
    return adapter


# --- deltas -------------------------------------------------------------------------------
#: ``format`` in a delta's safetensors metadata.
DELTA_FORMAT = "samtune-delta/1"


@dataclass
class Delta:
    """The tensors fine-tuning changed (names of the un-merged module: LoRA ``lora_A``/
    ``lora_B`` as trained, other tensors under their official names) and the base they
    apply to. Everything but the tensors is kept in the safetensors metadata, so the file
    alone is enough."""

    tensors: dict[str, torch.Tensor]
    base_model: str
    base_checksum: str
    base_checkpoint: str | None = None
    base_seed: int | None = None
    lora: dict | None = None

    def metadata(self) -> dict[str, str]:
        """The safetensors metadata (string values only)."""
        meta = {"format": DELTA_FORMAT, "base_model": self.base_model,
                "base_checksum": self.base_checksum}
        if self.base_checkpoint is not None:
            meta["base_checkpoint"] = self.base_checkpoint
        if self.base_seed is not None:
            meta["base_seed"] = str(self.base_seed)
        if self.lora is not None:
            meta["lora"] = json.dumps(self.lora, sort_keys=True)
        return meta


def read_delta(path: Path) -> Delta:
    """A delta file written by ``samtune export``; CheckpointError for anything else."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: no such delta file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != DELTA_FORMAT:
        raise CheckpointError(f"{path}: not a samtune delta (no '{DELTA_FORMAT}' metadata); "
                              "deltas are the trained.safetensors that `samtune export` writes")
    return Delta(
        tensors, meta["base_model"], meta["base_checksum"], meta.get("base_checkpoint"),
        int(meta["base_seed"]) if "base_seed" in meta else None,
        json.loads(meta["lora"]) if "lora" in meta else None,
    )


def base_checksum(state_dict: dict[str, torch.Tensor], delta_names) -> str:
    """:func:`tensor_checksum` of the base tensors a delta with ``delta_names`` leaves as
    they are. ``state_dict`` may be official or LoRA-wrapped (names are mapped to official
    ones, LoRA tensors skipped), so the export's un-merged model and a freshly loaded base
    give the same value exactly when they share those tensors."""
    replaced = {official_name(n) for n in delta_names if not is_lora_tensor(n)}
    base = {official_name(k): v for k, v in state_dict.items() if not is_lora_tensor(k)}
    return tensor_checksum({k: v for k, v in base.items() if k not in replaced})


def load_delta(spec: ModelSpec, checkpoint: str | Path | None, path: Path) -> Adapter:
    """The base ``spec`` + ``checkpoint`` with the delta at ``path`` applied (LoRA merged)."""
    delta = read_delta(path)
    if delta.base_model != spec.name:
        raise CheckpointError(f"{path}: a delta for {delta.base_model}, not {spec.name}; "
                              f"load it with load_model('{delta.base_model}', ..., delta=...)")
    if checkpoint is None:
        checkpoint = delta.base_checkpoint
    seed = delta.base_seed if checkpoint is None else None
    adapter = load_base_model(spec.name, checkpoint, seed=seed)
    found = base_checksum(adapter.model.state_dict(), delta.tensors)
    if found != delta.base_checksum:
        used = f"checkpoint {checkpoint}" if checkpoint is not None else "random init"
        recorded = (f"checkpoint {delta.base_checkpoint}" if delta.base_checkpoint is not None
                    else f"random init, seed {delta.base_seed}")
        raise CheckpointError(
            f"{path}: trained on another base: expected base tensors sha256 "
            f"{delta.base_checksum[:16]}... ({spec.name}, {recorded}), found {found[:16]}... "
            f"({used}); pass checkpoint= the base the run started from (manifest.json: base)"
        )
    apply_delta(adapter, delta, str(path))
    return adapter


def apply_delta(adapter: Adapter, delta: Delta, source: str) -> None:
    """Put the delta's tensors into ``adapter`` (LoRA injected first, then merged)."""
    if delta.lora is not None:
        lora = delta.lora
        add_lora(adapter, list(lora["targets"]), int(lora["rank"]), float(lora["alpha"]), 0.0)
    expected = adapter.model.state_dict()
    unexpected = [k for k in delta.tensors if k not in expected]
    wrong = [k for k, v in delta.tensors.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if unexpected or wrong:
        bad = (unexpected or wrong)[:5]
        raise CheckpointError(f"{source}: {len(unexpected)} tensors {adapter.spec.name} does not "
                              f"have and {len(wrong)} of another shape ({', '.join(bad)})")
    adapter.model.load_state_dict(delta.tensors, strict=False)
    merge_lora(adapter.model)
    adapter.requires_grad_(True)  # as a freshly built model; peft froze the wrapped layers


def apply_state_dict(adapter: Adapter, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` into ``adapter.model`` or raise naming every mismatch."""
    expected = adapter.model.state_dict()
    sd = type(adapter).complete_state_dict(expected, sd, source)
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

    MedSAM has sam_vit_b's layout, so a MedSAM file identifies as ``sam_vit_b``. A SAM 2
    file without the memory modules (transformers' ``Sam2Model``) is matched on its image path,
    which SAM 2 and 2.1 share: it identifies as the 2.1 model.
    """
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    size = sum(v.numel() for v in sd.values())
    candidates = [s for family in families_of(sd) for s in list_models(family=family)
                  if s.name != "medsam"]
    partial = image_path_only(sd)
    if partial:
        candidates = [s for s in candidates if not s.name.startswith("sam2_hiera")]
    # Closest parameter count first: usually the first candidate built is the match.
    for spec in sorted(candidates, key=lambda s: abs(s.params - size)):
        expected = _shapes(spec.name)
        if partial:
            expected = {k: v for k, v in expected.items() if not k.startswith(SAM2_MEMORY_PREFIXES)}
        if expected == shapes:
            return spec
    return None


@functools.cache
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
