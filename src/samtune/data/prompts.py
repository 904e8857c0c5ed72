"""Prompt sampling: what each object is prompted with during training.

Prompts are :class:`~samtune.prompts.ObjectPrompt` records made per object by the shared
rules of :mod:`samtune.prompts`, in ORIGINAL image pixels (the frame a user's clicks and
boxes live in, and the one ``labpics_sam2``-``finestsam_points`` reason in); :mod:`samtune.data.batch` maps them to model input
pixels with the model's :class:`~samtune.models.preprocess.Preprocessor`. Mask inputs are the
exception: they only exist at the decoder's low-res size, so a ``mask`` prompt is made from the
target in the model frame at collate time (:func:`mask_logits_from_targets`) and ``logits``
are stored in that frame already.

Every random draw comes from the numpy Generator passed in.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from samtune.config.prompts import PromptConfig, PromptKind, parse_prompt_kind
from samtune.data.sample import Sample
from samtune.prompts import ObjectPrompt, full_image_box, jitter_box, sample_points, scale_box

if TYPE_CHECKING:
    from samtune.data.batch import Batch

# --- mask inputs ------------------------------------------------------------------------------


def mask_logits_from_targets(
    targets: torch.Tensor, size: tuple[int, int], logit: float = 10.0
) -> torch.Tensor:
    """(k, S, S) bool targets in the model frame -> (k, 1, h, w) mask-input logits.

    Each low-res pixel gets ``logit x (2 x covered fraction - 1)``: +``logit`` fully inside,
    -``logit`` fully outside, 0 on an edge half covered. Logits, not the 0/1 values ``finestsam_points`` feeds,
    because the decoder's mask input is its own earlier logits during inference.
    """
    frac = F.interpolate(targets[:, None].float(), size, mode="area")
    return logit * (2 * frac - 1)


def mask_key(mask: np.ndarray) -> str:
    """A content key of one object mask: its previous logits are only reused while the
    object sits exactly where they were predicted (no geometric augmentation in between)."""
    m = np.asarray(mask, dtype=bool)
    return hashlib.sha1(np.packbits(m).tobytes() + str(m.shape).encode()).hexdigest()


class PreviousLogitsStore:
    """Low-res logits of the last prediction per object, keyed by (sample index, object id).

    The trainer fills it (:meth:`update`) and the prompt sampler reads it (``logits`` kind).
    An entry counts only while the object's mask key still matches, so logits predicted
    before a flip or crop are never fed to a moved object; the sampler then falls back to
    another kind. This replaces ``finestsam_points``'s list of logits that was never aligned with the shuffled
    samples. Data-loader workers read a copy taken when they start, so with ``num_workers >
    0`` and non-persistent workers an epoch sees the entries of the epochs before it.
    Entries are kept as float16 (h x w x 2 bytes per object).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int], tuple[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def put(self, sample_index: int, object_id: int, key: str, logits: np.ndarray) -> None:
        """Store (h, w) low-res logits for one object whose mask has key ``key``."""
        arr = np.asarray(logits, dtype=np.float16)
        self._entries[(int(sample_index), int(object_id))] = (key, arr.reshape(arr.shape[-2:]))

    def get(self, sample_index: int, object_id: int, key: str) -> np.ndarray | None:
        """The stored (h, w) float32 logits, or None when absent or predicted for another
        placement of the object."""
        entry = self._entries.get((int(sample_index), int(object_id)))
        if entry is None or entry[0] != key:
            return None
        return entry[1].astype(np.float32)

    def state_dict(self) -> dict:
        """Every entry as tensors and strings (what a checkpoint holds and
        ``torch.load(weights_only=True)`` reads back)."""
        items = sorted(self._entries.items())
        ids = torch.tensor([list(k) for k, _ in items], dtype=torch.long).reshape(-1, 2)
        logits = (torch.from_numpy(np.stack([v for _, (_, v) in items])) if items
                  else torch.zeros(0, 0, 0, dtype=torch.float16))
        return {"ids": ids, "keys": [key for _, (key, _) in items], "logits": logits}

    def load_state_dict(self, state: dict) -> None:
        """The entries of :meth:`state_dict`, replacing the current ones."""
        self._entries = {
            (int(i), int(o)): (str(key), state["logits"][row].numpy().astype(np.float16))
            for row, ((i, o), key) in enumerate(zip(state["ids"].tolist(), state["keys"]))
        }

    def update(self, batch: Batch, objects: torch.Tensor, logits: torch.Tensor) -> None:
        """Store (k, 1, h, w) or (k, h, w) ``logits`` predicted for ``batch`` objects
        ``objects`` (k,), e.g. one prompt group's decoder output (the chosen mask)."""
        values = logits.detach().float().cpu().numpy()
        for row, i in enumerate(objects.tolist()):
            image = int(batch.object_image[i])
            self.put(int(batch.sample_indices[image]), int(batch.object_ids[i]),
                     batch.mask_keys[i], values[row])


# --- the sampler ------------------------------------------------------------------------------


class PromptSampler:
    """Sample -> one :class:`ObjectPrompt` per object, per the run's ``prompts`` config.

    Each object draws its kind from ``config.mix``, then its prompt. A ``logits`` kind with
    no usable stored entry falls back (see ``MaskPromptConfig.logits_fallback``). Picklable.
    """

    def __init__(self, config: PromptConfig, store: PreviousLogitsStore | None = None) -> None:
        self.config = config
        self.store = store
        kinds = config.kinds()
        self._kinds = [k for k, _ in kinds]
        self._probs = np.array([p for _, p in kinds])
        self._fallback = parse_prompt_kind(config.mask.logits_fallback)

    def __call__(
        self,
        sample: Sample,
        rng: np.random.Generator,
        sample_index: int = -1,
        mask_keys: list[str] | None = None,
    ) -> list[ObjectPrompt]:
        """Prompts for every object of ``sample``; ``sample_index`` and ``mask_keys`` (one per
        object, :func:`mask_key`) find stored logits."""
        masks = sample.object_masks()
        boxes = sample.boxes()
        out = []
        for i in range(len(sample)):
            kind = self._kinds[int(rng.choice(len(self._kinds), p=self._probs))]
            logits = None
            if kind.mask == "logits":
                key = mask_keys[i] if mask_keys is not None else mask_key(masks[i])
                logits = None if self.store is None else self.store.get(
                    sample_index, sample.object_ids[i], key)
                if logits is None:
                    kind = self._without_logits(kind)
            out.append(self.prompt(kind, masks[i], boxes[i], rng, logits))
        return out

    def _without_logits(self, kind: PromptKind) -> PromptKind:
        rest = PromptKind(box=kind.box, points=kind.points, mask=None)
        return rest if (rest.box or rest.points) else self._fallback

    def prompt(
        self,
        kind: PromptKind,
        mask: np.ndarray,
        box: np.ndarray,
        rng: np.random.Generator,
        logits: np.ndarray | None = None,
    ) -> ObjectPrompt:
        """One object's prompt of ``kind`` from its (H, W) mask and tight xyxy box."""
        size = mask.shape
        cfg = self.config
        out = ObjectPrompt(kind=kind, logits=logits if kind.mask == "logits" else None,
                           mask_logit=cfg.mask.logit if kind.mask == "gt" else None)
        if kind.box == "full":
            out.box = full_image_box(size)
        elif kind.box == "tight":
            b = scale_box(box, cfg.box.scale_factor, size)
            if cfg.box.jitter > 0:
                b = jitter_box(b, size, rng, cfg.box.jitter, cfg.box.jitter_max,
                               cfg.box.jitter_distribution)
            out.box = b
        if kind.points:
            p = cfg.points
            out.points, out.point_labels = sample_points(
                mask, box, p.positive, p.negative, rng, p.use_center, p.snap_to_grid, p.grid_size)
        return out
