"""``samtune eval`` as a function: models and data resolved, every mode run over the dataset
(:mod:`samtune.infer.eval_modes`), scored and aggregated (:mod:`samtune.infer.scoring`), and
the report written (:mod:`samtune.infer.report`).

With ``EvalSettings.tile_shape`` (``--tile-shape``/``--halo``) every mode runs by tiles
(:mod:`samtune.infer.tiling`): large images are evaluated at full resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from tqdm.auto import tqdm

from samtune.data.sample import Sample
from samtune.data.source import category_names
from samtune.errors import SamtuneError
from samtune.infer.eval_modes import (
    MODE_DESCRIPTIONS,
    MODE_POINTS,
    MODES,
    automatic_generator,
    best_matches,
    image_objects,
    predict_mode,
    run_automatic,
)
from samtune.infer.predictor import Predictor
from samtune.infer.report import (
    PanelCase,
    console_table,
    warning_line,
    worse_than_base,
    write_report,
)
from samtune.infer.scoring import (
    GroundTruth,
    ImageRecord,
    ModeResult,
    coco_ap,
    coco_ap_classes,
    coco_ap_per_category,
    score_image,
    summarize,
)
from samtune.models.adapter import Adapter
from samtune.prompts import ObjectPrompt


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
    results = {label: {m: ModeResult(m, classified=model.class_head is not None)
                       for m in settings.modes} for label, model in models.items()}
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
               categories: Sequence[int], prompts: Sequence[ObjectPrompt], batch_objects: int,
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
    record = score_image(predict_mode(predictor, prompts, mode, batch_objects), truth, categories,
                         sample.path, len(truth))
    head = predictor.model.class_head
    if head is not None:  # the category of each chosen mask (predict_mode leaves them)
        record.predicted = [head.ids[i] for i in predictor.class_probs[:, 0].argmax(-1)]
    return record, []


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
                if result.classified:
                    entry["coco_classes"] = coco_ap_classes(truth, result.detections,
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
        n_points = MODE_POINTS.get(mode, 0)
        points = np.array([xy for p in prompts for xy, label in
                           zip(p.points[:n_points], p.point_labels[:n_points]) if label == 1],
                          dtype=np.float32).reshape(-1, 2)
        boxes = np.array([p.box for p in prompts], dtype=np.float32).reshape(-1, 4)
        cases.append(PanelCase(
            rank, sample.path, mode, sample.image, truth, masks["base"], masks["tuned"],
            float(np.mean(results["base"][mode].images[index].values["iou"])),
            float(np.mean(results["tuned"][mode].images[index].values["iou"])),
            boxes=boxes if mode in ("box", "box+point") else None,
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
