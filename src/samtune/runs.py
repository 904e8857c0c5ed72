"""The run folder, below training and inference: what a run wrote and how to read it back.

``samtune train`` writes a run folder; ``samtune eval``, ``samtune predict``, ``samtune
export`` and :func:`load_model` read it. Everything they need to know about its layout lives
here::

    runs/<name>/
      config.yaml          the resolved config (:func:`load_run_config`)
      base_metrics.yaml    validation of the base model before training
      final_metrics.yaml   validation of the trained weights
      checkpoints/         best.ckpt (a link), last.ckpt, step=N-val_iou=X.ckpt, periodic ones
      export/              model.pth, trained.safetensors, manifest.json (``samtune export``)

A training checkpoint is a Lightning file of the training module: its ``state_dict`` holds
the adapter's tensors under ``adapter.`` (LoRA layers un-merged) and its hyper-parameters
hold the run config, so it is enough to rebuild the model without the training code.

Each ``X.ckpt`` has ``X.safetensors`` (only the trained tensors, official names) and
``X.sha256`` beside it, in ``sha256sum`` format (``sha256sum -c X.sha256`` checks it by hand),
covering both. The sidecar is written after both files, so a checkpoint is *complete* when its
sidecar matches it: a kill between the writes leaves a checkpoint whose sidecar is missing or
stale, which a resume skips (:func:`resume_candidates`) and an explicit load refuses with the
file named. An export's ``manifest.json`` holds the sha256 of its files the same way
(:func:`verify_export`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from samtune.config.loading import read_yaml, validate
from samtune.config.train import RunConfig
from samtune.errors import CheckpointError, SamtuneError, SamtuneWarning
from samtune.files import is_temporary, write_text
from samtune.models.adapter import Adapter
from samtune.models.checkpoints import check_finite, load_tensors_file, sha256_of
from samtune.models.class_head import (
    CLASS_HEAD_FILE,
    attach_class_head,
    load_class_head,
    restore_categories,
)
from samtune.models.hf import is_hf_folder
from samtune.models.load import build_adapter, load_weights, seeded
from samtune.models.lora import add_lora, merge_lora
from samtune.models.registry import ModelSpec, UnknownModelError, get_spec

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
EXPORT_DIR = "export"
MODEL_FILE = "model.pth"
DELTA_FILE = "trained.safetensors"
MANIFEST_FILE = "manifest.json"
BASE_METRICS_FILE = "base_metrics.yaml"
FINAL_METRICS_FILE = "final_metrics.yaml"
#: where the training module keeps the adapter in its state dict
MODULE_PREFIX = "adapter."
SIDECAR_SUFFIX = ".sha256"


# --- the config -----------------------------------------------------------------------------
def load_run_config(run_dir: str | Path) -> RunConfig:
    """``RUN/config.yaml``, validated (every default was written out by ``samtune train``)."""
    path = Path(run_dir) / CONFIG_FILE
    return validate(RunConfig, read_yaml(path), str(path))


def run_config_of(run_dir: Path) -> RunConfig:
    """The run's config.yaml; a one-line SamtuneError when ``run_dir`` is not a run folder."""
    if not run_dir.is_dir():
        raise SamtuneError(f"{run_dir}: no such run folder")
    if not (run_dir / CONFIG_FILE).is_file():
        raise SamtuneError(f"{run_dir}: not a run folder (no {CONFIG_FILE}); give the folder "
                           "`samtune train` made, runs/<name>")
    return load_run_config(run_dir)


def config_of(path: Path) -> RunConfig | None:
    """The run config behind a run folder or a samtune training checkpoint, else None."""
    if path.is_dir():
        return run_config_of(path)
    if path.suffix == ".ckpt":
        state = read_training_checkpoint(path)
        if state is not None:
            return checkpoint_config(state, path)
    return None


# --- checkpoints ----------------------------------------------------------------------------
def resolve_checkpoint(run_dir: Path, which: str | Path | None = None) -> Path:
    """``best`` or ``last`` (in ``RUN/checkpoints``) or a path; ``None``: best, else last
    (a run without validation data keeps no best)."""
    ckpts = run_dir / CHECKPOINTS
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
    hyper-parameters), checked against its sidecar and loaded without unpickling objects;
    None for other files."""
    state = load_checkpoint_file(path)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        return None
    config = (state.get("hyper_parameters") or {}).get("config")
    return state if isinstance(config, dict) else None


def checkpoint_config(state: dict, source: Path) -> RunConfig:
    """The run config a training checkpoint carries."""
    return validate(RunConfig, state["hyper_parameters"]["config"], str(source))


def load_training_state(adapter: Adapter, state: dict, source: Path, config: RunConfig) -> None:
    """Put a training checkpoint's tensors into ``adapter`` (built with the run's LoRA layers,
    not merged), strictly: a missing or unexpected tensor names the run config it fails."""
    expected = adapter.state_dict()
    check_finite(state["state_dict"], source)
    sd = {k[len(MODULE_PREFIX):]: v for k, v in state["state_dict"].items()
          if k.startswith(MODULE_PREFIX)}
    foreign = [k for k in state["state_dict"] if not k.startswith(MODULE_PREFIX)]
    missing = [k for k in expected if k not in sd]
    unexpected = [MODULE_PREFIX + k for k in sd if k not in expected] + foreign
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: does not match its run config ({config.model.name}, lora "
            f"{'on' if config.model.lora else 'off'}): {len(missing)} missing keys, "
            f"{len(unexpected)} unexpected ({', '.join((missing + unexpected)[:3])})")
    adapter.load_state_dict(sd, strict=True)


def saved_categories(state: dict) -> dict[int, str] | None:
    """The class head's categories a training checkpoint records; None without a head."""
    return restore_categories((state.get("hyper_parameters") or {}).get("categories"))


def attach_saved_head(adapter: Adapter, state: dict) -> None:
    """Give ``adapter`` the (untrained) class head a training checkpoint has, if it has one,
    so that the checkpoint's tensors load strictly."""
    categories = saved_categories(state)
    if categories is not None:
        attach_class_head(adapter, categories)


def restore_adapter(state: dict, source: Path, expect: str | None = None) -> Adapter:
    """The fine-tuned model of a training checkpoint, LoRA merged, as a plain adapter that
    runs the official forwards (the base weights are not read: the checkpoint holds every
    tensor)."""
    config = checkpoint_config(state, source)
    if expect is not None and config.model.name != expect:
        raise CheckpointError(f"{source}: a checkpoint of {config.model.name}, not {expect}")
    adapter = build_adapter(get_spec(config.model.name))
    lora = config.model.lora
    if lora is not None:
        add_lora(adapter, list(lora.targets), lora.rank, lora.alpha, lora.dropout)
    attach_saved_head(adapter, state)
    load_training_state(adapter, state, source, config)
    merge_lora(adapter.model)
    adapter.requires_grad_(True)  # as load_model builds every model
    return adapter.eval()


def _metrics_of(entry: dict) -> dict[str, float]:
    return {k: float(v) for k, v in entry.items() if k.startswith("val/")}


def checkpoint_metrics(run_dir: Path, path: Path, state: dict) -> dict[str, float]:
    """Validation metrics of a checkpoint's weights, where the run recorded them:
    ``final_metrics.yaml`` for ``last.ckpt`` (validated right after it was written) and for
    the best checkpoint it names; for another ``step=N-val_iou=X.ckpt`` the score its callback
    saved it for. Empty when unknown."""
    final = run_dir / FINAL_METRICS_FILE
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


# --- checkpoint files and their sidecars ----------------------------------------------------
def sidecar_of(path: Path) -> Path:
    """``X.sha256`` for ``X.ckpt`` or ``X.safetensors``."""
    return path.with_suffix(SIDECAR_SUFFIX)


def companions(checkpoint: Path) -> list[Path]:
    """The files one checkpoint consists of: the ``.ckpt`` and its trained-tensor file."""
    return [checkpoint, checkpoint.with_suffix(".safetensors")]


def write_checksums(checkpoint: Path) -> Path:
    """Write ``X.sha256`` for the files of ``checkpoint`` that exist (after they are written)."""
    lines = [f"{sha256_of(p)}  {p.name}\n" for p in companions(checkpoint) if p.is_file()]
    return write_text(sidecar_of(checkpoint), "".join(lines))


def read_checksums(sidecar: Path) -> dict[str, str]:
    """``{file name: sha256}`` from a sidecar; lines that do not parse are ignored."""
    out = {}
    for line in sidecar.read_text(encoding="utf-8", errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name:
            out[name.strip()] = digest
    return out


def verify_file(path: Path) -> bool | None:
    """True when ``path`` matches its sidecar, False when it does not (damaged, changed, or
    written after its sidecar by an interrupted save), None when there is no sidecar to check."""
    sidecar = sidecar_of(path)
    if not sidecar.is_file():
        return None
    expected = read_checksums(sidecar).get(path.name)
    return expected is not None and sha256_of(path) == expected


def check_file(path: Path) -> None:
    """Raise a one-line CheckpointError when ``path`` does not match its sidecar."""
    if verify_file(path) is False:
        raise CheckpointError(
            f"{path}: damaged or changed: its sha256 does not match {sidecar_of(path).name} "
            "beside it. Use another checkpoint of the run (e.g. --checkpoint last), or "
            "re-train; if you changed the file on purpose, delete the .sha256 file")


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, checked against its sidecar and loaded without unpickling
    objects; any file that is not a whole, tensor-only checkpoint is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    check_file(path)
    state = load_tensors_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(state).__name__})")
    return state


def remove_checkpoint_files(checkpoint: Path) -> None:
    for p in [*companions(checkpoint), sidecar_of(checkpoint)]:
        p.unlink(missing_ok=True)


def resume_candidates(ckpt_dir: Path) -> list[Path]:
    """The run's ``.ckpt`` files a resume may start from, newest first: complete ones (the
    sidecar matches), and ones without a sidecar (written by an older samtune) that load.
    Damaged or half-saved ones are skipped with a warning naming them."""
    files = [p for p in ckpt_dir.glob("*.ckpt")
             if p.is_file() and not p.is_symlink() and not is_temporary(p)]
    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)
    out = []
    for path in files:
        ok = verify_file(path)
        if ok is None:
            try:
                load_checkpoint_file(path)
                ok = True
            except CheckpointError:
                ok = False
        if ok:
            out.append(path)
        else:
            warnings.warn(f"{path}: incomplete or damaged (interrupted save?); not resuming "
                          "from it", SamtuneWarning, stacklevel=2)
    return out


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


# --- models of a run ------------------------------------------------------------------------
def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Adapter:
    """A run's fine-tuned model: ``export/model.pth`` when present, else the best
    checkpoint, else the last one (what ``load_model(run_dir)`` returns). An export folder
    itself (``manifest.json`` beside ``model.pth``) loads its ``model.pth``."""
    run_dir = Path(run_dir)
    manifest = run_dir / MANIFEST_FILE
    if not (run_dir / CONFIG_FILE).is_file() and manifest.is_file():
        verify_export(run_dir)
        name = json.loads(manifest.read_text(encoding="utf-8")).get("model")
        return _with_head(load_weights(name, checkpoint=run_dir / MODEL_FILE), run_dir).to(device)
    config = run_config_of(run_dir)
    exported = run_dir / EXPORT_DIR / MODEL_FILE
    if exported.is_file():  # verified by its manifest; one put there by hand has none
        if (run_dir / EXPORT_DIR / MANIFEST_FILE).is_file():
            verify_export(run_dir / EXPORT_DIR)
        adapter = load_weights(config.model.name, checkpoint=exported)
        return _with_head(adapter, run_dir / EXPORT_DIR).to(device)
    path = resolve_checkpoint(run_dir)
    state = read_training_checkpoint(path)
    if state is None:
        raise CheckpointError(f"{path}: not a samtune training checkpoint")
    return restore_adapter(state, path).to(device)


def _with_head(adapter: Adapter, folder: Path) -> Adapter:
    """``adapter`` with the class head an export folder holds beside its ``model.pth``."""
    if (folder / CLASS_HEAD_FILE).is_file():
        load_class_head(adapter, folder / CLASS_HEAD_FILE)
    return adapter.eval()


def base_model(run: str | Path | RunConfig, device: str | torch.device = "cpu") -> Adapter:
    """The model a run starts from: ``load_model(name, checkpoint)`` of its config (a base
    checkpoint may be another run's training checkpoint) with its random init (everything,
    for the tiny variants; nothing once a checkpoint is loaded) drawn under the run's seed.
    The global random state is left as it was, so the same run always rebuilds the same base,
    before training or long after it."""
    config = run if isinstance(run, RunConfig) else run_config_of(Path(run))
    m = config.model
    return seeded(config.seed, lambda: load_model(m.name, m.checkpoint, device))


def load_model(
    name_or_path: str | Path,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    delta: str | Path | None = None,
) -> Adapter:
    """Build a model and load its weights.

    ``name_or_path`` is one of:

    - a model name (``samtune models``). ``checkpoint``: ``None`` keeps the random init (the
      tiny variants, tests); ``"auto"`` takes the official file from the cache folder,
      downloading it when missing; a path loads that file (official ``.pth``/``.pt``, SAM 2
      ``{"model": ...}``, DDP-prefixed, safetensors, or a samtune training checkpoint);
    - a run folder: its ``export/model.pth`` when present, else ``checkpoints/best.ckpt``,
      else ``checkpoints/last.ckpt`` (LoRA merged); the name comes from its config;
    - a transformers folder (``config.json`` + ``model.safetensors``, ``samtune export
      --format hf``), read by :func:`~samtune.models.load.load_weights`;
    - a checkpoint file: a samtune training checkpoint (``.ckpt``, LoRA merged) or a weights
      file whose architecture identifies the model (:func:`samtune.models.load.identify`).

    ``delta``: a ``trained.safetensors`` from ``samtune export``, applied on top of the base
    (the name or weights file, with ``checkpoint``; ``checkpoint=None`` means the base the
    delta records). The base must be the one the delta was trained from, else
    :class:`CheckpointError`.
    """
    target = Path(name_or_path)
    if delta is None:
        if checkpoint is not None:
            spec = _known_name(str(name_or_path))
            training = _training_checkpoint(checkpoint) if spec is not None else None
            if training is not None:
                return restore_adapter(training, Path(checkpoint), expect=spec.name).to(device)
        else:
            training = _training_checkpoint(target)
            if training is not None:
                return restore_adapter(training, target).to(device)
            if target.is_dir() and not is_hf_folder(target):
                return load_run(target, device)
    elif target.is_dir():
        raise SamtuneError(f"{target}: delta= goes with a model name or a base weights file, "
                           "not a run folder")
    return load_weights(name_or_path, checkpoint, device, delta)


def _known_name(name: str) -> ModelSpec | None:
    try:
        return get_spec(name)
    except UnknownModelError:
        return None


def _training_checkpoint(path: str | Path) -> dict | None:
    """The state of a samtune training checkpoint at ``path``; None for anything else (a
    name, ``auto``, a weights file, a folder)."""
    path = Path(path)
    if path.suffix != ".ckpt" or not path.is_file():
        return None
    return read_training_checkpoint(path)
