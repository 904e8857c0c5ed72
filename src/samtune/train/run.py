"""``train(config)``: a run folder, the data, the module and a Lightning Trainer, wired together.

What ``samtune train CONFIG`` does, as a function. The run folder::

    runs/<name>/
      config.yaml        resolved config, every default written out
      checkpoints/       step=N-val_iou=X.ckpt (best), last.ckpt, periodic; each with a
                         .safetensors of only the trained tensors beside it; best.ckpt links
                         to the best one
      logs/              TensorBoard events and metrics.csv
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    Checkpoint,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from tqdm.auto import tqdm

from samtune.config.loading import read_yaml, to_yaml
from samtune.config.train import RunConfig
from samtune.data.batch import Collator, image_key
from samtune.data.datamodule import SamDataModule
from samtune.data.mixing import open_dataset
from samtune.data.prompts import PreviousLogitsStore, parse_prompt_kind
from samtune.errors import SamtuneError, SamtuneWarning
from samtune.files import atomic_path, check_writable, remove_leftovers, write_text
from samtune.models.checkpoints import samtune_home
from samtune.notices import notify
from samtune.train.cache import EmbeddingCache, model_key, preprocess_key
from samtune.runs import load_checkpoint_file, resume_candidates, write_checksums
from samtune.train.checkpoint_files import AtomicCheckpointIO
from samtune.train.logs import METRICS_FILE, RunCSVLogger, keep_rows_before
from samtune.train.module import FineTuneModule
from samtune.train.preflight import preflight
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
    _, val_summary = preflight(train_data, val_data)
    has_val = val_summary.objects > 0
    module = FineTuneModule(config).train()
    write_text(run_dir / "config.yaml", to_yaml(config))
    csv_file = run_dir / "logs" / METRICS_FILE
    if start is None:  # a fresh history: rows of an attempt that saved nothing are redone
        csv_file.unlink(missing_ok=True)
    else:
        keep_rows_before(csv_file, checkpoint_step(start))
    store = PreviousLogitsStore() if _uses_logits(config) else None
    module.store = store
    if _cache_enabled(config, module):
        check_writable(samtune_home() / "embeddings", "embedding cache folder ($SAMTUNE_HOME); "
                       "set SAMTUNE_HOME to a writable folder or train.cache_embeddings=off, and")
        module.cache = EmbeddingCache(samtune_home() / "embeddings", model_key(module.adapter),
                                      preprocess_key(module.adapter),
                                      dtype=getattr(torch, config.train.cache_dtype))
    t = config.train
    if module.cache is not None:
        device = training_device(config)
        for data in (train_data, val_data):
            fill_cache(module, data, t.batch_size, device)
        if t.cache_in_memory == "auto":
            keep_cache_in_memory(module.cache, len(train_data) + len(val_data), device)
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
    trainer = build_trainer(config, has_val=has_val,
                            varying=module.step_varying_parameters)
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
        save_last(trainer, last)
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
    if found and checkpoint_step(found[0]) > 0:
        return found[0]
    damaged = sorted(p.name for p in ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if damaged and not found:
        raise SamtuneError(f"{ckpt_dir}: no complete checkpoint to resume from "
                           f"({', '.join(damaged)} damaged); remove the folder to train the "
                           "run again from step 0")
    warnings.warn(f"{run_dir}: no checkpoint of a training step yet (stopped before the "
                  "first save); training it from step 0", SamtuneWarning, stacklevel=2)
    return None


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer steps a checkpoint had completed."""
    return int(load_checkpoint_file(checkpoint).get("global_step", 0))


def build_trainer(config: RunConfig, has_val: bool, varying: tuple[str, ...] = ()) -> L.Trainer:
    t = config.train
    run_dir = config.run_dir
    ckpt_dir = run_dir / "checkpoints"
    metric = t.checkpoint.monitor
    callbacks: list[Callback] = [
        LearningRateMonitor(logging_interval="step"),
    ]
    if has_val:
        callbacks.append(RunCheckpoint(
            dirpath=ckpt_dir, filename=f"step={{step}}-{metric.replace('/', '_')}={{{metric}:.4f}}",
            auto_insert_metric_name=False, monitor=metric, mode=t.checkpoint.mode,
            save_top_k=t.checkpoint.save_top_k,
        ))
    if t.checkpoint.every_n_steps:
        callbacks.append(RunCheckpoint(
            dirpath=ckpt_dir, filename="periodic-step={step}", auto_insert_metric_name=False,
            every_n_train_steps=t.checkpoint.every_n_steps, save_top_k=-1,
        ))
    if t.early_stopping is not None and has_val:
        e = t.early_stopping
        callbacks.append(EarlyStopping(monitor=e.monitor, mode=e.mode, patience=e.patience,
                                       min_delta=e.min_delta))
    callbacks.append(LastCheckpoint(ckpt_dir / "last.ckpt", t.checkpoint.every_n_steps))
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
        plugins=[AtomicCheckpointIO()],
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


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that also writes ``<name>.safetensors`` beside each file,
    holding only the trained tensors (official names, LoRA tensors included), then the
    ``<name>.sha256`` sidecar of both; its checkpoint IO removes all three together."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        save_trained_tensors(trainer, Path(filepath))
        if trainer.is_global_zero:
            write_checksums(Path(filepath))

    def start_from_base(self, trainer: L.Trainer, base: dict[str, float]) -> None:
        """Count the base model's validation as the first candidate for best: it is saved as
        ``step=0-...ckpt`` and stays best until a validation beats it, so a run that only got
        worse keeps ``best.ckpt`` on the base weights."""
        if not self.monitor or self.monitor not in base or self.save_top_k == 0:
            return
        score = torch.tensor(base[self.monitor])
        metrics = {**{k: torch.tensor(v) for k, v in base.items()}, "step": torch.tensor(0)}
        path = self.format_checkpoint_name(metrics)
        self._save_checkpoint(trainer, path)
        self.current_score = score
        self.best_k_models = {path: score}
        self.kth_best_model_path = self.best_model_path = path
        self.kth_value = self.best_model_score = score


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` after every validation of the fit and every ``every_n_steps`` steps, so a
    resume never goes back further than the latest checkpoint of any kind.

    A :class:`Checkpoint`, so Lightning runs it after the other callbacks (checkpoint
    callbacks last, in their order): the file holds their state after this step's save.
    """

    def __init__(self, path: Path, every_n_steps: int | None = None) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self._step_seen: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_seen = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        # only after a batch that ended an optimizer step: under gradient accumulation the
        # others share the step, and a checkpoint after one would count that batch done but
        # hold none of its gradient
        stepped, self._step_seen = trainer.global_step != self._step_seen, trainer.global_step
        if stepped and self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            save_last(trainer, self.path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            save_last(trainer, self.path)


def save_trained_tensors(trainer: L.Trainer, checkpoint: Path) -> None:
    """``<checkpoint>.safetensors``: only the trained tensors, official names."""
    if not trainer.is_global_zero:
        return
    from safetensors.torch import save_file

    module = trainer.lightning_module
    tensors = {k: v.cpu().contiguous() for k, v in module.trainable_state().items()}
    with atomic_path(checkpoint.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp), metadata={"model": module.config.model.name})


def save_last(trainer: L.Trainer, last: Path) -> None:
    """``last.ckpt``, its trained tensors and their sidecar, at the current step."""
    trainer.save_checkpoint(last)
    save_trained_tensors(trainer, last)
    if trainer.is_global_zero:
        write_checksums(last)


def batches_done_in_epoch(checkpoint: Path) -> int:
    """How many batches of its epoch a checkpoint had trained on.

    Lightning restores the step and the epoch but, for a plain DataLoader, restarts the
    epoch's data from its first batch; the sampler's order depends only on (seed, epoch), so
    skipping this many batches continues the epoch exactly where it stopped.
    """
    state = load_checkpoint_file(checkpoint)
    progress = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    return int(progress["processed"])


def training_device(config: RunConfig) -> torch.device:
    """The device this process will train on: its GPU when Lightning will use one."""
    accelerator = config.train.accelerator
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def fill_cache(module: FineTuneModule, data, batch_size: int,
               device: str | torch.device = "cpu") -> None:
    """Encode every image of ``data`` not yet in the cache, in batches on ``device``, with a
    progress bar: the only encoder passes of a cached run (later epochs and later runs read
    the cache)."""
    cache, adapter = module.cache, module.adapter
    home = adapter.device
    adapter.to(device)
    try:
        _fill(cache, adapter, data, batch_size)
    finally:
        adapter.to(home)  # Lightning moves the module itself when training starts


def _fill(cache: EmbeddingCache, adapter, data, batch_size: int) -> None:
    sources = getattr(data, "sources", [data])  # a MixedSource: every image it may draw
    samples = (sample for source in sources for sample in source)
    total = sum(len(source) for source in sources)
    pending: list[tuple[str, object]] = []
    seen: set[str] = set()
    with tqdm(total=total, desc="caching image embeddings", unit="img") as bar:
        for sample in samples:
            key = image_key(sample.image)
            if key not in seen and cache.get(key) is None:
                pending.append((key, sample.image))
            seen.add(key)
            if len(pending) == batch_size:
                _encode_into_cache(adapter, cache, pending)
                pending = []
            bar.update(1)
        if pending:
            _encode_into_cache(adapter, cache, pending)


def _encode_into_cache(adapter, cache: EmbeddingCache, pending: list) -> None:
    with torch.no_grad():
        features = adapter.encode(adapter.preprocess([image for _, image in pending]).images)
    cache.put_many([key for key, _ in pending], features)


def keep_cache_in_memory(cache: EmbeddingCache, images: int, device: torch.device) -> None:
    """Hold all ``images`` entries in memory when they fit (see ``train.cache_in_memory``)."""
    per_image = _entry_bytes(cache)
    if per_image is None:
        return
    need = per_image * images
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need < free / 3:
            cache.memory_items, cache.memory_device = images, device
            return
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need < ram / 4:
        cache.memory_items, cache.memory_device = images, torch.device("cpu")


def _entry_bytes(cache: EmbeddingCache) -> int | None:
    """Bytes one cached image takes in memory, from the shapes in any entry on disk."""
    from safetensors import safe_open

    entry = next(cache.folder.glob("*/*.safetensors"), None)
    if entry is None:
        return None
    with safe_open(str(entry), framework="pt") as f:
        elements = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    return elements * cache.dtype.itemsize


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
