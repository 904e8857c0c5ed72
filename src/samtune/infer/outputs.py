"""What ``samtune predict`` writes: mask PNGs or a label map, an overlay per image, and one COCO
file with every mask as RLE.

``predictions.json`` is a complete COCO instance file (``images``, ``annotations`` with
``segmentation`` as compressed RLE, ``score``, ``bbox``, ``area``, and ``categories``), so it
opens in pycocotools, in labeling tools that import COCO, and as a samtune dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from samtune.files import write_json, write_png
from samtune.prompts import ObjectPrompt
from samtune.infer.rle import encode_coco_rle
from samtune.infer.visualize import overlay


PREDICTIONS_FILE = "predictions.json"


@dataclass
class ImagePrediction:
    """One image's predicted objects: (N, H, W) bool masks and (N,) scores, with the prompts
    that produced them (none in automatic mode) and any per-object extras (stability score,
    point coordinates...) that go into the COCO annotations. ``labels``: the class head's
    (category id, name, probability) of each mask, for models with one."""

    name: str
    image: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    prompts: list[ObjectPrompt] | None = None
    extras: list[dict] = field(default_factory=list)
    candidates: np.ndarray | None = None
    labels: list[tuple[int, str, float]] | None = None


def label_map(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool masks -> one (H, W) map with object i as value i + 1, 0 background.

    Larger masks are painted first, so where masks overlap the smaller one stays visible.
    uint8 when it fits, else uint16 (a 16-bit PNG).
    """
    h, w = masks.shape[1:]
    dtype = np.uint8 if len(masks) < 256 else np.uint16
    out = np.zeros((h, w), dtype=dtype)
    for i in np.argsort([-m.sum() for m in masks], kind="stable"):
        out[masks[i]] = i + 1
    return out


def write_image_outputs(
    prediction: ImagePrediction, output: Path, as_label_map: bool = False, opacity: float = 0.5
) -> list[Path]:
    """``<stem>_mask_<i>.png`` per object (``<stem>_mask_<i>_<k>.png`` per candidate when
    there are several), or ``<stem>_labels.png`` with ``as_label_map``, and
    ``<stem>_overlay.png``."""
    stem = Path(prediction.name).with_suffix("").as_posix().replace("/", "__")
    written = []
    if as_label_map:
        written.append(write_png(output / f"{stem}_labels.png", label_map(prediction.masks)))
    else:
        for i, mask in enumerate(prediction.masks):
            written.append(write_png(output / f"{stem}_mask_{i}.png", mask))
            if prediction.candidates is not None and len(prediction.candidates[i]) > 1:
                written += [write_png(output / f"{stem}_mask_{i}_{k}.png", m)
                            for k, m in enumerate(prediction.candidates[i])]
    prompts = prediction.prompts or []
    boxes = [p.box for p in prompts if p.box is not None]
    points = [(pt, lab) for p in prompts if p.points is not None for pt, lab in zip(p.points, p.point_labels)]
    labels = prediction.labels
    classes = sorted({c for c, _, _ in labels}) if labels else []
    picture = overlay(
        prediction.image, prediction.masks, opacity,
        boxes=np.array(boxes) if boxes else None,
        points=np.array([p for p, _ in points]) if points else None,
        point_labels=np.array([lab for _, lab in points]) if points else None,
        colours=[classes.index(c) for c, _, _ in labels] if labels else None,
        texts=[f"{name} {p:.2f}" for _, name, p in labels] if labels else None,
    )
    written.append(write_png(output / f"{stem}_overlay.png", picture))
    return written


class CocoWriter:
    """Collects predictions image by image and writes them as one COCO instance file."""

    def __init__(self, reserved_ids: set[int] | None = None) -> None:
        """``reserved_ids``: image ids of the prompt file, never given to another image."""
        self.reserved = set(reserved_ids or ())
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.categories: dict[int, str] = {}
        #: the other files of this result, listed in ``info`` so the next predict into the
        #: same folder removes exactly them
        self.files: list[str] = []

    def add(self, prediction: ImagePrediction) -> None:
        """Image ids and category ids come from the prompts when a COCO file gave them, so
        the predictions score against that file (``COCO.loadRes`` + ``COCOeval``); else
        images are numbered from 1; objects get the class head's category where the model has
        one, else category 1."""
        h, w = prediction.image.shape[:2]
        given = next((p.image_id for p in prediction.prompts or [] if p.image_id is not None), None)
        taken = {img["id"] for img in self.images} | self.reserved
        image_id = given if given is not None else max(taken, default=0) + 1
        self.images.append({"id": image_id, "file_name": prediction.name, "height": h, "width": w})
        for i, mask in enumerate(prediction.masks):
            prompt = prediction.prompts[i] if prediction.prompts else None
            label = prediction.labels[i] if prediction.labels else None
            if prompt and prompt.category_id is not None:
                category, name = prompt.category_id, prompt.category_name
            elif label is not None:
                category, name = label[0], label[1]
            else:
                category, name = 1, None
            self.categories.setdefault(category, name or ("object" if category == 1
                                                          else f"category_{category}"))
            ys, xs = np.nonzero(mask)
            bbox = ([float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                     float(ys.max() - ys.min() + 1)] if len(xs) else [0.0, 0.0, 0.0, 0.0])
            ann = {
                "id": len(self.annotations) + 1, "image_id": image_id, "category_id": category,
                "segmentation": encode_coco_rle(mask), "area": int(mask.sum()), "bbox": bbox,
                "iscrowd": 0, "score": round(float(prediction.scores[i]), 6),
            }
            if label is not None:
                ann["predicted_category_id"], ann["category_score"] = label[0], round(label[2], 6)
            if prompt is not None:
                ann["prompt"] = prompt.to_json()
            if prediction.extras:
                ann.update(prediction.extras[i])
            self.annotations.append(ann)

    def write(self, path: Path) -> Path:
        categories = [{"id": c, "name": n} for c, n in sorted((self.categories or {1: "object"}).items())]
        return write_json(path, {"info": {"samtune_files": self.files}, "images": self.images,
                                 "annotations": self.annotations, "categories": categories})
