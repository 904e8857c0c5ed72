"""Prompts for ``samtune predict``: from flags, a samtune JSON file or a COCO file, and the
prompted prediction of one image.

Every source produces, per image, a list of :class:`~samtune.prompts.ObjectPrompt` in
original image pixels. Objects of one image may mix structures (a box, points, a box with
points); :func:`predict_objects` decodes each structure group
(:func:`~samtune.prompts.group_by_structure`) in batched calls.

The samtune prompt file maps image file names (relative to the input folder) to objects::

    {"cells_01.png": [{"box": [5, 5, 40, 30]},
                      {"points": [[20, 20], [50, 40]], "labels": [1, 0]},
                      {"box": [30, 20, 79, 59], "points": [[50, 40]], "category_id": 2}]}

A COCO file (anything with ``"annotations"``) gives one box prompt per annotation, matched to
images by ``file_name``; its category ids go into the output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from samtune.errors import SamtuneError
from samtune.infer.predictor import Predictor
from samtune.memory import release_freed_memory
from samtune.prompts import ObjectPrompt, group_by_structure


def parse_flag_prompts(boxes: Sequence[str], points: Sequence[str]) -> list[ObjectPrompt]:
    """Objects from CLI strings ``x0,y0,x1,y1`` and ``x,y[,label]``.

    Several boxes are several objects; points refine one object (with at most one box).
    """
    parsed_boxes = [_numbers(b, "--box", (4,)) for b in boxes]
    parsed_points = [_numbers(p, "--point", (2, 3)) for p in points]
    for p in parsed_points:
        if len(p) == 3 and p[2] not in (0, 1):
            raise SamtuneError(f"--point {_fmt(p)}: the label must be 1 (object) or 0 (background)")
    if len(parsed_boxes) > 1 and parsed_points:
        raise SamtuneError("points go with at most one --box (they refine one object); give "
                           "several boxes alone to segment several objects, or use --prompts FILE")
    if not parsed_points:
        return [_object(b, None, None, "--box") for b in parsed_boxes]
    pts = [p[:2] for p in parsed_points]
    labels = [int(p[2]) if len(p) == 3 else 1 for p in parsed_points]
    return [_object(parsed_boxes[0] if parsed_boxes else None, pts, labels, "--box")]


def read_prompt_file(path: Path) -> dict[str, list[ObjectPrompt]]:
    """Image file name -> its objects, from a samtune prompt JSON or a COCO file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SamtuneError(f"{path}: no such prompt file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SamtuneError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict) and "annotations" in data:
        return _coco_prompts(data, path)
    if not isinstance(data, dict):
        raise SamtuneError(f"{path}: expected an object mapping image file names to lists of "
                           "prompts, or a COCO file with 'images' and 'annotations'")
    out = {}
    for name, objects in data.items():
        if not isinstance(objects, list):
            raise SamtuneError(f"{path}: {name!r}: expected a list of objects like "
                               '{"box": [x0, y0, x1, y1]} or {"points": [[x, y]], "labels": [1]}')
        out[name] = [_json_object(o, f"{path}: {name!r} object {i}") for i, o in enumerate(objects)]
    return out


def _coco_prompts(data: dict, path: Path) -> dict[str, list[ObjectPrompt]]:
    names = {img["id"]: img["file_name"] for img in data.get("images", [])}
    categories = {c["id"]: c.get("name") for c in data.get("categories", []) if "id" in c}
    out: dict[str, list[ObjectPrompt]] = {name: [] for name in names.values()}
    for ann in data["annotations"]:
        where = f"{path}: annotation {ann.get('id', '?')}"
        if ann.get("image_id") not in names:
            raise SamtuneError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise SamtuneError(f"{where}: needs a 'bbox' [x, y, width, height] to prompt with")
        x, y, w, h = _coords(bbox, where, "bbox")
        obj = _object([x, y, x + w, y + h], None, None, where)
        obj.category_id = ann.get("category_id")
        obj.category_name = categories.get(obj.category_id)
        obj.image_id = ann["image_id"]
        out[names[ann["image_id"]]].append(obj)
    return out


def _json_object(obj, where: str) -> ObjectPrompt:
    if not isinstance(obj, dict) or not ({"box", "points"} & obj.keys()):
        raise SamtuneError(f"{where}: expected {{\"box\": [x0, y0, x1, y1]}} and/or "
                           '{"points": [[x, y], ...], "labels": [1, ...]}')
    points, labels = obj.get("points"), obj.get("labels")
    if points is not None:
        if not (isinstance(points, list) and points and all(
                isinstance(p, list) and len(p) == 2 for p in points)):
            raise SamtuneError(f"{where}: 'points' must be a non-empty list of [x, y]")
        labels = [1] * len(points) if labels is None else labels
        if not isinstance(labels, list) or len(labels) != len(points) or any(v not in (0, 1) for v in labels):
            raise SamtuneError(f"{where}: 'labels' must be one 1 (object) or 0 (background) per point")
    box = obj.get("box")
    if box is not None and not (isinstance(box, list) and len(box) == 4):
        raise SamtuneError(f"{where}: 'box' must be [x0, y0, x1, y1]")
    made = _object(box, points, labels, where)
    made.category_id = obj.get("category_id")
    return made


def _object(box, points, labels, where: str) -> ObjectPrompt:
    b = None if box is None else _coords(box, where, "box")
    if b is not None and (b[2] <= b[0] or b[3] <= b[1]):
        raise SamtuneError(f"{where} {_fmt(b)}: expected x0,y0,x1,y1 with x1 > x0 and y1 > y0")
    p = None if points is None else _coords(points, where, "points").reshape(-1, 2)
    lab = None if labels is None else np.asarray(labels, dtype=np.int64)
    return ObjectPrompt(b, p, lab)


def _coords(values, where: str, what: str) -> np.ndarray:
    """Pixel coordinates as finite float64 numbers; anything else is one error line."""
    try:
        if any(isinstance(v, (str, bool)) for v in np.ravel(np.asarray(values, dtype=object))):
            raise ValueError
        array = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise SamtuneError(f"{where}: '{what}' must hold numbers (pixel coordinates), "
                           f"got {values!r}") from None
    if not np.isfinite(array).all():
        raise SamtuneError(f"{where}: '{what}' holds a NaN or infinite coordinate ({values!r})")
    return array


def _numbers(text: str, flag: str, lengths: tuple[int, ...]) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not all(np.isfinite(values)):
        raise SamtuneError(f"{flag} {text!r}: coordinates must be finite numbers")
    if len(values) not in lengths:
        want = " or ".join(str(n) for n in lengths)
        raise SamtuneError(f"{flag} {text!r}: expected {want} comma-separated numbers")
    return values


def _fmt(values) -> str:
    return ",".join(f"{v:g}" for v in values)


#: Objects per decoder call in :func:`predict_objects`: the upsampled float logits of a call
#: take objects x candidates x H x W x 4 bytes, so 20 000 boxes in one call needed 9 GB.
OBJECTS_PER_CALL = 64


def predict_objects(
    predictor: Predictor, objects: Sequence[ObjectPrompt], multimask: bool = False,
    chunk: int = OBJECTS_PER_CALL, best: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the prompted objects on the predictor's current image.

    Returns (N, K, H, W) bool masks and (N, K) scores, K = 3 with ``multimask`` else 1, in the
    order of ``objects``; with ``best``, K = 1: each object's candidate of highest predicted
    IoU (SAM's rule for a single point). Objects with the same structure go through the
    decoder together, up to ``chunk`` at a time (memory beyond the output masks does not grow
    with the count). An object without any prompt is the prompt-free mask of the image.
    With a class head, ``predictor.class_probs`` holds (N, K, n_classes) afterwards, for the
    masks returned.
    """
    h, w = predictor.original_size
    k = 3 if multimask else 1
    kept = 1 if best else k
    masks = np.zeros((len(objects), kept, h, w), dtype=bool)
    scores = np.zeros((len(objects), kept), dtype=np.float32)
    head = predictor.model.class_head
    probs = np.zeros((len(objects), kept, 0 if head is None else len(head.ids)), dtype=np.float32)
    calls = [index[i:i + chunk] for index in group_by_structure(objects)
             for i in range(0, len(index), chunk)]
    for index in calls:
        group = [objects[i] for i in index]
        n_points, has_box, _ = group[0].structure
        m, s, _ = predictor.predict(
            point_coords=np.stack([o.points for o in group]) if n_points else None,
            point_labels=np.stack([o.point_labels for o in group]) if n_points else None,
            box=np.stack([o.box for o in group]) if has_box else None,
            multimask_output=multimask,
        )
        m, s = m.reshape(len(group), k, h, w), s.reshape(len(group), k)
        p = (predictor.class_probs.reshape(len(group), k, -1) if head is not None
             else np.zeros((len(group), k, 0), dtype=np.float32))
        if best:
            top = s.argmax(axis=1)
            rows = np.arange(len(group))
            m, s, p = m[rows, top][:, None], s[rows, top][:, None], p[rows, top][:, None]
        masks[index], scores[index], probs[index] = m, s, p
        if len(calls) > 1:
            release_freed_memory()
    predictor.class_probs = probs if head is not None else None
    return masks, scores
