"""Prompt sampling: what each object is prompted with during training.

Prompts are made per object in ORIGINAL image pixels (the frame a user's clicks and boxes
live in, and the one ``labpics_sam2``-``finestsam_points`` reason in); :mod:`samtune.data.batch` maps them to model input
pixels with the model's :class:`~samtune.models.preprocess.Preprocessor`. Mask inputs are the
exception: they only exist at the decoder's low-res size, so a ``mask`` prompt is made from the
target in the model frame at collate time (:func:`mask_logits_from_targets`) and ``logits``
are stored in that frame already.

Point convention: a point is the (x, y) = (column, row) index of a pixel, as SAM's predictor
takes clicks (its prompt encoder adds 0.5 to reach the pixel centre). Boxes are xyxy on pixel
edges, as :meth:`Sample.boxes`. Every random draw comes from the numpy Generator passed in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from samtune.config.prompts import PromptConfig, PromptKind, parse_prompt_kind
from samtune.data.sample import Sample

if TYPE_CHECKING:
    from samtune.data.batch import Batch

PAD_LABEL = -1
"""Label of a padding point: the prompt encoder gives it the "not a point" embedding."""


@dataclass
class ObjectPrompt:
    """One object's prompt in original image pixels.

    ``points`` (P, 2) float32 xy with ``point_labels`` (P,) int64 (1 positive, 0 negative,
    -1 padding); ``box`` (4,) float32 xyxy; ``logits`` (h, w) float32 previous low-res logits
    in the model frame (kind ``logits``); for a ``mask`` kind only ``mask_logit``, the
    magnitude the target gets when it is made into the mask input at collate time.
    """

    kind: PromptKind
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    logits: np.ndarray | None = None
    mask_logit: float | None = None

    @property
    def structure(self) -> tuple[int, bool, bool]:
        """(number of points, has a box, has a mask input): objects that share it can go
        through the decoder in one ``Prompts`` record."""
        n_points = 0 if self.points is None else len(self.points)
        return n_points, self.box is not None, self.kind.mask is not None


# --- boxes ----------------------------------------------------------------------------------


def full_image_box(size: tuple[int, int]) -> np.ndarray:
    """The box of a whole (H, W) image, (0, 0, W, H) (``dlo_cables``'s promptless box)."""
    h, w = size
    return np.array([0, 0, w, h], dtype=np.float32)


def clip_box(box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``box`` clipped to an (H, W) image."""
    h, w = size
    return np.clip(np.asarray(box, dtype=np.float32), 0, [w, h, w, h]).astype(np.float32)


def scale_box(box: np.ndarray, factor: float, size: tuple[int, int]) -> np.ndarray:
    """``box`` scaled by ``factor`` about its centre, clipped to the (H, W) image (``mobilesam_boxes``)."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2 * factor, (y2 - y1) / 2 * factor
    return clip_box(np.array([cx - hw, cy - hh, cx + hw, cy + hh]), size)


def jitter_box(
    box: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    fraction: float = 0.1,
    max_px: float = 20.0,
    distribution: Literal["normal", "uniform"] = "normal",
) -> np.ndarray:
    """``box`` with noise on each coordinate, as SAM trains with boxes.

    ``normal`` (the SAM paper): offsets ~ N(0, (fraction x side)^2), clipped to +-``max_px``;
    ``uniform`` (SAM 2's ``sample_box_points``): offsets ~ U(+-min(fraction x side, max_px)).
    The side is the box's width for x and height for y. The result is clipped to the image
    and kept ordered (x1 <= x2, y1 <= y2).
    """
    b = np.asarray(box, dtype=np.float64)
    w, h = b[2] - b[0], b[3] - b[1]
    spread = fraction * np.array([w, h, w, h])
    if distribution == "normal":
        noise = np.clip(rng.normal(0.0, 1.0, 4) * spread, -max_px, max_px)
    elif distribution == "uniform":
        noise = rng.uniform(-1.0, 1.0, 4) * np.minimum(spread, max_px)
    else:
        raise ValueError(f"jitter distribution must be 'normal' or 'uniform', got {distribution!r}")
    out = b + noise
    out = np.array([min(out[0], out[2]), min(out[1], out[3]), max(out[0], out[2]),
                    max(out[1], out[3])])
    return clip_box(out, size)


# --- points ---------------------------------------------------------------------------------


def center_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the mask pixel nearest the mean of the mask pixels: on the mask even for a
    ring or a crescent (``finestsam_points``)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("center_point: the mask is empty")
    d = (xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2
    i = int(np.argmin(d))
    return np.array([xs[i], ys[i]], dtype=np.float32)


def snap_to_grid(point: np.ndarray, size: tuple[int, int], n: int = 32) -> np.ndarray:
    """The nearest point of the automatic generator's n x n grid ``(i + 0.5) / n * (W, H)``
    (``finestsam_points``'s ``snap_to_grid``). The grid is separable, so each axis snaps on its own."""
    h, w = size
    out = []
    for v, extent in ((point[0], w), (point[1], h)):
        # the cell containing v: its centre is the nearest grid coordinate
        i = np.clip(np.floor(v / extent * n), 0, n - 1)
        out.append((i + 0.5) / n * extent)
    return np.array(out, dtype=np.float32)


def sample_points(
    mask: np.ndarray,
    box: np.ndarray,
    positive: int,
    negative: int,
    rng: np.random.Generator,
    use_center: bool = False,
    snap: bool = False,
    grid_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """``positive`` points on the mask and ``negative`` points inside ``box`` but off the mask
    (``finestsam_points``'s rules), drawn without replacement.

    With ``use_center`` the first positive is :func:`center_point` (snapped to the grid with
    ``snap``) and the others are drawn from the remaining mask pixels. When an object has too
    few candidates (a rectangle has no negatives in its box), the missing points are padding
    (label -1 at (0, 0)), which the model ignores, so every object has P = positive + negative.
    Returns (P, 2) float32 xy and (P,) int64 labels.
    """
    h, w = mask.shape
    x1, y1 = int(np.floor(max(box[0], 0))), int(np.floor(max(box[1], 0)))
    x2, y2 = int(np.ceil(min(box[2], w))), int(np.ceil(min(box[3], h)))
    region = np.zeros_like(mask, dtype=bool)
    region[y1:y2, x1:x2] = True
    pos_yx = np.argwhere(mask)
    neg_yx = np.argwhere(region & ~mask)

    points: list[np.ndarray] = []
    labels: list[int] = []
    n_pos = positive
    if use_center and positive > 0 and len(pos_yx):
        c = center_point(mask)
        pos_yx = pos_yx[~((pos_yx[:, 0] == c[1]) & (pos_yx[:, 1] == c[0]))]
        points.append(snap_to_grid(c, (h, w), grid_size) if snap else c)
        labels.append(1)
        n_pos -= 1
    for candidates, n, label in ((pos_yx, n_pos, 1), (neg_yx, negative, 0)):
        take = min(n, len(candidates))
        if take:
            chosen = candidates[rng.choice(len(candidates), size=take, replace=False)]
            points.extend(chosen[:, ::-1].astype(np.float32))
            labels.extend([label] * take)
    pad = positive + negative - len(points)
    points.extend([np.zeros(2, dtype=np.float32)] * pad)
    labels.extend([PAD_LABEL] * pad)
    return np.stack(points).astype(np.float32), np.asarray(labels, dtype=np.int64)


def next_click(
    pred_mask: np.ndarray,
    gt_mask: np.ndarray,
    rng: np.random.Generator,
    mode: Literal["sample", "farthest"] = "sample",
) -> tuple[np.ndarray, int]:
    """The next corrective click for an interactive round: ((x, y), label).

    Positive (1) in the false-negative region (object the prediction missed), negative (0) in
    the false-positive region (what it wrongly covered).

    - ``sample`` (SAM): a pixel drawn uniformly from the whole error region.
    - ``farthest`` (SAM 2's error-centre click): the pixel farthest from the edge of its error
      region (a distance transform, image border counting as edge), taken in whichever of the
      two regions reaches farther inside; ties go to the first pixel in row-major order.

    With no error, a positive click drawn uniformly from the ground truth (or, for an empty
    ground truth, a negative one drawn from the whole image), so a round never stalls.
    """
    pred, gt = np.asarray(pred_mask, dtype=bool), np.asarray(gt_mask, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"next_click: pred_mask {pred.shape} and gt_mask {gt.shape} differ")
    fn, fp = gt & ~pred, pred & ~gt
    if not (fn.any() or fp.any()):
        region, label = (gt, 1) if gt.any() else (np.ones_like(gt), 0)
        return _uniform_pixel(region, rng), label
    if mode == "sample":
        error = fn | fp
        point = _uniform_pixel(error, rng)
        return point, int(fn[int(point[1]), int(point[0])])
    if mode == "farthest":
        dist_fn, dist_fp = inner_distance(fn), inner_distance(fp)
        label = 1 if dist_fn.max() >= dist_fp.max() else 0
        dist = dist_fn if label else dist_fp
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return np.array([x, y], dtype=np.float32), label
    raise ValueError(f"next_click: mode must be 'sample' or 'farthest', got {mode!r}")


def _uniform_pixel(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    yx = np.argwhere(region)
    y, x = yx[rng.integers(len(yx))]
    return np.array([x, y], dtype=np.float32)


def inner_distance(region: np.ndarray) -> np.ndarray:
    """Distance of each region pixel to the nearest non-region pixel or image border."""
    padded = np.pad(region, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]


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
