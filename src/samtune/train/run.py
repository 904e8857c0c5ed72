"""``train(config)``: a run folder, the data, the module and a Lightning Trainer, wired together.

What ``samtune train CONFIG`` does, as a function. The run folder::

    runs/<name>/
      config.yaml        resolved config, every default written out
      checkpoints/       step=N-val_iou=X.ckpt (best), last.ckpt, periodic; each with a
                         .safetensors of only the trained tensors and a .sha256 of both
                         beside it (:class:`~samtune.train.callbacks.RunCheckpointIO`);
                         best.ckpt links to the best one
      logs/              TensorBoard events and metrics.csv
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from samtune.config.loading import read_yaml, to_yaml
from samtune.config.train import RunConfig
from samtune.data.batch import Collator
from samtune.data.datamodule import SamDataModule
from samtune.data.mixing import open_dataset
from samtune.config.prompts import parse_prompt_kind
from samtune.data.prompts import PreviousLogitsStore
from samtune.errors import SamtuneError, SamtuneWarning
from samtune.files import check_writable, remove_leftovers, write_text
from samtune.models.checkpoints import samtune_home
from samtune.models.class_head import restore_categories
from samtune.notices import notify
from samtune.runs import load_checkpoint_file, remove_checkpoint_files, resume_candidates
from samtune.train.cache import EmbeddingCache, model_key, preprocess_key
from samtune.train.callbacks import (
    EmbeddingCacheFiller,
    LastCheckpoint,
    PreviousLogits,
    RunCheckpoint,
    RunCheckpointIO,
    logged_through,
    save_resumable,
)
from samtune.train.logs import RunCSVLogger, keep_rows_before, metrics_path
from samtune.train.module import FineTuneModule
from samtune.train.preflight import head_categories, preflight
from samtune.train.progress import StepProgressBar


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path | None
    base_metrics: dict[str, float] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    rank: int = 0
    """This process's rank: under DDP every process returns, and only rank 0 reports."""
    stopped_early: str | None = None
    """Why early stopping ended the run (what it watched, the best value); None otherwise."""
    last_step: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    """The best checkpoint's validation metrics (``final_metrics`` are the last weights')."""
    best_step: int | None = None
    """The best checkpoint's step; 0 when no validation beat the base model."""


def train(config: RunConfig, resume: bool = False) -> TrainResult:
    """Train as ``config`` says; with ``resume``, continue the run in ``config.run_dir``
    from its newest complete checkpoint (optimizer, scheduler, step, data order), or start
    it from step 0 when it was stopped before its first checkpoint."""
    run_dir = config.run_dir
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    for folder in (ckpt_dir, run_dir / "logs"):
        remove_leftovers(folder)
    start = resume_point(run_dir) if resume else None
    if not resume and ckpt_dir.is_dir() and any(ckpt_dir.glob("*.ckpt")):
        raise SamtuneError(f"{run_dir} already holds checkpoints: resume it with "
                           f"`samtune train --resume {run_dir}` or choose another name")
    L.seed_everything(config.seed, workers=True, verbose=False)
    train_data = open_dataset(config.data, "train")
    val_data = open_dataset(config.data, "val")
    if len(train_data) == 0:
        raise SamtuneError("the training data holds no images")
    train_summary, val_summary = preflight(train_data, val_data)
    has_val = val_summary.objects > 0
    categories = head_categories(train_data, train_summary) if config.model.class_head else None
    if categories is not None and start is not None:
        check_resumed_categories(start, categories)
    module = FineTuneModule(config, categories=categories).train()
    write_text(run_dir / "config.yaml", to_yaml(config))
    csv_file = metrics_path(run_dir)
    if start is None:  # a fresh history: rows of an attempt that saved nothing are redone
        csv_file.unlink(missing_ok=True)
    else:
        keep_rows_before(csv_file, checkpoint_step(start))
    t = config.train
    store = PreviousLogitsStore() if _uses_logits(config) else None
    extra: list[Callback] = [] if store is None else [PreviousLogits(store)]
    if _cache_enabled(config, module):
        check_writable(samtune_home() / "embeddings", "embedding cache folder ($SAMTUNE_HOME); "
                       "set SAMTUNE_HOME to a writable folder or train.cache_embeddings=off, and")
        cache = EmbeddingCache(samtune_home() / "embeddings", model_key(module.adapter),
                               preprocess_key(module.adapter),
                               dtype=getattr(torch, config.train.cache_dtype))
        extra.append(EmbeddingCacheFiller(cache, [train_data, val_data], t.batch_size,
                                          in_memory=t.cache_in_memory == "auto"))
    datamodule = SamDataModule(
        train_data, Collator.for_model(module.adapter), val=val_data if has_val else None,
        prompts=config.prompts, val_prompts=config.val_prompts, augment=config.augment,
        batch_size=t.batch_size, val_batch_size=t.val_batch_size, num_workers=t.num_workers,
        seed=config.seed, store=store, crop_size=_crop_size(config, module),
    )
    if start is not None:
        done = batches_done_in_epoch(start)
        if done < len(datamodule.train_dataloader()):  # else Lightning starts the next epoch
            datamodule.train_sampler.skip(done * t.batch_size)
    trainer = build_trainer(config, has_val=has_val, varying=module.step_varying_parameters,
                            extra=extra)
    base: dict[str, float] = {}
    with _quiet_lightning():
        if t.validate_before_training and has_val and start is None:
            base = _scalars(trainer.validate(module, datamodule=datamodule, verbose=False))
            if trainer.is_global_zero:
                write_text(run_dir / "base_metrics.yaml", to_yaml_dict(base))
            for cb in trainer.checkpoint_callbacks:
                if isinstance(cb, RunCheckpoint):
                    cb.start_from_base(trainer, base)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(start) if start else None)
        stopped = stop_reason(trainer)
        base = base or _read_base(run_dir)  # a resume validated the base in its first attempt
        save_resumable(trainer, last)  # at the step training ended on, whatever the intervals
        final: dict[str, float] = {}
        best_metrics: dict[str, float] = {}
        best_path, best_step = _best_path(trainer), None
        if has_val:  # the trained weights' score, whatever the validation interval
            final = _scalars(trainer.validate(module, datamodule=datamodule, verbose=False))
            if best_path is not None:
                best_metrics, best_step = _validate_best(trainer, module, datamodule, best_path,
                                                         final, base)
            if trainer.is_global_zero:
                write_text(run_dir / "final_metrics.yaml", final_metrics_yaml(
                    trainer.global_step, final, best_path, best_step, best_metrics))
    best = _link_best(trainer) if trainer.is_global_zero else None
    return TrainResult(run_dir, best, base, final, trainer.global_rank,
                       stopped, trainer.global_step, best_metrics, best_step)


def _best_path(trainer: L.Trainer) -> Path | None:
    """The monitored checkpoint callback's best file; None when there is none on disk."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_path:
            path = Path(cb.best_model_path)
            return path if path.is_file() else None
    return None


def _validate_best(trainer: L.Trainer, module: FineTuneModule, datamodule, best: Path,
                   last_metrics: dict[str, float], base: dict[str, float]
                   ) -> tuple[dict[str, float], int]:
    """The best checkpoint's metrics on the same validation as the last weights', and its
    step. The base (step 0; read back from ``base_metrics.yaml`` on a resume) and a best saved
    at the last step are already measured; any other is loaded into the module and validated
    (the run is over: the module may hold it) with the loggers off, so ``metrics.csv`` holds
    only the run's own validations."""
    state = load_checkpoint_file(best)
    step = int(state.get("global_step", -1))
    if step == 0 and base:
        return base, 0
    if step == trainer.global_step:
        return last_metrics, step
    module.load_state_dict(state["state_dict"])
    loggers, trainer.loggers = trainer.loggers, []
    try:
        return _scalars(trainer.validate(module, datamodule=datamodule, verbose=False)), step
    finally:
        trainer.loggers = loggers


def final_metrics_yaml(last_step: int, last: dict[str, float], best: Path | None,
                       best_step: int | None, best_metrics: dict[str, float]) -> str:
    """``final_metrics.yaml``: the weights the run ended with (``last``) and the best
    checkpoint's (``best``; step 0 is the base model), each with its step, validated alike."""
    import yaml

    out: dict = {"last": {"step": last_step, **{k: round(v, 6) for k, v in last.items()}}}
    if best is not None and best_step is not None:
        out["best"] = {"step": best_step, "checkpoint": best.name,
                       **{k: round(v, 6) for k, v in best_metrics.items()}}
    return yaml.safe_dump(out, sort_keys=False)


def resume_point(run_dir: Path) -> Path | None:
    """The checkpoint a resume starts from: the newest complete one (``last.ckpt`` unless a
    kill interrupted its save); None when the run stopped before saving any after a training
    step (it starts again from step 0: the base model's ``step=0`` checkpoint is no point in
    training, and the new start validates the base again and rewrites it)."""
    if not (run_dir / "config.yaml").is_file():
        raise SamtuneError(f"{run_dir}: not a run folder (no config.yaml)")
    ckpt_dir = run_dir / "checkpoints"
    found = resume_candidates(ckpt_dir) if ckpt_dir.is_dir() else []
    metrics_file = metrics_path(run_dir)
    while found:
        state = load_checkpoint_file(found[0])
        if logged_through(state, metrics_file):
            if int(state.get("global_step", 0)) > 0:
                return found[0]
            break
        stale = found.pop(0)  # its step is redone from an earlier one, row and all
        warnings.warn(f"{stale}: saved just before its step's row of {metrics_file.name}, "
                      "which the stop cut off; resuming from the checkpoint before it, so the "
                      "history stays whole", SamtuneWarning, stacklevel=2)
        remove_checkpoint_files(stale)
    damaged = sorted(p.name for p in ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if damaged and not found:
        raise SamtuneError(f"{ckpt_dir}: no complete checkpoint to resume from "
                           f"({', '.join(damaged)} damaged); remove the folder to train the "
                           "run again from step 0")
    warnings.warn(f"{run_dir}: no checkpoint of a training step yet (stopped before the "
                  "first save); training it from step 0", SamtuneWarning, stacklevel=2)
    return None


def check_resumed_categories(checkpoint: Path, categories: dict[int, str]) -> None:
    """Refuse to resume a class-head run whose training data now has other categories: the
    head's outputs are the categories it was built with."""
    saved = restore_categories((load_checkpoint_file(checkpoint).get("hyper_parameters") or {})
                               .get("categories"))
    if saved is not None and sorted(saved) != sorted(categories):
        raise SamtuneError(f"{checkpoint}: its class head has categories {sorted(saved)}, the "
                           f"training data now {sorted(categories)}: resume with the data it "
                           "was trained on, or train a new run")


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer steps a checkpoint had completed."""
    return int(load_checkpoint_file(checkpoint).get("global_step", 0))


def build_trainer(config: RunConfig, has_val: bool, varying: tuple[str, ...] = (),
                  extra: list[Callback] | None = None) -> L.Trainer:
    """The Trainer of a run: checkpoints through :class:`RunCheckpointIO`, logs, early
    stopping, ``last.ckpt`` at every validation and periodic save, the DDP strategy the
    run's prompts need, and the ``extra`` callbacks (cache filling, previous logits)."""
    t = config.train
    run_dir = config.run_dir
    ckpt_dir = run_dir / "checkpoints"
    metric = t.checkpoint.monitor
    callbacks: list[Callback] = [LearningRateMonitor(logging_interval="step"), *(extra or [])]
    if has_val:
        callbacks.append(RunCheckpoint(
            dirpath=ckpt_dir, filename=f"step={{step}}-{metric.replace('/', '_')}={{{metric}:.4f}}",
            auto_insert_metric_name=False, monitor=metric, mode=t.checkpoint.mode,
            save_top_k=t.checkpoint.save_top_k,
        ))
    if t.checkpoint.every_n_steps:
        callbacks.append(ModelCheckpoint(
            dirpath=ckpt_dir, filename="periodic-step={step}", auto_insert_metric_name=False,
            every_n_train_steps=t.checkpoint.every_n_steps, save_top_k=-1,
        ))
    if t.early_stopping is not None and has_val:
        e = t.early_stopping
        callbacks.append(EarlyStopping(monitor=e.monitor, mode=e.mode, patience=e.patience,
                                       min_delta=e.min_delta))
    callbacks.append(LastCheckpoint(ckpt_dir / "last.ckpt", metrics_path(run_dir),
                                    t.checkpoint.every_n_steps))
    if t.progress_bar:
        callbacks.append(StepProgressBar())
    loggers = [TensorBoardLogger(run_dir, name="logs", version=""), RunCSVLogger(run_dir)]
    by_steps = t.val_every_n_steps is not None
    return L.Trainer(
        default_root_dir=run_dir,
        max_steps=t.max_steps,
        max_epochs=t.max_epochs if t.max_epochs is not None else (-1 if t.max_steps > 0 else None),
        accumulate_grad_batches=t.accumulate_grad_batches,
        precision=resolve_precision(config),
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=resolve_strategy(t.strategy, varying),
        gradient_clip_val=t.optimizer.grad_clip,
        # Lightning counts this interval in batches; samtune's steps are optimizer steps
        val_check_interval=t.val_every_n_steps * t.accumulate_grad_batches if by_steps else None,
        check_val_every_n_epoch=None if by_steps else t.val_every_n_epochs,
        limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        logger=loggers,
        callbacks=callbacks,
        plugins=[RunCheckpointIO()],
        use_distributed_sampler=False,
        # metric states made in the first validate() must stay writable in later ones
        inference_mode=False,
    )


def resolve_precision(config: RunConfig) -> str:
    """``16-mixed`` on a CPU run becomes ``bf16-mixed`` (CPUs have no float16 autocast), said
    in one line rather than left to a warning among Lightning's start-up messages."""
    precision = config.train.precision
    if precision == "16-mixed" and _runs_on_cpu(config.train.accelerator):
        notify("precision 16-mixed: a CPU has no float16 autocast, so this run trains in "
               "bf16-mixed (set train.precision: bf16-mixed to say so, or 32)")
        return "bf16-mixed"
    return precision


def _runs_on_cpu(accelerator: str) -> bool:
    if accelerator == "cpu":
        return True
    mps = getattr(torch.backends, "mps", None)
    gpu = torch.cuda.is_available() or (mps is not None and mps.is_available())
    return accelerator == "auto" and not gpu


def stop_reason(trainer: L.Trainer) -> str | None:
    """Why early stopping ended the run, in its own words; None when it did not."""
    for cb in trainer.callbacks:
        if (isinstance(cb, EarlyStopping) and cb.stopping_reason != EarlyStoppingReason.NOT_STOPPED
                and cb.stopping_reason_message):
            return (f"early stopping ended the run at step {trainer.global_step}: "
                    f"{cb.stopping_reason_message.strip()}")
    return None


def resolve_strategy(strategy: str, varying: tuple[str, ...]) -> str | DDPStrategy:
    """``ddp`` as Lightning's DDP, looking for unused parameters only when the run has some
    that a step may leave without a gradient (``varying``, see
    :mod:`samtune.train.prompt_reach`): the search costs a pass over the autograd graph per
    step, and every other run reaches all its trainable parameters in every step."""
    if strategy != "ddp" or not varying:
        return strategy
    tensors = sorted({name.rsplit(".", 1)[0] for name in varying})
    notify(f"strategy ddp: {', '.join(tensors)} serve only some of the prompt kinds a step "
           "may draw, so DDP looks for parameters without a gradient in each step")
    return DDPStrategy(find_unused_parameters=True)


def batches_done_in_epoch(checkpoint: Path) -> int:
    """How many batches of its epoch a checkpoint had trained on.

    Lightning restores the step and the epoch but, for a plain DataLoader, restarts the
    epoch's data from its first batch; the sampler's order depends only on (seed, epoch), so
    skipping this many batches continues the epoch exactly where it stopped.
    """
    state = load_checkpoint_file(checkpoint)
    progress = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    return int(progress["processed"])


def _uses_logits(config: RunConfig) -> bool:
    return any(parse_prompt_kind(kind, "prompts.mix").mask == "logits" for kind in config.prompts.mix)


def _cache_enabled(config: RunConfig, module: FineTuneModule) -> bool:
    """The cache pays off when images reach the encoder unchanged every epoch."""
    if config.train.cache_embeddings == "off" or module.encoder_trainable:
        return False
    a = config.augment
    image_changes = (config.data.random_crop is not None or a.hflip or a.vflip or a.rotate90 or a.resized_crop is not None
                     or a.color_jitter is not None or config.data.composite is not None)
    return not image_changes


def _crop_size(config: RunConfig, module: FineTuneModule) -> int | None:
    """``data.random_crop`` in pixels: ``model`` is the model's input size."""
    crop = config.data.random_crop
    return module.adapter.image_size if crop == "model" else crop


def _link_best(trainer: L.Trainer) -> Path | None:
    best = _best_path(trainer)
    if best is None:
        return None
    link = best.parent / "best.ckpt"
    tmp = best.parent / ".best.ckpt.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(best.name, tmp)
    os.replace(tmp, link)
    return best


def _scalars(results: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in results:
        out.update({k: float(v) for k, v in r.items()})
    return out


def to_yaml_dict(values: dict[str, float]) -> str:
    import yaml

    return yaml.safe_dump({k: round(v, 6) for k, v in values.items()}, sort_keys=True)


def _read_base(run_dir: Path) -> dict[str, float]:
    path = run_dir / "base_metrics.yaml"
    return {k: float(v) for k, v in read_yaml(path).items()} if path.is_file() else {}


class _quiet_lightning:
    """Silence Lightning's tips about workers and logging intervals on tiny demo data."""

    def __enter__(self):
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        for pattern in (".*does not have many workers.*", ".*number of training batches.*",
                        ".*dataloader is not resumable.*", ".*LeafSpec.*",
                        ".*module\\(s\\) in eval mode.*", ".*Experiment logs directory.*",
                        ".*Checkpoint directory .* exists and is not empty.*",  # step=0, the base
                        # MaskMetrics.compute() has already reduced over the processes
                        ".*when logging on epoch level in distributed setting.*"):
            warnings.filterwarnings("ignore", message=pattern)
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
