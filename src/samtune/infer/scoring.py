"""Scoring of ``samtune eval``: each image's record in a mode, and their aggregates (mean over
masks, mean over images, pooled pixels, per category, COCO mask AP).

Metrics are :func:`samtune.metrics.mask_metrics` at the original image size (boundary F1
with ``labpics_sam2``'s exact band, IoU of empty vs empty = 1). The automatic mode's AP is
class-agnostic COCO mask AP through pycocotools (iouType ``segm``, ``useCats=0``, scores =
predicted IoU, the standard maxDets 100), per category too when the data has several
(:func:`coco_ap_per_category`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from samtune.infer.rle import encode_coco_rles
from samtune.metrics import (
    METRIC_NAMES,
    Counts,
    confusion_counts,
    mask_metrics,
    object_chunks,
)

#: COCOeval's 12 summary numbers, in its order
COCO_STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


# --- records --------------------------------------------------------------------------------


@dataclass
class ImageRecord:
    """One image in one mode: its path, object count, each compared mask's metric values and
    category id (-1 without categories), its pooled pixel counts (tp, fp, fn, tn), and the
    category the model's class head gave each mask (prompted modes of a model with one)."""

    path: str
    n_objects: int
    values: dict[str, list[float]]
    categories: list[int]
    counts: tuple[int, int, int, int]
    predicted: list[int] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"path": self.path, "n_objects": self.n_objects, "categories": self.categories,
               **{k: [round(v, 6) for v in vs] for k, vs in self.values.items()}}
        if self.predicted is not None:
            out["predicted_categories"] = self.predicted
        return out


def score_image(pred: np.ndarray, truth: np.ndarray, categories: Sequence[int], path: str,
                n_objects: int) -> ImageRecord:
    """The record of (k, H, W) predicted vs true masks of one image."""
    p, t = torch.from_numpy(pred), torch.from_numpy(truth)
    values = mask_metrics(p, t)
    counts = [0, 0, 0, 0]
    for rows in object_chunks(len(p), *p.shape[-2:]):
        c = confusion_counts(p[rows], t[rows])
        for i, k in enumerate(("tp", "fp", "fn", "tn")):
            counts[i] += int(getattr(c, k).sum())
    counts = tuple(counts)
    return ImageRecord(path, n_objects, {k: v.tolist() for k, v in values.items()},
                       list(categories), counts)  # type: ignore[arg-type]


@dataclass
class ModeResult:
    """Every image record of one model in one mode; ``detections`` (auto): COCO results,
    with the class head's categories when ``classified``."""

    mode: str
    images: list[ImageRecord] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)
    classified: bool = False

    def values(self, name: str) -> np.ndarray:
        """Every mask's value of metric ``name``, image by image."""
        return np.asarray([v for r in self.images for v in r.values[name]], dtype=np.float64)

    def image_means(self, name: str) -> np.ndarray:
        """Per-image mean of ``name`` for the images with at least one compared mask."""
        return np.asarray([np.mean(r.values[name]) for r in self.images if r.values[name]])


@dataclass
class GroundTruth:
    """COCO ground truth gathered along the way, for the automatic mode's AP."""

    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    categories: set[int] = field(default_factory=set)

    def add(self, image_id: int, truth: np.ndarray, categories: Sequence[int]) -> None:
        h, w = truth.shape[1:]
        self.images.append({"id": image_id, "height": h, "width": w})
        for rle, category in zip(encode_coco_rles(truth), categories):
            category = category if category >= 0 else 1  # data without categories: one
            self.categories.add(category)
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": image_id, "iscrowd": 0,
                "category_id": category, "segmentation": rle,
                "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist()})


# --- aggregation ----------------------------------------------------------------------------


def summarize(result: ModeResult, category_names: Mapping[int, str] | None = None
              ) -> dict[str, Any]:
    """The aggregates of one mode: ``mask`` (mean over masks), ``image`` (mean over images of
    the per-image mean), ``micro`` (pixels pooled over the dataset) and ``per_category``."""
    counts = np.asarray([r.counts for r in result.images], dtype=np.int64).reshape(-1, 4).sum(0)
    pooled = Counts(*(torch.tensor(int(c)) for c in counts))
    out: dict[str, Any] = {
        "n_images": len(result.images),
        "n_masks": int(sum(len(r.values["iou"]) for r in result.images)),
        "mask": {k: _mean(result.values(k)) for k in METRIC_NAMES},
        "image": {k: _mean(result.image_means(k)) for k in METRIC_NAMES},
        "micro": {"iou": float(pooled.iou()), "dice": float(pooled.dice()),
                  "pixel_accuracy": float(pooled.accuracy()),
                  "precision": float(pooled.precision()), "recall": float(pooled.recall())},
    }
    categories = np.asarray([c for r in result.images for c in r.categories])
    per_category = {}
    for cid in sorted(set(categories.tolist()) - {-1}):
        pick = categories == cid
        name = (category_names or {}).get(cid, f"category {cid}")
        per_category[str(cid)] = {"name": name, "n_masks": int(pick.sum()),
                                  **{k: _mean(result.values(k)[pick]) for k in METRIC_NAMES}}
    predicted = [r.predicted for r in result.images]
    if predicted and all(p is not None for p in predicted):
        guess = np.asarray([c for p in predicted for c in p])
        known = categories != -1
        out["class_accuracy"] = _mean((guess == categories)[known].astype(np.float64))
        for cid, entry in per_category.items():
            pick = categories == int(cid)
            entry["class_recall"] = _mean((guess[pick] == int(cid)).astype(np.float64))
    out["per_category"] = per_category
    return out


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def coco_ap(truth: GroundTruth, detections: list[dict],
            categories: Sequence[int] | None = None) -> dict[str, float | None]:
    """COCOeval's 12 summary numbers (:data:`COCO_STATS`) of class-agnostic mask AP; ``None``
    where COCO reports -1 (no ground truth in that area range). Without any detection every
    number is 0. With ``categories``: COCO's own class-aware AP over those category ids (a
    mask counts only on objects of the category it was labelled with), for detections a
    class head labelled."""
    if not detections or not truth.annotations:
        return {k: 0.0 for k in COCO_STATS}
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": truth.images, "annotations": truth.annotations,
                      "categories": [{"id": c, "name": str(c)} for c in sorted(truth.categories)]}
        gt.createIndex()
        # without "bbox", loadRes takes each detection's area from its mask: AP_small, medium
        # and large then sort detections by mask area, as the ground truth (a thin diagonal
        # object has a large box and a small mask); it writes into the records: give it copies
        masks_only = [{k: v for k, v in d.items() if k not in ("bbox", "area")} for d in detections]
        evaluator = COCOeval(gt, gt.loadRes(masks_only), iouType="segm")
        evaluator.params.useCats = int(categories is not None)
        if categories is not None:
            evaluator.params.catIds = sorted(int(c) for c in categories)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {k: (None if v < 0 else float(v)) for k, v in zip(COCO_STATS, evaluator.stats)}


def coco_ap_per_category(truth: GroundTruth, detections: list[dict],
                         category_names: Mapping[int, str] | None = None) -> dict[str, dict]:
    """COCO mask AP of the class-agnostic automatic masks per ground-truth category.

    For category c, the objects of c are the ground truth and the objects of every other
    category are marked crowd, which COCOeval ignores: a mask that lands on another
    category's object is neither a hit nor a false positive for c. A mask on background is a
    false positive for every category. Only for data with more than one category (with one,
    it is the overall AP). Category id -> ``name``, ``n_objects`` and COCOeval's summary."""
    if len(truth.categories) < 2:
        return {}
    out = {}
    for cid in sorted(truth.categories):
        marked = [{**a, "iscrowd": int(a["category_id"] != cid)} for a in truth.annotations]
        view = GroundTruth(truth.images, marked, truth.categories)
        n = sum(a["category_id"] == cid for a in truth.annotations)
        out[str(cid)] = {"name": (category_names or {}).get(cid, f"category {cid}"),
                         "n_objects": n, **coco_ap(view, detections)}
    return out


def coco_ap_classes(truth: GroundTruth, detections: list[dict],
                    category_names: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Class-aware COCO mask AP of automatic masks a class head labelled: ``all`` (COCO's
    mean over the ground-truth categories) and ``per_category`` (each category alone)."""
    ids = sorted(truth.categories)
    out: dict[str, Any] = {"all": coco_ap(truth, detections, ids), "per_category": {}}
    for cid in ids:
        n = sum(a["category_id"] == cid for a in truth.annotations)
        out["per_category"][str(cid)] = {"name": (category_names or {}).get(cid, f"category {cid}"),
                                         "n_objects": n, **coco_ap(truth, detections, [cid])}
    return out
