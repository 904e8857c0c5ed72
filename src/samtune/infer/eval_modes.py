"""The prompt modes of ``samtune eval``: what each mode prompts an object with, and its masks.

Every prompt is in original image pixels, the same for every model, and the same for the same
``seed``: an image's random draws come from ``default_rng([seed, index])``, so they do not
depend on which other images or modes are evaluated.

- ``box``: the object's tight box (:meth:`Sample.boxes`), one mask per object.
- ``point``: the object's most interior pixel (:func:`~samtune.prompts.interior_point`: the
  maximum of its distance transform, the image border counting as edge; ties to the first
  pixel in row-major order), three candidate masks, the one with the highest predicted IoU
  kept, as SAM's paper evaluates single points.
- ``points3``: that point plus 2 more positive points drawn uniformly from the object's other
  pixels with the seed; one mask.
- ``box+point``: the box and the interior point; one mask.
- ``none``: no prompt at all; one mask per image, compared with the union of the objects (the
  prompt-free, semantic use of a fine-tuned decoder).
- ``auto``: :class:`~samtune.infer.automatic.AutomaticMaskGenerator`; each ground-truth object
  matched to its best-IoU generated mask, so that ``auto`` also has per-mask rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from samtune.data.sample import Sample
from samtune.infer.predictor import Predictor
from samtune.infer.prompted import predict_objects
from samtune.infer.rle import coco_results, encode_coco_rles
from samtune.models.adapter import Adapter
from samtune.prompts import ObjectPrompt, interior_point, sample_points

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
#: the points each prompted mode gives an object (the first ones of :func:`object_prompts`)
MODE_POINTS = {"box": 0, "point": 1, "points3": 3, "box+point": 1, "none": 0}


def object_prompts(masks: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
                   ) -> list[ObjectPrompt]:
    """Every mode's prompts of (N, H, W) non-empty masks with their (N, 4) boxes: one record
    per object with its box and 3 points, the interior point and the seeded extra positives
    (padding, label -1, where the object has fewer than 3 pixels); :func:`mode_prompt` takes
    what a mode uses."""
    out = []
    for mask, box in zip(masks, np.asarray(boxes, dtype=np.float32)):
        points, labels = sample_points(mask, box, 3, 0, rng, first=interior_point(mask))
        out.append(ObjectPrompt(box=box, points=points, point_labels=labels))
    return out


def mode_prompt(prompt: ObjectPrompt, mode: str) -> ObjectPrompt:
    """The part of an :func:`object_prompts` record that ``mode`` prompts with."""
    n = MODE_POINTS[mode]
    return ObjectPrompt(box=prompt.box if mode in ("box", "box+point") else None,
                        points=prompt.points[:n] if n else None,
                        point_labels=prompt.point_labels[:n] if n else None)


def predict_mode(predictor: Predictor, prompts: Sequence[ObjectPrompt], mode: str,
                 batch_objects: int = 64) -> np.ndarray:
    """(N, H, W) bool masks of the objects of the image set on ``predictor`` for one prompted
    mode (``(1, H, W)`` for ``none``), at most ``batch_objects`` objects per decoder call."""
    objects = [ObjectPrompt()] if mode == "none" else [mode_prompt(p, mode) for p in prompts]
    masks, _ = predict_objects(predictor, objects, multimask=mode == "point",
                               chunk=batch_objects, best=True)
    return masks[:, 0]


def image_objects(sample: Sample, seed: int, index: int
                  ) -> tuple[np.ndarray, list[int], list[ObjectPrompt]]:
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


def best_matches(truth: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """(N, H, W): for each true mask, the generated mask (M, H, W) of highest IoU with it, or
    an empty mask when nothing was generated."""
    if len(generated) == 0 or len(truth) == 0:
        return np.zeros_like(truth)
    iou = mask_utils.iou(encode_coco_rles(generated), encode_coco_rles(truth), [0] * len(truth))  # (M, N)
    return generated[np.asarray(iou).argmax(axis=0)]
