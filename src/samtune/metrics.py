"""Mask quality metrics: per mask, per image, and accumulated across batches and devices.

Every function here works on torch tensors of any leading shape ``(..., H, W)`` on any device,
so the same code runs in the training step, in validation and in the evaluator. Predictions are
boolean masks; :func:`binarize` turns logits into masks at logit 0 (probability 0.5), never at
logit 0.5 (a quirk of two reference projects).

Definitions (chosen to reproduce the reference projects):

- counts per mask: TP, FP, FN, TN over the pixels where ``valid`` is true (padding excluded);
  with ``valid=None`` every pixel counts, padding included, as ``labpics_sam2`` does.
- IoU = TP / (TP + FP + FN); Dice = 2TP / (2TP + FP + FN). When prediction and target are both
  empty (union 0) the value is ``empty``, 1.0 by default: ``labpics_sam2`` counts an empty-vs-empty IoU as 1.0
  (its Dice has no guard and gives NaN there; samtune uses the same ``empty`` for both).
- pixel accuracy = (TP + TN) / valid pixels; precision = TP / (TP + FP); recall = TP / (TP + FN).
  A zero denominator gives 0, as in ``labpics_sam2``'s boundary F1 and scikit-learn's ``zero_division=0``.
- boundary F1 (``labpics_sam2``): band(m) = dilation(m, 3x3 cross) XOR erosion(m, 3x3 cross), both with zero
  outside the image (SciPy's default ``border_value=0``). Precision = |band(P) ∩ D(band(G))| /
  |band(P)|, recall = |band(G) ∩ D(band(P))| / |band(G)|, where D dilates by ``tolerance`` pixels
  (a Euclidean disk); ``tolerance=0`` is ``labpics_sam2`` exactly (TP = band ∩ band). F1 = 2PR / (P + R); any
  zero denominator gives 0, so empty-vs-empty gives ``boundary_empty`` = 0.0 by default (``labpics_sam2``).
- per image: the mean of that image's per-mask values (``finestsam_points``'s "micro-imagewise"); the dataset
  value is the mean over images. Per mask: the mean over all masks (``lightning_coco_boxes``'s ``per_mask_iou``).
- micro (``dlo_cables``): TP/FP/FN/TN summed over the whole dataset, then accuracy, precision, recall, IoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from samtune.memory import release_freed_memory

#: per-mask metric names, in the order :func:`mask_metrics` returns them
METRIC_NAMES = ("iou", "dice", "pixel_accuracy", "precision", "recall", "boundary_f1")
MICRO_NAMES = ("accuracy", "precision", "recall", "iou")


def binarize(pred: torch.Tensor) -> torch.Tensor:
    """Boolean masks as they are; floating-point logits thresholded at 0 (probability 0.5)."""
    return pred if pred.dtype == torch.bool else pred > 0


def safe_ratio(num: torch.Tensor, den: torch.Tensor, zero: float) -> torch.Tensor:
    """``num / den`` in float32, with ``zero`` where ``den`` is 0 (no NaN, no inf)."""
    num, den = num.float(), den.float()
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, zero))


@dataclass(frozen=True)
class Counts:
    """Pixel confusion counts, one entry per mask (int64 tensors of the same shape)."""

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    tn: torch.Tensor

    def iou(self, empty: float = 1.0) -> torch.Tensor:
        return safe_ratio(self.tp, self.tp + self.fp + self.fn, empty)

    def dice(self, empty: float = 1.0) -> torch.Tensor:
        return safe_ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, empty)

    def accuracy(self) -> torch.Tensor:
        return safe_ratio(self.tp + self.tn, self.tp + self.fp + self.fn + self.tn, 0.0)

    def precision(self) -> torch.Tensor:
        return safe_ratio(self.tp, self.tp + self.fp, 0.0)

    def recall(self) -> torch.Tensor:
        return safe_ratio(self.tp, self.tp + self.fn, 0.0)


def _broadcast_masks(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Binarize and broadcast ``pred``, ``target`` and ``valid`` to one ``(..., H, W)`` shape."""
    pred, target = binarize(pred), target.bool()
    if valid is None:
        pred, target = torch.broadcast_tensors(pred, target)
        return pred, target, None
    pred, target, valid = torch.broadcast_tensors(pred, target, valid.bool())
    return pred, target, valid


def mask_areas(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool -> (...) int32 foreground pixel counts; int16 row sums first (on a CPU
    cheaper than one reduction over both axes, or ``count_nonzero``)."""
    row_dtype = torch.int16 if masks.shape[-1] < 2**15 else torch.int32
    return masks.sum(-1, dtype=row_dtype).sum(-1, dtype=torch.int32)


def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> Counts:
    """TP/FP/FN/TN per mask of ``(..., H, W)`` masks (shapes broadcast), over valid pixels.

    Counted with :func:`mask_areas` (a bool ``sum`` over two dimensions first copies the masks
    to int64, and this runs on every training step's masks at the input frame), as int64 so
    that counts pooled over a dataset cannot overflow.
    """
    pred, target, valid = _broadcast_masks(pred, target, valid)
    if valid is not None:
        pred, target = pred & valid, target & valid
        total = mask_areas(valid).long()
    else:
        total = torch.full(pred.shape[:-2], pred.shape[-2] * pred.shape[-1], device=pred.device)
    tp = mask_areas(pred & target).long()
    fp = mask_areas(pred).long() - tp
    fn = mask_areas(target).long() - tp
    return Counts(tp, fp, fn, total - tp - fp - fn)


def _conv_count(masks: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """For each pixel, how many set pixels of ``masks`` (…, H, W) fall under ``kernel``."""
    shape = masks.shape
    x = masks.reshape(-1, 1, *shape[-2:]).float()
    r = kernel.shape[-1] // 2
    out = F.conv2d(x, kernel.to(x.device, x.dtype)[None, None], padding=r)
    return out.reshape(shape)


def _disk(radius: int) -> torch.Tensor:
    """Euclidean disk of ``radius`` pixels (radius 1 is the 3x3 cross)."""
    d = torch.arange(-radius, radius + 1, dtype=torch.float32)
    return ((d[:, None] ** 2 + d[None, :] ** 2) <= radius**2).float()


def boundary_band(masks: torch.Tensor) -> torch.Tensor:
    """``labpics_sam2``'s boundary: dilation XOR erosion with a 3x3 cross, zero outside the image.

    A pixel inside the mask next to the outside, and a pixel outside next to the mask, are both
    in the band (about 2 pixels wide). A mask touching the image edge is eroded there.
    """
    masks = masks.bool()
    if masks.numel() == 0:
        return masks
    # the cross's four neighbours as shifted views of a zero-padded copy: no float copies or
    # convolution workspace (a 3x3 conv2d took ~19x the masks' bytes on a CPU)
    p = F.pad(masks.to(torch.uint8), (1, 1, 1, 1)).bool()
    neighbours = (p[..., :-2, 1:-1], p[..., 2:, 1:-1], p[..., 1:-1, :-2], p[..., 1:-1, 2:])
    dilated, eroded = masks.clone(), masks.clone()
    for n in neighbours:
        dilated |= n
        eroded &= n
    return dilated ^ eroded


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(..., H, W)`` masks by a Euclidean disk; radius 0 is the identity."""
    masks = masks.bool()
    if radius <= 0 or masks.numel() == 0:
        return masks
    return _conv_count(masks, _disk(radius)) > 0.5


def boundary_f1(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    tolerance: int = 0,
    empty: float = 0.0,
) -> torch.Tensor:
    """Boundary F1 per mask (module docstring); ``tolerance`` pixels of slack, 0 = ``labpics_sam2`` exactly."""
    if tolerance < 0:
        raise ValueError(f"boundary tolerance must be >= 0 pixels, got {tolerance}")
    pred, target, valid = _broadcast_masks(pred, target, valid)
    if valid is not None:
        pred, target = pred & valid, target & valid
    band_p, band_g = boundary_band(pred), boundary_band(target)
    if valid is not None:
        band_p, band_g = band_p & valid, band_g & valid
    tp_p = (band_p & dilate(band_g, tolerance)).sum((-2, -1))
    tp_g = (band_g & dilate(band_p, tolerance)).sum((-2, -1))
    precision = safe_ratio(tp_p, band_p.sum((-2, -1)), 0.0)
    recall = safe_ratio(tp_g, band_g.sum((-2, -1)), 0.0)
    f1 = safe_ratio(2 * precision * recall, precision + recall, 0.0)
    both_empty = (band_p.sum((-2, -1)) == 0) & (band_g.sum((-2, -1)) == 0)
    return torch.where(both_empty, torch.full_like(f1, empty), f1)


#: Pixels of the masks one metric pass works on at once (objects x height x width): the
#: boundary F1's convolutions make float copies (and workspaces) of their input, so 2^22
#: pixels keep a pass to a few hundred MiB whatever the number of objects (400 objects of
#: 2048x1536 took 80 GB in one pass; bench/memory.py).
CHUNK_PIXELS = 1 << 22


def object_chunks(n: int, height: int, width: int, budget: int | None = None) -> list[slice]:
    """Slices of ``n`` objects, each of at most ``budget`` pixels (default
    :data:`CHUNK_PIXELS`) and at least one object."""
    step = max(1, (budget or CHUNK_PIXELS) // max(1, height * width))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _chunked_values(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None,
    boundary_tolerance: int,
    empty: float,
    boundary_empty: float,
) -> tuple[Counts, dict[str, torch.Tensor]]:
    """Counts and metric values of ``(N, H, W)`` masks, computed a chunk of objects at a time
    (:func:`object_chunks`) and joined: the same numbers in bounded memory."""
    n = pred.shape[0]
    # the results are allocated before the first chunk and filled in place (small tensors
    # kept per chunk would sit between the chunks' large temporaries on the heap), and the
    # freed heap goes back after each chunk: peak memory is one chunk's (samtune.memory)
    counts = Counts(*(torch.empty(n, dtype=torch.long, device=pred.device) for _ in range(4)))
    values = {name: torch.empty(n, device=pred.device) for name in METRIC_NAMES}
    chunks = object_chunks(n, *pred.shape[-2:])
    for rows in chunks:
        v = valid[rows] if valid is not None and valid.dim() == pred.dim() else valid
        part = confusion_counts(pred[rows], target[rows], v)
        for name in ("tp", "fp", "fn", "tn"):
            getattr(counts, name)[rows] = getattr(part, name)
        for name, value in _values(part, pred[rows], target[rows], v, boundary_tolerance,
                                   empty, boundary_empty).items():
            values[name][rows] = value
        if len(chunks) > 1:
            release_freed_memory()
    return counts, values


def mask_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    boundary_tolerance: int = 0,
    empty: float = 1.0,
    boundary_empty: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Every metric of :data:`METRIC_NAMES` per mask, as float32 tensors of shape ``(...)``.

    ``pred``: bool masks or logits (thresholded at 0); ``target``: bool masks; ``valid``: pixels
    that count (e.g. not padding), broadcast against both; all shaped ``(..., H, W)``.
    """
    if pred.dim() == 3 and pred.shape == target.shape and pred.shape[0] > 0:
        return _chunked_values(pred, target, valid, boundary_tolerance, empty, boundary_empty)[1]
    counts = confusion_counts(pred, target, valid)
    return _values(counts, pred, target, valid, boundary_tolerance, empty, boundary_empty)


def _values(
    counts: Counts,
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None,
    boundary_tolerance: int,
    empty: float,
    boundary_empty: float,
) -> dict[str, torch.Tensor]:
    return {
        "iou": counts.iou(empty),
        "dice": counts.dice(empty),
        "pixel_accuracy": counts.accuracy(),
        "precision": counts.precision(),
        "recall": counts.recall(),
        "boundary_f1": boundary_f1(pred, target, valid, boundary_tolerance, boundary_empty),
    }


def per_image_mean(
    values: torch.Tensor, image_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of per-mask ``values`` (N,) within each image named in ``image_index`` (N,).

    Returns ``(means, images)``: one mean per distinct image index, and those indices (sorted).
    Images without masks do not appear: there is nothing to average.
    """
    images, inverse = torch.unique(image_index, return_inverse=True)
    sums = torch.zeros(len(images), device=values.device, dtype=values.dtype)
    sums.index_add_(0, inverse, values)
    counts = torch.zeros_like(sums).index_add_(0, inverse, torch.ones_like(values))
    return sums / counts, images


class MaskMetrics(Metric):
    """Accumulates per-mask, per-image and micro (pooled-pixel) metrics over batches.

    ``update(pred, target, valid=None, image_index=None)`` takes one batch of N masks shaped
    (N, H, W): ``pred`` bool or logits, ``target`` bool, ``valid`` (N, H, W) or (H, W),
    ``image_index`` (N,) saying which image each mask belongs to (all masks of an image must
    come in the same update; ``None`` means one mask per image, as in ``labpics_sam2``). ``compute()`` returns
    ``mask_<name>`` (mean over masks), ``image_<name>`` (mean over images of the per-image mean)
    for each name in :data:`METRIC_NAMES`, and ``micro_<name>`` for :data:`MICRO_NAMES`.

    Every state is a sum, so torchmetrics' ``dist_reduce_fx="sum"`` all-reduces them across
    devices and the result equals one update on the concatenated data.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        boundary_tolerance: int = 0,
        empty: float = 1.0,
        boundary_empty: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if boundary_tolerance < 0:
            raise ValueError(f"boundary_tolerance must be >= 0 pixels, got {boundary_tolerance}")
        self.boundary_tolerance = boundary_tolerance
        self.empty = empty
        self.boundary_empty = boundary_empty
        for name in METRIC_NAMES:
            self.add_state(f"mask_{name}", torch.tensor(0.0), dist_reduce_fx="sum")
            self.add_state(f"image_{name}", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("num_masks", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_images", torch.tensor(0), dist_reduce_fx="sum")
        for name in ("tp", "fp", "fn", "tn"):
            self.add_state(name, torch.tensor(0), dist_reduce_fx="sum")

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> None:
        if pred.dim() != 3 or pred.shape != target.shape:
            raise ValueError(
                f"MaskMetrics.update expects pred and target of one shape (N, H, W), got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}; pick one candidate per object"
            )
        if pred.shape[0] == 0:
            return
        counts, values = _chunked_values(pred, target, valid, self.boundary_tolerance,
                                         self.empty, self.boundary_empty)
        if image_index is None:
            image_index = torch.arange(pred.shape[0], device=pred.device)
        for name, per_mask in values.items():
            image_means, _ = per_image_mean(per_mask, image_index.to(per_mask.device))
            setattr(self, f"mask_{name}", getattr(self, f"mask_{name}") + per_mask.sum())
            setattr(self, f"image_{name}", getattr(self, f"image_{name}") + image_means.sum())
        self.num_masks += pred.shape[0]
        self.num_images += torch.unique(image_index).numel()
        for name in ("tp", "fp", "fn", "tn"):
            setattr(self, name, getattr(self, name) + getattr(counts, name).sum())

    def compute(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name in METRIC_NAMES:
            out[f"mask_{name}"] = safe_ratio(getattr(self, f"mask_{name}"), self.num_masks, 0.0)
            out[f"image_{name}"] = safe_ratio(getattr(self, f"image_{name}"), self.num_images, 0.0)
        pooled = Counts(self.tp, self.fp, self.fn, self.tn)
        out["micro_accuracy"] = pooled.accuracy()
        out["micro_precision"] = pooled.precision()
        out["micro_recall"] = pooled.recall()
        out["micro_iou"] = pooled.iou(self.empty)
        return out
