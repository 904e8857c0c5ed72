"""What one click (or "segment everything") asks of each model, as JSON-ready records.

Masks travel as COCO RLE (``{"size": [H, W], "counts": str}``): what labelling tools and
pycocotools read, a few hundred bytes for a typical mask, and decoded by the page itself.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from samtune.data.sample import Sample
from samtune.infer.rle import encode_coco_rles
from samtune.serve.images import Opened
from samtune.serve.models import Slot
from samtune.serve.schemas import AutoRequest, PredictRequest


def predict_slot(slot: Slot, opened: Opened, request: PredictRequest) -> dict[str, Any]:
    """One model's masks for the prompts: candidates (3 with ``multimask``, else 1), their
    predicted IoU, the index of the best, and each candidate's IoU with the best-matching
    ground-truth object when the image has ground truth. ``encode_ms`` is null when the
    image embedding was kept from an earlier call."""
    points = np.asarray(request.points, dtype=np.float64).reshape(-1, 2) if request.points else None
    labels = np.asarray(request.labels, dtype=np.int64) if request.points else None
    box = np.asarray(request.box, dtype=np.float64) if request.box is not None else None
    with slot.lock:
        predictor, encode_ms = slot.predictor(opened.entry.id, opened.image)
        start = time.perf_counter()
        masks, scores, _ = predictor.predict(point_coords=points, point_labels=labels, box=box,
                                             multimask_output=request.multimask)
        decode_ms = (time.perf_counter() - start) * 1000
        categories = candidate_categories(slot.adapter.class_head, predictor.class_probs)
    truth_iou, truth_object = truth_matches(masks, opened.truth)
    return {
        "model": slot.id,
        "masks": encode_coco_rles(masks),
        "scores": [round(float(s), 4) for s in scores],
        "best": int(np.argmax(scores)),
        "areas": [int(m.sum()) for m in masks],
        "truth_iou": truth_iou,
        "truth_object": truth_object,
        "categories": categories,
        "encode_ms": None if encode_ms is None else round(encode_ms, 1),
        "decode_ms": round(decode_ms, 1),
    }


def auto_slot(slot: Slot, opened: Opened, request: AutoRequest) -> dict[str, Any]:
    """Everything one model segments, largest first so that the page draws small masks on top."""
    from samtune.infer.automatic import AutomaticMaskGenerator

    options = {"points_per_side": request.points_per_side,
               "pred_iou_thresh": request.pred_iou_thresh,
               "stability_score_thresh": request.stability_score_thresh,
               "min_mask_region_area": request.min_mask_region_area}
    with slot.lock:
        start = time.perf_counter()
        generator = AutomaticMaskGenerator(slot.adapter, output_mode="coco_rle", **options)
        records = generator.generate(opened.image)
        ms = (time.perf_counter() - start) * 1000
    records.sort(key=lambda r: -r["area"])
    head = slot.adapter.class_head
    return {
        "model": slot.id,
        "ms": round(ms, 1),
        "pred_iou_thresh": generator.pred_iou_thresh,
        "masks": [{"mask": r["segmentation"], "area": int(r["area"]),
                   "bbox": [round(float(v), 1) for v in r["bbox"]],
                   "predicted_iou": round(float(r["predicted_iou"]), 4),
                   "stability_score": round(float(r["stability_score"]), 4),
                   "point": [round(float(v), 1) for v in r["point_coords"][0]],
                   **({"category": head.categories[r["category_id"]],
                       "category_score": round(float(r["category_score"]), 4)}
                      if head is not None else {})} for r in records],
    }


def candidate_categories(head, probs: np.ndarray | None) -> list[dict] | None:
    """Each candidate's most likely category (a model with a class head; else None)."""
    if head is None or probs is None:
        return None
    return [{"id": head.ids[i], "name": head.names[i], "score": round(float(p[i]), 4)}
            for i, p in zip(probs.argmax(-1), probs)]


def truth_matches(masks: np.ndarray, truth: Sample | None
                  ) -> tuple[list[float] | None, list[int] | None]:
    """For each (H, W) candidate mask: the IoU with the ground-truth object it overlaps best,
    and that object's position in the sample (None for both without ground truth). A label
    map is counted per id in one pass over the mask's pixels, not one full plane per object."""
    if truth is None:
        return None, None
    if truth.label_map is not None:
        ids = truth.object_ids
        areas = _id_counts(truth.label_map, ids)
        inters = [_id_counts(truth.label_map[mask], ids) for mask in masks]
    else:
        objects = truth.object_masks().reshape(len(truth), -1)
        areas = objects.sum(axis=1)
        inters = [objects[:, mask.reshape(-1)].sum(axis=1) for mask in masks]
    ious, which = [], []
    for mask, inter in zip(masks, inters):
        union = areas + int(mask.sum()) - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        best = int(np.argmax(iou))
        ious.append(round(float(iou[best]), 4))
        which.append(best)
    return ious, which


def _id_counts(values: np.ndarray, ids: list[int]) -> np.ndarray:
    """How many pixels of ``values`` hold each of ``ids``."""
    found, counts = np.unique(values, return_counts=True)
    lookup = dict(zip(found.tolist(), counts.tolist()))
    return np.array([lookup.get(i, 0) for i in ids], dtype=np.int64)
