"""``samtune predict`` as a function: an image or a folder of images in, masks, overlays and a
COCO file out.

Prompts come from flags (the same objects on every image), from a prompt file (per image, see
:mod:`samtune.infer.prompted`), or not at all with an automatic mask generator ("segment
everything"). Each image is encoded once; its objects are decoded in batches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from samtune.data.images import IMAGE_SUFFIXES, image_size, read_image_rgb
from samtune.errors import SamtuneError
from samtune.files import check_writable
from samtune.infer.outputs import PREDICTIONS_FILE, CocoWriter, ImagePrediction, write_image_outputs
from samtune.infer.predictor import Predictor
from samtune.infer.prompted import predict_objects
from samtune.prompts import ObjectPrompt


@dataclass
class PredictResult:
    images: int = 0
    objects: int = 0
    written: list[Path] = field(default_factory=list)
    coco: Path | None = None


def find_images(path: Path) -> tuple[Path, list[Path]]:
    """(root, images): one image file, or every image in a folder and its subfolders, sorted."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise SamtuneError(f"{path}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
        return path.parent, [path]
    if not path.is_dir():
        raise SamtuneError(f"{path}: no such image file or folder")
    images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not images:
        raise SamtuneError(f"{path}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
    return path, images


def predict_paths(
    predictor: Predictor,
    inputs: Path,
    output: Path,
    prompts: Sequence[ObjectPrompt] | dict[str, list[ObjectPrompt]] | None = None,
    generator=None,
    multimask: bool = False,
    as_label_map: bool = False,
    opacity: float = 0.5,
    progress: bool = True,
) -> PredictResult:
    """Segment every image under ``inputs``; write per-image files and ``predictions.json``.

    ``prompts``: a list (the same objects on every image) or a mapping from image names
    (relative to the input folder, or bare file names) to objects; images the mapping does not
    name are skipped. ``generator``: an :class:`~samtune.AutomaticMaskGenerator` over the same
    model, for prompt-free segmentation; give it or ``prompts``, not both.
    """
    if (prompts is None) == (generator is None):
        raise SamtuneError("give prompts (--box, --point or --prompts FILE) or --auto, not both "
                           "and not neither")
    jobs = plan_predictions(inputs, output, prompts)
    clear_earlier_result(output)
    result = PredictResult()
    coco = CocoWriter({o.image_id for _, _, objects in jobs for o in objects if o.image_id is not None})
    head = predictor.model.class_head
    if head is not None:  # every class the model knows, used or not, as a COCO file lists them
        coco.categories.update(head.categories)
    for name, path, objects in tqdm(jobs, desc="predict", unit="image", disable=not progress or len(jobs) < 2):
        image = read_image_rgb(path)
        if generator is not None:
            prediction = _automatic(generator, name, image)
        else:
            predictor.set_image(image)
            prediction = _prompted(predictor, name, image, objects, multimask)
        result.written += write_image_outputs(prediction, output, as_label_map, opacity)
        coco.add(prediction)
        result.images += 1
        result.objects += len(prediction.masks)
    coco.files = sorted({p.name for p in result.written})
    result.coco = coco.write(output / PREDICTIONS_FILE)
    result.written.append(result.coco)
    return result


def plan_predictions(inputs: Path, output: Path,
                     prompts) -> list[tuple[str, Path, list[ObjectPrompt]]]:
    """(name, image path, objects) per image, with every input checked before a model loads
    or a file is written: the images exist and are within the size limit, every prompt lies
    inside its image, and the output folder is writable."""
    root, images = find_images(inputs)
    jobs = _jobs(root, images, prompts)
    for name, path, objects in jobs:
        size = image_size(path)
        for i, obj in enumerate(objects):
            obj.check_inside(size, f"{name} object {i}")
    check_writable(output)
    return jobs


def clear_earlier_result(output: Path) -> list[Path]:
    """Delete the files an earlier ``predict`` wrote into ``output`` (the ones its
    ``predictions.json`` lists), so the folder never mixes two results; returns them.
    A folder with a ``predictions.json`` that does not list its files is refused."""
    coco = output / PREDICTIONS_FILE
    if not coco.is_file():
        return []
    try:
        files = json.loads(coco.read_text(encoding="utf-8")).get("info", {}).get("samtune_files")
    except (OSError, ValueError, AttributeError):
        files = None
    if not isinstance(files, list):
        raise SamtuneError(f"{coco}: an earlier result that does not list its files; predict "
                           "into another --output folder or remove that one")
    removed = [output / Path(str(name)).name for name in files]
    for path in removed:
        path.unlink(missing_ok=True)
    coco.unlink()
    return removed


def _jobs(root: Path, images: list[Path], prompts) -> list[tuple[str, Path, list[ObjectPrompt]]]:
    names = [p.relative_to(root).as_posix() for p in images]
    if not isinstance(prompts, dict):
        return [(n, p, list(prompts or [])) for n, p in zip(names, images)]
    by_name = dict(zip(names, images))
    by_file = {p.name: (n, p) for n, p in zip(names, images)}
    jobs = []
    for key, objects in prompts.items():
        if key in by_name:
            jobs.append((key, by_name[key], objects))
        elif Path(key).name in by_file:
            jobs.append((*by_file[Path(key).name], objects))
        else:
            raise SamtuneError(f"the prompt file names {key!r}, which is not an image under {root}")
    return jobs


def _prompted(predictor: Predictor, name: str, image: np.ndarray, objects: list[ObjectPrompt],
              multimask: bool) -> ImagePrediction:
    candidates, scores = predict_objects(predictor, objects, multimask)
    best = scores.argmax(axis=1) if len(objects) else np.zeros(0, dtype=int)
    rows = np.arange(len(objects))
    head, labels = predictor.model.class_head, None
    if head is not None:
        probs = predictor.class_probs[rows, best]
        labels = [(head.ids[i], head.names[i], float(p[i]))
                  for i, p in zip(probs.argmax(-1), probs)]
    return ImagePrediction(name, image, candidates[rows, best], scores[rows, best], prompts=objects,
                           candidates=candidates if multimask else None, labels=labels)


def _automatic(generator, name: str, image: np.ndarray) -> ImagePrediction:
    records = sorted(generator.generate(image), key=lambda r: -r["area"])
    h, w = image.shape[:2]
    masks = np.array([r["segmentation"] for r in records], dtype=bool).reshape(-1, h, w)
    extras = [{"predicted_iou": round(float(r["predicted_iou"]), 6),
               "stability_score": round(float(r["stability_score"]), 6),
               "point_coords": r["point_coords"], "crop_box": r["crop_box"]} for r in records]
    scores = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
    head = generator.model.class_head
    labels = ([(r["category_id"], head.categories[r["category_id"]], r["category_score"])
               for r in records] if head is not None else None)
    return ImagePrediction(name, image, masks, scores, extras=extras, labels=labels)
