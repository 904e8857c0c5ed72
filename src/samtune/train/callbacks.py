"""What training adds around the step, through Lightning's public extension points.

- :class:`RunCheckpointIO` (a ``CheckpointIO`` plugin): every checkpoint Lightning writes,
  reads or removes, by any callback or ``trainer.save_checkpoint``, goes through it. It writes
  the file to a temporary name beside its target, then renames it (Lightning's default stages
  it in ``$TMPDIR``, and a move from a tmpfs ``/tmp`` is a copy a kill can truncate), writes
  ``<name>.safetensors`` beside it with only the trained tensors, then ``<name>.sha256`` over
  both (:mod:`samtune.runs`); it reads a checkpoint only when it matches its sidecar, without
  unpickling objects, and removes all three together.
- :class:`LastCheckpoint`: ``last.ckpt`` after every validation and periodic save, so a
  resume never goes back further than the latest checkpoint of any kind; :class:`RunCheckpoint`
  keeps the best, with the base model's validation as its first candidate.
- :class:`EmbeddingCacheFiller`: encodes every image once into the embedding cache before the
  first validation or training batch, on the device the trainer runs on.
- :class:`PreviousLogits`: keeps each object's last predicted low-res logits for the
  ``logits`` prompt kind, and saves them in the checkpoint, so a resumed run feeds the same
  mask prompts an uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

from samtune.data.prompts import PreviousLogitsStore
from samtune.files import atomic_path
from samtune.runs import load_checkpoint_file, remove_checkpoint_files, write_checksums
from samtune.train.cache import EmbeddingCache, fill_cache, keep_cache_in_memory

#: the checkpoint entry listing the trained tensors (names of the official module)
TRAINED_KEY = "samtune_trained_tensors"
#: where the training module keeps the official module's tensors in its state dict
MODEL_PREFIX = "adapter.model."


#: the checkpoint entry :class:`LastCheckpoint` writes for :func:`logged_through`
LOG_STATE_KEY = "samtune_log"


def trained_tensors_path(checkpoint: str | Path) -> Path:
    """``<checkpoint>.safetensors``: the trained tensors of a checkpoint."""
    return Path(checkpoint).with_suffix(".safetensors")


class RunCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint files, written atomically, each with the file of only the
    trained tensors (official names, LoRA tensors included; for partial loading and small
    copies) and the sha256 sidecar of both. The training module lists the trained names
    under :data:`TRAINED_KEY` when it saves (``FineTuneModule.on_save_checkpoint``).
    Lightning calls it on the global-zero process only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        names = checkpoint.get(TRAINED_KEY)
        if names is not None:
            write_trained_tensors(checkpoint, names, trained_tensors_path(path))
        write_checksums(path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        """The checkpoint, checked against its sidecar, read with ``weights_only=True``
        whatever Lightning asks (samtune's checkpoints hold tensors and plain values only)."""
        return load_checkpoint_file(path)

    def remove_checkpoint(self, path) -> None:
        remove_checkpoint_files(Path(path))


def save_resumable(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` with everything a resume reads (optimizer, schedule, loops,
    callbacks), as ModelCheckpoint saves; the second argument, ``weights_only``, given as
    ModelCheckpoint gives it, so Lightning does not log its default."""
    trainer.save_checkpoint(path, False)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with the base model's validation as the first candidate
    for best (:meth:`start_from_base`)."""

    def start_from_base(self, trainer: L.Trainer, base: dict[str, float]) -> None:
        """Count the base model's validation as the first candidate for best: it is saved as
        ``step=0-...ckpt`` and stays best until a validation beats it, so a run that only got
        worse keeps ``best.ckpt`` on the base weights."""
        if not self.monitor or self.monitor not in base or self.save_top_k == 0:
            return
        score = torch.tensor(base[self.monitor])
        metrics = {**{k: torch.tensor(v) for k, v in base.items()}, "step": torch.tensor(0)}
        path = self.format_checkpoint_name(metrics)
        trainer.save_checkpoint(path, self.save_weights_only)
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

    def __init__(self, path: Path, metrics_file: Path, every_n_steps: int | None = None) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self.metrics_file = metrics_file
        self._step_seen: int | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Every checkpoint of the fit (this one's, the best and periodic ones) records how
        far ``metrics.csv`` was written: a save at the end of a training batch comes before
        Lightning writes that step's row, so a resume must know whether the row followed
        (:func:`logged_through`)."""
        size = self.metrics_file.stat().st_size if self.metrics_file.is_file() else 0
        checkpoint[LOG_STATE_KEY] = {"row_pending": trainer.state.stage == RunningStage.TRAINING,
                                     "csv_bytes": size}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_seen = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        # only after a batch that ended an optimizer step: under gradient accumulation the
        # others share the step, and a checkpoint after one would count that batch done but
        # hold none of its gradient
        stepped, self._step_seen = trainer.global_step != self._step_seen, trainer.global_step
        if stepped and self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            save_resumable(trainer, self.path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            save_resumable(trainer, self.path)


def logged_through(checkpoint: dict[str, Any], metrics_file: Path) -> bool:
    """Whether ``metrics.csv`` holds every row up to a checkpoint's step: a checkpoint saved
    at the end of a training batch is complete only once the file grew after it (the step's
    row comes next); a kill between the two would otherwise lose that row for good."""
    state = checkpoint.get(LOG_STATE_KEY)
    if not state or not state.get("row_pending"):
        return True
    return metrics_file.is_file() and metrics_file.stat().st_size > state["csv_bytes"]


def write_trained_tensors(checkpoint: dict[str, Any], names: Sequence[str], path: Path) -> None:
    """The tensors ``names`` of a checkpoint's state dict as a safetensors file."""
    from safetensors.torch import save_file

    state = checkpoint["state_dict"]
    tensors = {n: state[MODEL_PREFIX + n].detach().cpu().contiguous() for n in names}
    config = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    model = str((config.get("model") or {}).get("name", ""))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"model": model})


class EmbeddingCacheFiller(Callback):
    """Fill ``cache`` with the features of every image of ``datasets`` before the first
    batch of the first ``validate`` or ``fit``, in batches of ``batch_size`` on the trainer's
    device, and hand it to the module; with ``in_memory``, hold all entries in memory when
    they fit (``train.cache_in_memory``)."""

    def __init__(self, cache: EmbeddingCache, datasets: Sequence, batch_size: int,
                 in_memory: bool = True) -> None:
        self.cache = cache
        self.datasets = list(datasets)
        self.batch_size = batch_size
        self.in_memory = in_memory
        self._filled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.cache = self.cache
        if self._filled:
            return
        device = trainer.strategy.root_device
        for data in self.datasets:
            fill_cache(pl_module.adapter, self.cache, data, self.batch_size, device)
        if self.in_memory:
            keep_cache_in_memory(self.cache, sum(len(d) for d in self.datasets), device)
        self._filled = True


class PreviousLogits(Callback):
    """After each training batch, store every object's chosen low-res logits (what the
    module's ``training_step`` returns as ``low_res``) for the ``logits`` prompt kind; the
    store travels in the checkpoint."""

    def __init__(self, store: PreviousLogitsStore) -> None:
        self.store = store

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs,
                           batch, batch_idx: int) -> None:
        if not isinstance(outputs, dict) or outputs.get("low_res") is None:
            return  # a batch without objects
        low_res = outputs["low_res"]
        self.store.update(batch, torch.arange(len(low_res)), low_res.float().cpu())

    def state_dict(self) -> dict[str, Any]:
        return self.store.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.store.load_state_dict(state_dict)

