"""Evaluation of a model over a dataset, per prompt mode: per-mask and per-image records, and
their aggregates (mean over masks, mean over images, pooled pixels, per category, COCO AP).

Prompt modes (every prompt in original image pixels, the same for every model, and the same
for the same ``seed``; an image's random draws come from ``default_rng([seed, index])``, so
they do not depend on which other images or modes are evaluated):

- ``box``: the object's tight box (:meth:`Sample.boxes`), one mask per object.
- ``point``: the object's most interior pixel (the maximum of its distance transform, the image
  border counting as edge; ties to the first pixel in row-major order), three candidate masks,
  the one with the highest predicted IoU kept, as SAM's paper evaluates single points.
- ``points3``: that point plus 2 more positive points drawn uniformly from the object's other
  pixels with the seed; one mask.
- ``box+point``: the box and the interior point; one mask.
- ``none``: no prompt at all; one mask per image, compared with the union of the objects (the
  prompt-free, semantic use of a fine-tuned decoder).
- ``auto``: :class:`~samtune.infer.automatic.AutomaticMaskGenerator`; class-agnostic COCO mask
  AP through pycocotools (iouType ``segm``, ``useCats=0``, scores = predicted IoU, the standard
  maxDets 100), per category too when the data has several (:func:`coco_ap_per_category`),
  and each ground-truth object matched to its best-IoU generated mask so that ``auto`` also
  has per-mask rows.

With ``EvalSettings.tile_shape`` (``--tile-shape``/``--halo``) every mode runs by tiles
(:mod:`samtune.infer.tiling`): large images are evaluated at full resolution.

Metrics are :func:`samtune.metrics.mask_metrics` at the original image size (boundary
F1 with ``labpics_sam2``'s exact band, IoU of empty vs empty = 1). Objects without pixels are left out.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from rich.console import Console
from tqdm.auto import tqdm

from samtune.data.prompts import PAD_LABEL, inner_distance
from samtune.data.sample import Sample
from samtune.errors import SamtuneError
from samtune.infer.predictor import Predictor
from samtune.infer.report import (
    PanelCase,
    console_table,
    warning_line,
    worse_than_base,
    write_report,
)
from samtune.infer.rle import coco_results, encode_coco_rles
from samtune.models.adapter import Adapter
from samtune.metrics import (
    METRIC_NAMES,
    Counts,
    confusion_counts,
    mask_metrics,
    object_chunks,
)

#: every prompt mode, in report order
MODES = ("box", "point", "points3", "box+point", "none", "auto")
#: what each mode means, for the report
MODE_DESCRIPTIONS = {
    "box": "tight box of the object, one mask",
    "point": "most interior pixel (distance-transform maximum), best of 3 masks by predicted IoU",
    "points3": "interior point + 2 random positive points (seeded), one mask",
    "box+point": "tight box + interior point, one mask",
    "none": "no prompt, one mask per image vs the union of the objects",
    "auto": "automatic mask generator; each object matched to its best-IoU mask; COCO AP",
}
#: COCOeval's 12 summary numbers, in its order
COCO_STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


@dataclass
class EvalSettings:
    """How to evaluate: which modes, the seed of the random prompts, at most how many images
    (the first ones), how many objects per decoder call, and the automatic generator's
    keyword arguments."""

    modes: tuple[str, ...] = MODES
    seed: int = 0
    max_images: int | None = None
    batch_objects: int = 64
    amg: dict[str, Any] = field(default_factory=dict)
    tile_shape: tuple[int, int] | None = None
    halo: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise SamtuneError(f"unknown prompt mode(s) {', '.join(unknown) or '(none given)'}; "
                               f"choose from {','.join(MODES)}")
        if self.batch_objects < 1:
            raise ValueError(f"batch_objects must be >= 1, got {self.batch_objects}")

    def predictor(self, model: Adapter) -> Predictor:
        """The prompted predictor of every mode, tiled when ``tile_shape`` is set."""
        return Predictor(model, tile_shape=self.tile_shape, halo=self.halo)

    def generator(self, model: Adapter):
        """The automatic mask generator of mode ``auto``, tiled when ``tile_shape`` is set."""
        return automatic_generator(model, {**self.amg, "tile_shape": self.tile_shape,
                                           "halo": self.halo})


# --- prompts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectPrompts:
    """The prompts of an image's N objects: (N, 4) xyxy boxes and (N, 3, 2) xy points with
    (N, 3) labels; point 0 is the interior point, points 1-2 the seeded extra positives
    (label -1, padding, where the object has fewer than 3 pixels)."""

    boxes: np.ndarray
    points: np.ndarray
    labels: np.ndarray


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) pixel of ``mask`` farthest from its edge (and the image border)."""
    if not mask.any():
        raise ValueError("interior_point: the mask is empty")
    y, x = np.unravel_index(int(np.argmax(inner_distance(mask))), mask.shape)
    return np.array([x, y], dtype=np.float32)


def object_prompts(masks: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> ObjectPrompts:
    """Prompts of every mode for (N, H, W) non-empty masks and their (N, 4) boxes."""
    points = np.zeros((len(masks), 3, 2), dtype=np.float32)
    labels = np.full((len(masks), 3), PAD_LABEL, dtype=np.int64)
    for i, mask in enumerate(masks):
        first = interior_point(mask)
        others = np.argwhere(mask)[:, ::-1]
        others = others[(others[:, 0] != first[0]) | (others[:, 1] != first[1])]
        take = min(2, len(others))
        chosen = others[rng.choice(len(others), size=take, replace=False)] if take else others[:0]
        points[i, 0], labels[i, 0] = first, 1
        points[i, 1:1 + take], labels[i, 1:1 + take] = chosen, 1
    return ObjectPrompts(np.asarray(boxes, dtype=np.float32), points, labels)


# --- prediction per mode --------------------------------------------------------------------


def predict_mode(predictor: Predictor, prompts: ObjectPrompts, mode: str,
                 batch_objects: int = 64) -> np.ndarray:
    """(N, H, W) bool masks of the objects of the image set on ``predictor`` for one prompted
    mode (``(1, H, W)`` for ``none``), at most ``batch_objects`` objects per decoder call."""
    if mode == "none":
        masks, _, _ = predictor.predict(multimask_output=False)
        return masks[:1]
    h, w = predictor.original_size
    out = np.zeros((len(prompts.boxes), h, w), dtype=bool)
    for start in range(0, len(out), batch_objects):
        s = slice(start, start + batch_objects)
        box = prompts.boxes[s] if mode in ("box", "box+point") else None
        n_points = {"box": 0, "point": 1, "points3": 3, "box+point": 1}[mode]
        coords = prompts.points[s, :n_points] if n_points else None
        labels = prompts.labels[s, :n_points] if n_points else None
        multimask = mode == "point"
        masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box,
                                             multimask_output=multimask)
        best = scores.argmax(axis=1) if multimask else np.zeros(len(masks), dtype=int)
        out[s] = masks[np.arange(len(masks)), best]
    return out


def best_matches(truth: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """(N, H, W): for each true mask, the generated mask (M, H, W) of highest IoU with it, or
    an empty mask when nothing was generated."""
    if len(generated) == 0 or len(truth) == 0:
        return np.zeros_like(truth)
    iou = mask_utils.iou(encode_coco_rles(generated), encode_coco_rles(truth), [0] * len(truth))  # (M, N)
    return generated[np.asarray(iou).argmax(axis=0)]


# --- records --------------------------------------------------------------------------------


@dataclass
class ImageRecord:
    """One image in one mode: its path, object count, each compared mask's metric values and
    category id (-1 without categories), and its pooled pixel counts (tp, fp, fn, tn)."""

    path: str
    n_objects: int
    values: dict[str, list[float]]
    categories: list[int]
    counts: tuple[int, int, int, int]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "n_objects": self.n_objects, "categories": self.categories,
                **{k: [round(v, 6) for v in vs] for k, vs in self.values.items()}}


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
    """Every image record of one model in one mode; ``detections`` (auto): COCO results."""

    mode: str
    images: list[ImageRecord] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)

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


# --- the loop -------------------------------------------------------------------------------


def evaluate_models(models: Mapping[str, Adapter], dataset: Sequence[Sample],
                    settings: EvalSettings, progress: bool = True
                    ) -> tuple[dict[str, dict[str, ModeResult]], GroundTruth]:
    """Run every model of ``models`` (label -> model) in every mode of ``settings`` over the
    dataset; each image is encoded once per model and its features reused across the prompted
    modes. Returns label -> mode -> :class:`ModeResult`, and the COCO ground truth."""
    predictors = {label: settings.predictor(model) for label, model in models.items()}
    generators = {label: settings.generator(model)
                  for label, model in models.items()} if "auto" in settings.modes else {}
    results = {label: {m: ModeResult(m) for m in settings.modes} for label in models}
    truth_coco = GroundTruth()
    prompted = any(m != "auto" for m in settings.modes)
    count = len(dataset) if settings.max_images is None else min(settings.max_images, len(dataset))
    for index in tqdm(range(count), desc="evaluating", unit="image", disable=not progress):
        sample = dataset[index]
        truth, categories, prompts = image_objects(sample, settings.seed, index)
        truth_coco.add(index + 1, truth, categories)
        for label, predictor in predictors.items():
            if prompted:
                predictor.set_image(sample.image)
            for mode in settings.modes:
                record, dets = score_mode(mode, predictor, generators.get(label), sample, truth,
                                          categories, prompts, settings.batch_objects, index + 1)
                results[label][mode].images.append(record)
                results[label][mode].detections.extend(dets)
            predictor.reset_image()
    return results, truth_coco


def score_mode(mode: str, predictor: Predictor, generator, sample: Sample, truth: np.ndarray,
               categories: Sequence[int], prompts: ObjectPrompts, batch_objects: int,
               image_id: int) -> tuple[ImageRecord, list[dict]]:
    """One image in one mode: its record, and (auto) its COCO detections. ``predictor`` has
    the image set already (prompted modes); ``generator`` makes the automatic masks."""
    if mode == "auto":
        generated, dets = run_automatic(generator, sample.image, image_id)
        return score_image(best_matches(truth, generated), truth, categories, sample.path,
                           len(truth)), dets
    if mode == "none":
        return score_image(predict_mode(predictor, prompts, mode), truth.any(0, keepdims=True),
                           [-1], sample.path, len(truth)), []
    return score_image(predict_mode(predictor, prompts, mode, batch_objects), truth, categories,
                       sample.path, len(truth)), []


def image_objects(sample: Sample, seed: int, index: int
                  ) -> tuple[np.ndarray, list[int], ObjectPrompts]:
    """The non-empty objects of ``sample``: (k, H, W) masks, category ids (-1 when the data
    has none), and their prompts drawn with ``default_rng([seed, index])``."""
    masks = sample.object_masks()
    keep = [i for i in range(len(masks)) if masks[i].any()]
    masks = masks[keep]
    ids = sample.category_ids
    categories = [int(ids[i]) for i in keep] if ids is not None else [-1] * len(keep)
    boxes = sample.boxes()[keep] if keep else np.zeros((0, 4), dtype=np.float32)
    prompts = object_prompts(masks, boxes, np.random.default_rng([seed, index]))
    return masks, categories, prompts


def automatic_generator(model: Adapter, options: Mapping[str, Any]):
    """The automatic mask generator for ``model`` with ``options`` (binary masks out)."""
    from samtune.infer.automatic import AutomaticMaskGenerator

    return AutomaticMaskGenerator(model, **{**options, "output_mode": "binary_mask"})


def run_automatic(generator, image: np.ndarray, image_id: int) -> tuple[np.ndarray, list[dict]]:
    """(M, H, W) generated masks of ``image`` and their COCO detection records."""
    records = generator.generate(image)
    masks = np.stack([r["segmentation"] for r in records]).astype(bool) if records else \
        np.zeros((0, *image.shape[:2]), dtype=bool)
    return masks, coco_results(records, image_id)


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
    out["per_category"] = per_category
    return out


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def coco_ap(truth: GroundTruth, detections: list[dict]) -> dict[str, float | None]:
    """COCOeval's 12 summary numbers (:data:`COCO_STATS`) of class-agnostic mask AP; ``None``
    where COCO reports -1 (no ground truth in that area range). Without any detection every
    number is 0."""
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
        evaluator.params.useCats = 0
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


# --- the whole job: models, data, report ----------------------------------------------------


@dataclass
class EvalOutcome:
    """What :func:`run_eval` produced: the report's path, the metrics document and the
    worse-than-base findings (empty when the fine-tuned model is at least as good)."""

    report: Path
    metrics: dict[str, Any]
    worse: list[str]


def metrics_document(results: Mapping[str, Mapping[str, ModeResult]], truth: GroundTruth,
                     settings: EvalSettings, info: Mapping[str, Any],
                     category_names: Mapping[int, str] | None = None) -> dict[str, Any]:
    """metrics.json: ``info``, ``modes``, ``models -> label -> mode -> aggregates`` (with
    ``coco`` for auto and the per-image ``images`` records) and ``warnings``."""
    models: dict[str, Any] = {}
    for label, per_mode in results.items():
        models[label] = {}
        for mode, result in per_mode.items():
            entry = summarize(result, category_names)
            if mode == "auto":
                entry["coco"] = coco_ap(truth, result.detections)
                entry["coco_per_category"] = coco_ap_per_category(truth, result.detections,
                                                                  category_names)
                entry["n_generated"] = len(result.detections)
            entry["images"] = [r.to_json() for r in result.images]
            models[label][mode] = entry
    first = next(iter(next(iter(results.values())).values()))
    document = {
        "info": {**info, "n_images": len(first.images),
                 "n_objects": int(sum(r.n_objects for r in first.images)),
                 "seed": settings.seed, "batch_objects": settings.batch_objects,
                 "amg": dict(settings.amg),
                 "tiling": None if settings.tile_shape is None else {
                     "tile_shape": list(settings.tile_shape), "halo": list(settings.halo or (0, 0))}},
        "modes": list(settings.modes),
        "mode_descriptions": {m: MODE_DESCRIPTIONS[m] for m in settings.modes},
        "models": models,
    }
    document["warnings"] = worse_than_base(document) if {"base", "tuned"} <= set(models) else []
    document["notes"] = no_mask_notes(document, settings)
    return document


def no_mask_notes(document: Mapping[str, Any], settings: EvalSettings) -> list[str]:
    """One line per model whose automatic mode generated no mask at all: its AP of 0 says
    nothing about the model, only that the thresholds kept nothing."""
    notes = []
    for label, per_mode in document["models"].items():
        if per_mode.get("auto", {}).get("n_generated", 1) == 0:
            amg = ", ".join(f"{k} {v}" for k, v in settings.amg.items()) or "the family defaults"
            notes.append(f"the automatic mode produced no masks for the {label} model "
                         f"({amg}): its AP of 0 measures nothing; lower --pred-iou-thresh "
                         "and --stability-score-thresh to score it")
    return notes


def panel_mode(modes: Sequence[str]) -> str:
    """Box mode when evaluated, else the first mode: the comparisons' mode."""
    return "box" if "box" in modes else modes[0]


def panel_indices(result: ModeResult) -> dict[str, int]:
    """Dataset positions of the best, median and worst image by per-image mean IoU (images
    without a compared mask are skipped; fewer images give fewer distinct panels)."""
    scored = [(float(np.mean(r.values["iou"])), i) for i, r in enumerate(result.images)
              if r.values["iou"]]
    if not scored:
        return {}
    scored.sort()
    picks = {"best": scored[-1][1], "median": scored[len(scored) // 2][1], "worst": scored[0][1]}
    seen: set[int] = set()
    return {rank: i for rank, i in picks.items() if not (i in seen or seen.add(i))}


def panel_cases(models: Mapping[str, Adapter], dataset: Sequence[Sample],
                results: Mapping[str, Mapping[str, ModeResult]], settings: EvalSettings
                ) -> list[PanelCase]:
    """Best, median and worst image by the tuned model's IoU, predicted again by both models
    (the same prompts: they depend only on the seed and the image's position)."""
    mode = panel_mode(settings.modes)
    cases = []
    for rank, index in panel_indices(results["tuned"][mode]).items():
        sample = dataset[index]
        truth, _, prompts = image_objects(sample, settings.seed, index)
        masks = {}
        for label, model in models.items():
            if mode == "auto":
                masks[label] = run_automatic(settings.generator(model),
                                             sample.image, index + 1)[0]
                continue
            predictor = settings.predictor(model)
            predictor.set_image(sample.image)
            masks[label] = predict_mode(predictor, prompts, mode, settings.batch_objects)
        n_points = {"point": 1, "points3": 3, "box+point": 1}.get(mode, 0)
        points = prompts.points[:, :n_points][prompts.labels[:, :n_points] == 1]
        cases.append(PanelCase(
            rank, sample.path, mode, sample.image, truth, masks["base"], masks["tuned"],
            float(np.mean(results["base"][mode].images[index].values["iou"])),
            float(np.mean(results["tuned"][mode].images[index].values["iou"])),
            boxes=prompts.boxes if mode in ("box", "box+point") else None,
            points=points if n_points else None))
    return cases


def run_eval(tuned: Adapter, base: Adapter, dataset: Sequence[Sample], out_dir: str | Path,
             settings: EvalSettings, info: Mapping[str, Any], console: Console | None = None,
             progress: bool = True) -> EvalOutcome:
    """Evaluate ``base`` and ``tuned`` side by side and write the report into ``out_dir``
    (report.md, metrics.json, plots/, comparisons/); print the compact table, any
    worse-than-base warning (in yellow) and the report's path on ``console``.

    ``info`` describes the run for the report's title: ``model``, ``base``, ``data``,
    ``split`` (``date`` and ``device`` are filled in when missing).
    """
    if len(dataset) == 0:
        raise SamtuneError(f"{info.get('data', 'the dataset')}: no images to evaluate")
    models = {"base": base, "tuned": tuned}
    results, truth = evaluate_models(models, dataset, settings, progress=progress)
    info = {"date": datetime.now().isoformat(timespec="seconds"), "device": str(tuned.device),
            **info}
    metrics = metrics_document(results, truth, settings, info, category_names(dataset))
    clear_report(Path(out_dir))
    report = write_report(out_dir, metrics, panel_cases(models, dataset, results, settings))
    if console is not None:
        console.print(console_table(metrics))
        line = warning_line(metrics["warnings"])
        if line:
            console.print(f"[yellow]warning: {line}[/]", highlight=False)
        for note in metrics["notes"]:
            console.print(f"[yellow]note: {note}[/]", highlight=False)
        console.print(f"report: {report}", highlight=False)
    return EvalOutcome(report, metrics, list(metrics["warnings"]))


def clear_report(out_dir: Path) -> None:
    """Remove the files an earlier report wrote into ``out_dir`` (its comparison panels are
    named after its images): a report folder holds one evaluation, never a mix of two."""
    for sub in ("comparisons", "plots"):
        for old in (out_dir / sub).glob("*.png"):
            old.unlink()


def eval_folder_name(data: str | Path | None) -> str:
    """``RUN/eval/<this>``: the dataset's name (its folder, or a COCO file's stem), or
    ``val`` for the run's own validation data, so each dataset keeps its own report."""
    if data is None:
        return "val"
    path = Path(data)
    return (path.stem if path.is_file() else path.resolve().name) or "data"


def report_folder(run_dir: Path) -> Path | None:
    """The run's eval report to show (``samtune serve``): ``RUN/eval/val/``, the run's own
    validation data, first; else one written straight into ``RUN/eval/`` (the demo, or an
    older samtune); else the newest report of another dataset; None when there is none."""
    root = Path(run_dir) / "eval"
    others = sorted(root.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime_ns,
                    reverse=True)
    for found in [root / eval_folder_name(None) / "metrics.json", root / "metrics.json", *others]:
        if found.is_file():
            return found.parent
    return None


def category_names(dataset: Sequence[Sample]) -> dict[int, str]:
    """Category id -> name from the dataset's COCO categories (or its sources'), if any."""
    names: dict[int, str] = {}
    for source in [*getattr(dataset, "sources", []), dataset]:
        names.update(getattr(source, "categories", None) or {})
    return names


# --- what to evaluate: the models and the data ----------------------------------------------


@dataclass
class EvalModels:
    """The fine-tuned model and its base, how the report names them, and the run they come
    from (None for a bare checkpoint file)."""

    tuned: Adapter
    base: Adapter
    tuned_label: str
    base_label: str
    run_dir: Path | None = None
    run_config: Any = None


def resolve_models(model: str | Path, base: str | None = None,
                   base_checkpoint: str | Path | None = None,
                   device: str = "cpu") -> EvalModels:
    """The models ``samtune eval`` compares.

    ``model``: a run folder (its export, else best, else last checkpoint) or a checkpoint
    file. The base: ``base`` (a model name, with ``base_checkpoint`` as its weights; without
    one a tiny model keeps its random init) when given; else the run's own base (its name,
    base checkpoint and, for a random-init base, the same init); else, for a samtune training
    checkpoint, the base its embedded config names; else the identified model's official
    weights when they are in the cache. Otherwise a SamtuneError asks for ``--base``.
    """
    from samtune.models import list_models
    from samtune.runs import base_model, config_of, load_model

    if base_checkpoint is not None and base is None:
        raise SamtuneError("--base-checkpoint goes with --base NAME (the base model's name)")
    if str(model) in {spec.name for spec in list_models()}:
        raise SamtuneError(f"{model} is a model name; eval takes a fine-tuned run folder or "
                           "checkpoint file (compare a file with any base via --base NAME)")
    path = Path(model)
    tuned = load_model(path, device=device)
    run_config = config_of(path)
    if base is not None:
        base_adapter = load_model(base, checkpoint=base_checkpoint, device=device)
        return EvalModels(tuned, base_adapter, str(model), _label(base, base_checkpoint, None),
                          path if path.is_dir() else None, run_config)
    if run_config is not None:
        m = run_config.model
        return EvalModels(tuned, base_model(run_config, device), str(model),
                          _label(m.name, m.checkpoint, run_config.seed),
                          path if path.is_dir() else None, run_config)
    from samtune.models.checkpoints import cached_checkpoint

    spec = tuned.spec
    if cached_checkpoint(spec) is None:
        raise SamtuneError(
            f"{model}: not a run folder, so the base model is unknown and the official "
            f"{spec.name} weights are not in the cache; pass --base {spec.name} "
            "--base-checkpoint FILE (the weights fine-tuning started from)")
    return EvalModels(tuned, load_model(spec.name, checkpoint="auto", device=device), str(model),
                      _label(spec.name, "auto", None))


def _label(name: str, checkpoint: str | Path | None, seed: int | None) -> str:
    if checkpoint is not None:
        return f"{name} ({'official weights' if str(checkpoint) == 'auto' else checkpoint})"
    return f"{name} (random init{'' if seed is None else f', seed {seed}'})"


def resolve_data(data: str | Path | None, split: str | None, run_config: Any = None,
                 objects: str | None = None) -> tuple[Sequence[Sample], str, str]:
    """(dataset, description, split) to evaluate on: ``data`` (folder, COCO or LabPics) at
    ``split`` (default: its test split, else val, else all of an unsplit dataset), or without
    ``data`` the run's validation data. ``objects`` reads folder masks as training does
    (``auto``, ``components``, ``whole``, ``label_map``); None keeps the source's setting."""
    from samtune.data.detect import detect_layout, open_source

    if data is None:
        if run_config is None:
            raise SamtuneError("--data DATASET is needed: the model is not a run folder, so "
                               "there is no validation data to default to")
        from samtune.data.mixing import open_dataset

        paths = ", ".join(str(c.path) for c in (run_config.data.val or run_config.data.train))
        config = run_config.data
        if objects is not None:
            config = config.model_copy(update={key: [c.model_copy(update={"objects": objects})
                                                     for c in getattr(config, key)]
                                               for key in ("train", "val") if getattr(config, key)})
        return open_dataset(config, "val"), f"validation data of the run ({paths})", "val"
    if split is None:
        parts = detect_layout(data).parts
        split = next((s for s in ("test", "val") if s in parts), "all" if "all" in parts
                     else next(iter(parts)))
    options = {} if objects is None else {"objects": objects}
    return open_source(data, split=split, **options), str(data), split
