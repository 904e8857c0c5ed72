"""``samtune export RUN``: a run's fine-tuned model as files the official code loads.

``RUN/export/`` (or ``--output``) receives:

- ``model.pth``: the whole model in the family's official format (a plain state dict for
  SAM, MedSAM and MobileSAM, ``{"model": state_dict}`` for SAM 2), LoRA merged, frozen parts
  included, floating tensors contiguous float32: ``sam_model_registry[...](checkpoint=)`` and
  ``build_sam2(config, ckpt)`` load it as they load Meta's files;
- ``trained.safetensors``: only what training changed (LoRA A/B un-merged, trained official
  tensors, batch-norm statistics that updated), with the base's name and checksum in its
  metadata: ``load_model(name, checkpoint=base, delta=...)`` rebuilds ``model.pth`` from it;
- ``manifest.json``: base model and checkpoint, base checksum, what was trained, the run's
  resolved config, the checkpoint exported with its step and validation metrics;
- ``class_head.safetensors`` (runs with ``model.class_head``): the category head, its ids
  and names in its metadata; ``load_model`` of the folder attaches it (the official code
  ignores it).

The run's checkpoints are Lightning files of the training module; the exporter rebuilds that
module exactly as training did (same freezing, same LoRA layers), loads the checkpoint into it
and reads the trained tensors off it, so the delta's names are the training names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from samtune import __version__
from samtune.config.train import RunConfig
from samtune.errors import CheckpointError, SamtuneError
from samtune.files import atomic_folder, write_json
from samtune.models.adapter import Adapter
from samtune.models.checkpoints import check_finite, sha256_of
from samtune.models.class_head import CLASS_HEAD_FILE, categories_json, save_class_head
from samtune.models.load import Delta, base_checksum, build_adapter
from samtune.models.lora import merge_lora
from samtune.models.registry import family_class, get_spec
from samtune.runs import (
    DELTA_FILE,
    EXPORT_DIR,
    MANIFEST_FILE,
    MODEL_FILE,
    checkpoint_config,
    checkpoint_metrics,
    load_training_state,
    read_training_checkpoint,
    resolve_checkpoint,
    run_config_of,
    saved_categories,
)
from samtune.train.module import GROUPS, FineTuneModule

MANIFEST_FORMAT = "samtune-export/1"


@dataclass
class Exported:
    """Where an export went and what it holds."""

    output: Path
    model: Path
    delta: Path
    manifest: Path
    delta_tensors: int
    delta_numel: int
    checkpoint: Path | None = None
    step: int | None = None


def restore_module(state: dict, source: Path, config: RunConfig | None = None) -> FineTuneModule:
    """The training module as ``state`` (from :func:`read_training_checkpoint`) saved it:
    the run's architecture, freezing and LoRA layers, with the checkpoint's weights. The
    base weights are not read (the checkpoint holds every tensor)."""
    if config is None:
        config = checkpoint_config(state, source)
    module = FineTuneModule(official_forwards(config),
                            adapter=build_adapter(get_spec(config.model.name)),
                            categories=saved_categories(state))
    load_training_state(module.adapter, state, source, config)
    return module.eval()


def official_forwards(config: RunConfig) -> RunConfig:
    """``config`` with the training speed options (fused attention, gradient checkpointing,
    compile) off: they swap forwards, never tensors, and a restored model must run the
    official code, as the official predictors will."""
    fast = {"fused_attention": False, "gradient_checkpointing": False, "compile": False}
    return config.model_copy(update={"train": config.train.model_copy(update=fast)})


# --- what training changed ----------------------------------------------------------------
def trained_groups(module: FineTuneModule) -> list[str]:
    """Groups whose official tensors trained (LoRA adapters aside)."""
    groups = module.adapter.parameter_groups()
    return [g for g in GROUPS if any(p.requires_grad and "lora_" not in n
                                     for n, p in groups[g].items())]


# --- writing ------------------------------------------------------------------------------
def official_state_dict(adapter: Adapter) -> dict[str, torch.Tensor]:
    """The official module's state dict as Meta ships it: floating tensors float32, every
    tensor a contiguous CPU copy of its own (no shared storage in the file)."""
    out = {}
    for k, v in adapter.model.state_dict().items():
        v = v.detach().to("cpu")
        out[k] = (v.float() if v.is_floating_point() else v).contiguous().clone()
    return out


def export_model(
    adapter: Adapter,
    output: str | Path,
    trained: dict[str, torch.Tensor] | None = None,
    *,
    lora: dict | None = None,
    base_checkpoint: str | None = None,
    base_seed: int | None = None,
    info: dict | None = None,
) -> Exported:
    """Write ``model.pth``, ``trained.safetensors`` and ``manifest.json`` for ``adapter``.

    ``trained``: the tensors training changed (un-merged names; empty for a plain model).
    ``lora``: the LoRA settings (targets, rank, alpha, dropout) when ``adapter`` holds LoRA
    layers; they are merged in place. ``base_checkpoint``/``base_seed`` say which base the
    delta applies to. ``info`` joins the manifest, with the sha256 of each file. The files are
    written into a new folder that then replaces ``output`` whole
    (:func:`samtune.files.atomic_folder`): never a new model beside an old delta.
    """
    from safetensors.torch import save_file

    output = Path(output)
    trained = dict(trained or {})
    spec = adapter.spec
    checksum = base_checksum(adapter.model.state_dict(), trained)
    delta = Delta({k: v.detach().to("cpu").contiguous().clone() for k, v in trained.items()},
                  spec.name, checksum, base_checkpoint, base_seed, lora)
    check_finite(delta.tensors, "the trained tensors")
    merge_lora(adapter.model)
    state = official_state_dict(adapter)
    if output.is_dir() and any(output.iterdir()) and not (output / MANIFEST_FILE).is_file():
        raise SamtuneError(f"{output}: holds files that are not a samtune export, and an export "
                           "replaces its whole folder; choose a new or empty --output folder")
    paths = Exported(output, output / MODEL_FILE, output / DELTA_FILE, output / MANIFEST_FILE,
                     len(delta.tensors), sum(t.numel() for t in delta.tensors.values()))
    files = [MODEL_FILE, DELTA_FILE]
    with atomic_folder(output) as staging:
        torch.save(type(adapter).official_checkpoint(state), staging / MODEL_FILE)
        save_file(delta.tensors, str(staging / DELTA_FILE), metadata=delta.metadata())
        manifest = _manifest(spec, checksum, base_checkpoint, base_seed, lora, paths, info)
        if adapter.class_head is not None:
            save_class_head(adapter.class_head, staging / CLASS_HEAD_FILE)
            files.append(CLASS_HEAD_FILE)
            manifest["files"]["class_head"] = CLASS_HEAD_FILE
            manifest["categories"] = categories_json(adapter.class_head.categories)
        manifest["sha256"] = {name: sha256_of(staging / name) for name in files}
        write_json(staging / MANIFEST_FILE, manifest)
    return paths


def _manifest(spec, checksum: str, base_checkpoint, base_seed, lora, paths: Exported,
              info: dict | None) -> dict:
    """What ``manifest.json`` says: the base, what trained, how the official code loads it."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "samtune_version": __version__,
        "model": spec.name,
        "family": spec.family,
        "files": {"model": MODEL_FILE, "delta": DELTA_FILE},
        "base": {
            "model": spec.name,
            "checkpoint": base_checkpoint,
            "official_file": spec.filename if base_checkpoint == "auto" else None,
            "random_init_seed": base_seed if base_checkpoint is None else None,
            "checksum": f"sha256:{checksum}",
            "checksum_covers": "base tensors the delta does not replace (name, dtype, shape, bytes)",
        },
        "trained": {"tensors": paths.delta_tensors, "elements": paths.delta_numel, "lora": lora},
        "official_loader": official_loader(spec.name, MODEL_FILE),
    }
    for key, value in (info or {}).items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key].update(value)
        else:
            manifest[key] = value
    return manifest


def official_loader(name: str, path: str) -> str:
    """The line of official code that loads an exported ``model.pth``."""
    spec = get_spec(name)
    if spec.tiny:
        return "tiny variant: samtune.load_model(path); official classes with samtune's tiny widths"
    return family_class(spec.family).official_loader(spec, path)


def export_run(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    output: str | Path | None = None,
) -> Exported:
    """Export a run's checkpoint (``best``, ``last``, a path; default best, else last) to
    ``output`` (default ``RUN/export``)."""
    run_dir = Path(run_dir)
    config = run_config_of(run_dir)
    path = resolve_checkpoint(run_dir, checkpoint)
    state = read_training_checkpoint(path)
    if state is None:
        raise CheckpointError(f"{path}: not a samtune training checkpoint")
    module = restore_module(state, path)
    trained = module.trainable_state()
    lora = module.config.model.lora
    model_cfg = config.model
    info = {
        "trained": {"groups": trained_groups(module)},
        "checkpoint": {"path": str(path), "file": path.resolve().name,
                       "step": int(state.get("global_step", 0)),
                       "val_metrics": checkpoint_metrics(run_dir, path, state)},
        "config": config.model_dump(mode="json"),
    }
    result = export_model(
        module.adapter, Path(output) if output is not None else run_dir / EXPORT_DIR, trained,
        lora=lora.model_dump(mode="json") if lora is not None else None,
        base_checkpoint=None if model_cfg.checkpoint is None else str(model_cfg.checkpoint),
        base_seed=config.seed if model_cfg.checkpoint is None else None, info=info,
    )
    result.checkpoint, result.step = path, int(state.get("global_step", 0))
    return result
