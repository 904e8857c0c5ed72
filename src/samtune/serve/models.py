"""The models the page compares: the base and one or more fine-tuned models, each in a slot.

A model that fails to load does not stop the server: its slot keeps the error, the page shows
it at start-up, and the other models keep working. Each slot keeps the predictors of the
images it encoded last (:class:`~samtune.infer.predictor.Predictor` holds the embedding after
``set_image``), so a click on an image already open runs only the prompt encoder and decoder.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from samtune.errors import SamtuneError
from samtune.infer.evaluate import report_folder
from samtune.infer.predictor import Predictor
from samtune.models.adapter import Adapter

#: Images whose embeddings each model keeps (an image embedding is 1-12 MB).
KEEP_EMBEDDINGS = 16


@dataclass
class Slot:
    """One model on the page. ``id`` is what the API takes (``base``, ``tuned``, ``tuned2``
    ...); ``adapter`` is None when loading failed, and ``error`` then says why; ``run_dir``
    is set for a run folder (its ``eval/`` report is browsable)."""

    id: str
    label: str
    adapter: Adapter | None = None
    error: str | None = None
    run_dir: Path | None = None
    keep: int = KEEP_EMBEDDINGS
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _predictors: OrderedDict[str, Predictor] = field(default_factory=OrderedDict, repr=False)

    @property
    def ready(self) -> bool:
        return self.adapter is not None

    def describe(self) -> dict:
        spec = self.adapter.spec if self.adapter is not None else None
        return {
            "id": self.id, "label": self.label, "ready": self.ready, "error": self.error,
            "name": spec.name if spec else None, "family": spec.family if spec else None,
            "run": str(self.run_dir) if self.run_dir else None,
            "report": bool(self.run_dir and report_folder(self.run_dir)),
        }

    def predictor(self, image_id: str, image: np.ndarray) -> tuple[Predictor, float | None]:
        """The predictor holding ``image``'s embedding, and the encoding time in ms when it
        had to encode (None when the embedding was kept). Call with ``lock`` held."""
        if self.adapter is None:
            raise SamtuneError(f"model {self.id} did not load: {self.error}")
        if image_id in self._predictors:
            self._predictors.move_to_end(image_id)
            return self._predictors[image_id], None
        predictor = Predictor(self.adapter)
        start = time.perf_counter()
        predictor.set_image(image)
        if predictor.features.image_embed.is_cuda:
            torch.cuda.synchronize()  # the encoder's time, not the time to queue it
        encode_ms = (time.perf_counter() - start) * 1000
        if self.keep > 0:
            self._predictors[image_id] = predictor
            while len(self._predictors) > self.keep:
                self._predictors.popitem(last=False)
        return predictor, encode_ms

    def sharing_model(self, keep: int) -> Slot:
        """Another slot over the same loaded model, with its own kept embeddings (``keep``
        of them) and lock: two servers side by side without loading the model twice."""
        return Slot(self.id, self.label, self.adapter, self.error, self.run_dir, keep)


def load_slots(models: Sequence[str], base: str | None = None, checkpoint: str | None = None,
               base_checkpoint: str | None = None, device: str = "cpu",
               keep: int = KEEP_EMBEDDINGS) -> list[Slot]:
    """Slots for ``base`` (or, without it, the base of the first run folder among
    ``models``) followed by one per entry of ``models`` (a run folder, checkpoint file or
    model name). ``checkpoint`` / ``base_checkpoint`` are the weights of the names: a file,
    ``"auto"`` (the official file from the cache) or ``"random"``; by default a name with an
    official checkpoint gets it and a tiny variant its random init, since a page showing a
    random-init SAM helps no one. Loading errors are kept in the slots, not raised; giving no
    model at all is an error."""
    if not models and base is None:
        raise SamtuneError("give --model RUN_OR_NAME (a fine-tuned run, a checkpoint file or a "
                           "model name) and/or --base NAME")
    tuned_ids = ["tuned"] if len(models) == 1 else [f"tuned{i + 1}" for i in range(len(models))]
    tuned = [_load_slot(i, target, checkpoint, device, keep, "fine-tuned")
             for i, target in zip(tuned_ids, models)]
    if base is not None:
        return [_load_slot("base", base, base_checkpoint, device, keep, "base"), *tuned]
    run = next((s for s in tuned if s.run_dir is not None), None)
    if run is None:
        return tuned
    return [_run_base_slot(run.run_dir, device, keep), *tuned]


def _load_slot(slot_id: str, target: str, checkpoint: str | None, device: str, keep: int,
               role: str) -> Slot:
    import samtune
    from samtune.models import list_models

    specs = {spec.name: spec for spec in list_models()}
    path = Path(target)
    spec = specs.get(target)
    run_dir = path if spec is None and (path / "config.yaml").is_file() else None
    weights = None
    if spec is not None:
        weights = checkpoint or ("auto" if spec.filename else "random")
        shown = {"auto": "official weights", "random": "random init"}.get(weights, weights)
        label = f"{role}: {target} ({shown})"
    else:
        label = f"{role}: {target}"
    slot = Slot(slot_id, label, run_dir=run_dir, keep=keep)
    if weights == "random":
        weights = None
    try:
        slot.adapter = samtune.load_model(target, checkpoint=weights, device=device)
    except SamtuneError as e:
        slot.error = str(e)
    except Exception as e:  # a damaged file raises anything; the page must still come up
        slot.error = f"{type(e).__name__}: {e}"
    return slot


def _run_base_slot(run_dir: Path, device: str, keep: int) -> Slot:
    """The base a run started from (same name, checkpoint and random init)."""
    from samtune.runs import base_model, run_config_of

    slot = Slot("base", f"base of {run_dir}", keep=keep)
    try:
        config = run_config_of(run_dir)
        weights = config.model.checkpoint
        slot.label = f"base: {config.model.name} ({weights or f'random init, seed {config.seed}'})"
        slot.adapter = base_model(config, device)
    except SamtuneError as e:
        slot.error = str(e)
    except Exception as e:  # as in _load_slot
        slot.error = f"{type(e).__name__}: {e}"
    return slot
