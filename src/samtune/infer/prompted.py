"""Prompted prediction on an image file, written out as mask PNGs, an overlay and a JSON summary.

This is what ``samtune predict`` runs; it is a function so scripts and tests call the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samtune.data.images import read_image_rgb
from samtune.errors import SamtuneError
from samtune.files import write_json, write_png
from samtune.infer.predictor import Predictor
from samtune.infer.visualize import overlay


@dataclass
class PromptSet:
    """Prompts in original image pixels: boxes (N, 4) xyxy and/or points (P, 2) with labels."""

    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None

    @classmethod
    def parse(cls, boxes: list[str], points: list[str]) -> PromptSet:
        """From CLI strings ``x0,y0,x1,y1`` and ``x,y[,label]``."""
        parsed_boxes = [_numbers(b, "--box", (4,)) for b in boxes]
        parsed_points = [_numbers(p, "--point", (2, 3)) for p in points]
        for b in parsed_boxes:
            if b[2] <= b[0] or b[3] <= b[1]:
                raise SamtuneError(f"--box {_fmt(b)}: expected x0,y0,x1,y1 with x1 > x0 and y1 > y0")
        for p in parsed_points:
            if len(p) == 3 and p[2] not in (0, 1):
                raise SamtuneError(f"--point {_fmt(p)}: the label must be 1 (object) or 0 (background)")
        if len(parsed_boxes) > 1 and parsed_points:
            raise SamtuneError("points go with at most one --box (they refine one object); give "
                               "several boxes alone to segment several objects")
        if not parsed_boxes and not parsed_points:
            raise SamtuneError("give at least one prompt: --box x0,y0,x1,y1 or --point x,y[,label]")
        return cls(
            np.array(parsed_boxes, dtype=np.float64) if parsed_boxes else None,
            np.array([p[:2] for p in parsed_points], dtype=np.float64) if parsed_points else None,
            np.array([int(p[2]) if len(p) == 3 else 1 for p in parsed_points]) if parsed_points else None,
        )

    def check_inside(self, size: tuple[int, int], image_name: str) -> None:
        h, w = size
        for b in [] if self.boxes is None else self.boxes:
            if b[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h:
                raise SamtuneError(f"--box {_fmt(b)} is outside {image_name} ({w}x{h})")
        for p in [] if self.points is None else self.points:
            if not (0 <= p[0] < w and 0 <= p[1] < h):
                raise SamtuneError(f"--point {_fmt(p)} is outside {image_name} ({w}x{h})")


def _numbers(text: str, flag: str, lengths: tuple[int, ...]) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in lengths:
        want = " or ".join(str(n) for n in lengths)
        raise SamtuneError(f"{flag} {text!r}: expected {want} comma-separated numbers")
    return values


def _fmt(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def predict_file(
    predictor: Predictor,
    image_path: str | Path,
    prompts: PromptSet,
    output_dir: str | Path,
    multimask: bool = False,
    opacity: float = 0.5,
) -> list[Path]:
    """Segment the prompted objects of one image; returns the files written.

    Writes ``<stem>_mask_<i>.png`` per object (with ``multimask``, the best-scoring of the
    three, plus ``<stem>_mask_<i>_<k>.png`` for every candidate), ``<stem>_overlay.png`` and
    ``<stem>_masks.json`` (prompts, scores, mask areas).
    """
    image_path = Path(image_path)
    image = read_image_rgb(image_path)
    prompts.check_inside(image.shape[:2], image_path.name)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(
        point_coords=None if prompts.points is None else prompts.points[None],
        point_labels=None if prompts.point_labels is None else prompts.point_labels[None],
        box=prompts.boxes,
        multimask_output=multimask,
    )
    best = scores.argmax(axis=1)
    chosen = masks[np.arange(len(masks)), best]
    out = Path(output_dir)
    stem = image_path.stem
    written = []
    for i, mask in enumerate(chosen):
        written.append(write_png(out / f"{stem}_mask_{i}.png", mask))
        if multimask:
            written += [write_png(out / f"{stem}_mask_{i}_{k}.png", m) for k, m in enumerate(masks[i])]
    picture = overlay(image, chosen, opacity, boxes=prompts.boxes, points=prompts.points,
                      point_labels=prompts.point_labels)
    written.append(write_png(out / f"{stem}_overlay.png", picture))
    summary = {
        "image": str(image_path),
        "model": predictor.model.spec.name,
        "objects": [
            {
                "mask": f"{stem}_mask_{i}.png",
                "box": None if prompts.boxes is None else prompts.boxes[min(i, len(prompts.boxes) - 1)].tolist(),
                "points": None if prompts.points is None else prompts.points.tolist(),
                "point_labels": None if prompts.point_labels is None else prompts.point_labels.tolist(),
                "scores": scores[i].round(4).tolist(),
                "area": int(chosen[i].sum()),
            }
            for i in range(len(chosen))
        ],
    }
    written.append(write_json(out / f"{stem}_masks.json", summary))
    return written
