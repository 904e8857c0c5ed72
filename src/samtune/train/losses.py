"""Segmentation losses on mask logits, per mask, and their weighted combination.

Shapes: ``logits`` (N, H, W) for one mask per object or (N, K, H, W) for K candidate masks per
object (multimask output); ``targets`` (N, H, W) bool; ``valid`` (N, H, W) or (H, W) bool, the
pixels that count (``None``: all; pass it to keep padding out of the loss). The per-mask
functions return one value per mask, (N,) or (N, K), computed in float32 whatever the input
dtype (bf16 logits under autocast make sums over a million pixels inaccurate).

Normalization: :class:`SegmentationLoss` sums the per-mask values and divides by the number of
masks (``num_masks``, by default N), as SAM's trainers do, so a batch of 2 images with 10
objects weighs each object like a batch of 1 image with 1 object. Under DDP pass the
all-reduced global count, as SAM 2's trainer does.

The terms, with the reference projects' settings:

- ``focal``: :func:`torchvision.ops.sigmoid_focal_loss` per pixel, mean over valid pixels.
  SAM / ``lightning_coco_boxes``: alpha 0.25, ``labpics_sam2``: 0.3, ``finestsam_points``: 0.8, ``dlo_cables``: 0.85 or 0.15; gamma 2.
- ``dice``: 1 − (2Σpt + s) / (Σp + Σt + s) on sigmoid probabilities; s = 1 (``labpics_sam2``, ``lightning_coco_boxes``), 1e-7 (``finestsam_points``).
- ``bce``: binary cross-entropy, mean over valid pixels (``mobilesam_boxes``).
- ``iou``: soft IoU loss 1 − (Σpt + s) / (Σp + Σt − Σpt + s) on probabilities (``mobilesam_boxes``: s = 0).
  With ``iou_tanh_scale=3`` it is 1 − tanh(3·softIoU), ``labpics_sam2``'s form. ``labpics_sam2`` computes that on
  thresholded masks, so it has no gradient there and only shifts the logged total; samtune
  computes it on probabilities so it trains.
- ``iou_head``: MSE (or L1) between the predicted IoU and the actual IoU of the mask
  thresholded at logit 0 (not 0.5, the ``lightning_coco_boxes``/``finestsam_points`` quirk), with the union clamped to at least one
  pixel as in ``labpics_sam2`` and SAM 2 (an empty prediction of an empty target has target IoU 0, which
  teaches the head to score empty masks low, as automatic mask generation wants). ``finestsam_points``
  regresses one value per image (the mean predicted IoU against the image's mean IoU);
  samtune regresses every mask, which gives the head a target per prediction it makes.

Weights: SAM, ``lightning_coco_boxes``, ``finestsam_points``: ``{"focal": 20, "dice": 1, "iou_head": 1}``; ``labpics_sam2``: ``{"dice": 0.4,
"focal": 12, "iou_head": 5, "iou": 2}`` with ``iou_tanh_scale=3``; ``dlo_cables``: ``{"focal": 20, "dice":
1}``; ``mobilesam_boxes``: ``{"bce": 1, "iou": 1}``.

Multimask (SAM's rule): with K candidates per object only the best candidate, the one with the
lowest weighted sum of the mask terms (SAM 2: focal and dice), is back-propagated; the IoU head
is trained on all K (``iou_head_all=True``; ``False`` trains it on the best one only).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from samtune.metrics import confusion_counts

MASK_TERMS = ("focal", "dice", "bce", "iou")
TERMS = MASK_TERMS + ("iou_head",)
SAM_WEIGHTS: dict[str, float] = {"focal": 20.0, "dice": 1.0, "iou_head": 1.0}


def _prepare(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Check shapes; return float32 logits (N, K, P), targets (N, 1, P), valid (N, 1, P)."""
    if logits.dim() not in (3, 4):
        raise ValueError(
            f"mask logits must be (N, H, W) or (N, K, H, W), got {tuple(logits.shape)}"
        )
    n, (h, w) = logits.shape[0], logits.shape[-2:]
    if tuple(targets.shape) != (n, h, w):
        raise ValueError(
            f"targets must be (N, H, W) = {(n, h, w)} to match logits {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    k = logits.shape[1] if logits.dim() == 4 else 1
    x = logits.float().reshape(n, k, h * w)
    t = targets.reshape(n, 1, h * w).to(x.dtype)
    if valid is None:
        return x, t, None
    if tuple(valid.shape) == (h, w):
        valid = valid.expand(n, h, w)
    if tuple(valid.shape) != (n, h, w):
        raise ValueError(
            f"valid must be (H, W) or (N, H, W) = {(n, h, w)}, got {tuple(valid.shape)}"
        )
    return x, t, valid.reshape(n, 1, h * w).to(x.dtype)


def _restore(per_mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(N, K) -> (N,) when the logits had no K dimension."""
    return per_mask[:, 0] if logits.dim() == 3 else per_mask


class _Pixels:
    """Prepared logits, targets and valid pixels of one loss call, with the per-pixel
    quantities the mask terms share (probabilities, cross-entropy, masked sums) computed once.

    The loss runs at the input frame (N x 1024 x 1024 for SAM), where every elementwise pass
    over the pixels costs about as much as the decoder, so each pass is made once (the
    figures: README, "Training step against the reference loop").
    """

    def __init__(self, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None) -> None:
        self.x, self.t, self.v = _prepare(logits, targets, valid)

    @functools.cached_property
    def p(self) -> torch.Tensor:
        return self.x.sigmoid()

    @functools.cached_property
    def ce(self) -> torch.Tensor:
        """Per-pixel binary cross-entropy with logits (N, K, P)."""
        return F.binary_cross_entropy_with_logits(self.x, self.t.expand_as(self.x), reduction="none")

    @functools.cached_property
    def valid_count(self) -> torch.Tensor | None:
        return None if self.v is None else self.v.sum(-1).clamp_min(1.0)

    @functools.cached_property
    def soft_sums(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Σpt, Σp, Σt over the valid pixels of each mask, (N, K) each."""
        p, t = self.p, self.t
        if self.v is not None:
            p, t = p * self.v, t * self.v
        return (p * t).sum(-1), p.sum(-1), t.sum(-1).expand(p.shape[:2])

    def pixel_mean(self, loss: torch.Tensor) -> torch.Tensor:
        """Mean of (N, K, P) pixel losses over the valid pixels of each mask -> (N, K)."""
        if self.v is None:
            return loss.mean(-1)
        return (loss * self.v).sum(-1) / self.valid_count

    def focal(self, alpha: float | None, gamma: float) -> torch.Tensor:
        """torchvision's ``sigmoid_focal_loss`` per pixel, for binary targets: 1 − p_t is
        |p − t|, and alpha_t is alpha on foreground, 1 − alpha on background."""
        error = (self.p - self.t).abs()
        modulating = error.square() if gamma == 2 else error.pow(gamma)
        pixel = self.ce * modulating
        if alpha is not None and alpha >= 0:
            pixel = pixel * (self.t * (2 * alpha - 1) + (1 - alpha))
        return self.pixel_mean(pixel)

    def bce(self) -> torch.Tensor:
        return self.pixel_mean(self.ce)

    def dice(self, smooth: float) -> torch.Tensor:
        inter, p_sum, t_sum = self.soft_sums
        den = p_sum + t_sum + smooth
        ratio = (2 * inter + smooth) / den.clamp_min(1e-12)
        return torch.where(den > 0, 1 - ratio, torch.zeros_like(ratio))

    def soft_iou(self, smooth: float, tanh_scale: float | None) -> torch.Tensor:
        inter, p_sum, t_sum = self.soft_sums
        union = p_sum + t_sum - inter + smooth
        soft_iou = torch.where(union > 0, (inter + smooth) / union.clamp_min(1e-12), torch.ones_like(union))
        if tanh_scale is not None:
            soft_iou = torch.tanh(tanh_scale * soft_iou)
        return 1 - soft_iou


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Sigmoid focal loss per mask (:func:`torchvision.ops.sigmoid_focal_loss` per pixel),
    mean over valid pixels; ``alpha=None`` disables weighting."""
    return _restore(_Pixels(logits, targets, valid).focal(alpha, gamma), logits)


def bce_loss(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy per mask, mean over valid pixels."""
    return _restore(_Pixels(logits, targets, valid).bce(), logits)


def dice_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    smooth: float = 1.0,
) -> torch.Tensor:
    """1 − (2Σpt + s)/(Σp + Σt + s) per mask on probabilities; 0 where the denominator is 0."""
    return _restore(_Pixels(logits, targets, valid).dice(smooth), logits)


def soft_iou_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    smooth: float = 0.0,
    tanh_scale: float | None = None,
) -> torch.Tensor:
    """1 − softIoU per mask, softIoU = (Σpt + s)/(Σp + Σt − Σpt + s) on probabilities.

    ``tanh_scale=c`` gives 1 − tanh(c·softIoU) (``labpics_sam2`` uses c = 3 on hard masks, without gradient).
    Where the soft union is 0 (both empty), softIoU counts as 1 and the loss is at its minimum.
    """
    return _restore(_Pixels(logits, targets, valid).soft_iou(smooth, tanh_scale), logits)


def actual_iou(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """IoU of ``logits > 0`` with the target per mask, union clamped to ≥ 1 pixel (no grad)."""
    with torch.no_grad():
        t = targets[:, None] if logits.dim() == 4 else targets
        if valid is not None and logits.dim() == 4:
            valid = valid[:, None] if valid.dim() == 3 else valid
        counts = confusion_counts(logits > 0, t, valid)
        union = (counts.tp + counts.fp + counts.fn).clamp_min(1)
        return counts.tp.float() / union.float()


def iou_head_loss(
    iou_pred: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    kind: str = "mse",
) -> torch.Tensor:
    """Per-mask regression loss of the IoU head's ``iou_pred`` ((N,) or (N, K), like the
    logits) against :func:`actual_iou`; ``kind`` is ``"mse"`` or ``"l1"``."""
    target_iou = actual_iou(logits, targets, valid)
    if tuple(iou_pred.shape) != tuple(target_iou.shape):
        raise ValueError(
            f"iou_pred must have shape {tuple(target_iou.shape)} to match the mask logits, "
            f"got {tuple(iou_pred.shape)}"
        )
    if kind == "mse":
        return F.mse_loss(iou_pred.float(), target_iou, reduction="none")
    if kind == "l1":
        return F.l1_loss(iou_pred.float(), target_iou, reduction="none")
    raise ValueError(f"iou head loss kind must be 'mse' or 'l1', got {kind!r}")


@dataclass
class LossOutput:
    """``total``: the weighted sum to back-propagate. ``parts``: each term, unweighted and
    normalized per mask, for logging (still attached to the graph). ``best``: (N,) index of
    the candidate mask each object was trained on (0 everywhere for single-mask output)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    best: torch.Tensor


class SegmentationLoss(nn.Module):
    """Weighted sum of the terms in ``weights`` (names from :data:`TERMS`), normalized per mask.

    A term listed with weight 0 is computed and reported in ``parts`` but not trained on.
    ``forward(logits, targets, iou_pred=None, valid=None, num_masks=None)``: ``iou_pred`` is
    needed when ``iou_head`` is weighted; ``num_masks`` defaults to N (see module docstring).
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        focal_alpha: float | None = 0.25,
        focal_gamma: float = 2.0,
        dice_smooth: float = 1.0,
        iou_smooth: float = 0.0,
        iou_tanh_scale: float | None = None,
        iou_head_kind: str = "mse",
        iou_head_all: bool = True,
    ) -> None:
        super().__init__()
        weights = dict(SAM_WEIGHTS if weights is None else weights)
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown loss terms {unknown}; choose from {list(TERMS)}")
        if not any(weights.get(name, 0) for name in MASK_TERMS):
            raise ValueError(
                f"loss weights {weights} give no mask term {list(MASK_TERMS)} a weight"
            )
        if iou_head_kind not in ("mse", "l1"):
            raise ValueError(f"iou_head_kind must be 'mse' or 'l1', got {iou_head_kind!r}")
        self.weights = weights
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.dice_smooth, self.iou_smooth = dice_smooth, iou_smooth
        self.iou_tanh_scale = iou_tanh_scale
        self.iou_head_kind, self.iou_head_all = iou_head_kind, iou_head_all

    def mask_terms(
        self, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Per-candidate values (N, K) of the mask terms named in ``weights`` (logits
        (N, K, H, W)), sharing their per-pixel work."""
        pixels = _Pixels(logits, targets, valid)
        fns = {
            "focal": lambda: pixels.focal(self.focal_alpha, self.focal_gamma),
            "dice": lambda: pixels.dice(self.dice_smooth),
            "bce": pixels.bce,
            "iou": lambda: pixels.soft_iou(self.iou_smooth, self.iou_tanh_scale),
        }
        return {name: fns[name]() for name in MASK_TERMS if name in self.weights}

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        iou_pred: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        num_masks: int | torch.Tensor | None = None,
    ) -> LossOutput:
        if logits.dim() == 3:
            logits = logits[:, None]
            iou_pred = None if iou_pred is None else iou_pred.reshape(-1, 1)
        per_candidate = self.mask_terms(logits, targets, valid)
        best = self._select(per_candidate, logits)
        rows = torch.arange(logits.shape[0], device=logits.device)
        per_mask = {name: v[rows, best] for name, v in per_candidate.items()}
        if "iou_head" in self.weights:
            per_mask["iou_head"] = self._iou_head(iou_pred, logits, targets, valid, rows, best)
        denom = torch.as_tensor(logits.shape[0] if num_masks is None else num_masks)
        denom = denom.to(logits.device, torch.float32).clamp_min(1.0)
        parts = {name: v.sum() / denom for name, v in per_mask.items()}
        total = sum(
            (self.weights[name] * parts[name] for name in parts), logits.new_zeros(()).float()
        )
        return LossOutput(total, parts, best)

    def _select(self, per_candidate: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """Index (N,) of the candidate with the lowest weighted mask loss (SAM's rule)."""
        n, k = logits.shape[:2]
        if k == 1:
            return torch.zeros(n, dtype=torch.long, device=logits.device)
        score = sum(self.weights[name] * v.detach() for name, v in per_candidate.items())
        return score.argmin(dim=1)

    def _iou_head(
        self,
        iou_pred: torch.Tensor | None,
        logits: torch.Tensor,
        targets: torch.Tensor,
        valid: torch.Tensor | None,
        rows: torch.Tensor,
        best: torch.Tensor,
    ) -> torch.Tensor:
        """Per-object IoU-head loss: mean over all K candidates, or the best one only."""
        if iou_pred is None:
            raise ValueError(
                "the iou_head loss term needs iou_pred (the decoder's IoU predictions)"
            )
        per_candidate = iou_head_loss(iou_pred, logits, targets, valid, self.iou_head_kind)
        return per_candidate.mean(1) if self.iou_head_all else per_candidate[rows, best]


def class_loss(logits: torch.Tensor, targets: torch.Tensor,
               num_masks: int | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of class logits (N, K, C) against (N,) class indices, averaged over each
    object's K candidates (every candidate covers the same object: at inference each one is
    labelled, as automatic masks are), summed over objects and divided by ``num_masks`` (N by
    default), as the mask terms. Targets of -100 are ignored."""
    n, k, c = logits.shape
    per = F.cross_entropy(logits.float().reshape(n * k, c), targets.repeat_interleave(k),
                          ignore_index=-100, reduction="none").reshape(n, k)
    denom = torch.as_tensor(n if num_masks is None else num_masks)
    denom = denom.to(logits.device, torch.float32).clamp_min(1.0)
    return per.mean(1).sum() / denom
