"""Correction clicks: the next click of an interactive round, where the prediction is wrong.

A click is positive (1) in the false-negative region (object the prediction missed) and
negative (0) in the false-positive region (what it wrongly covered). ``prompts.click_mode``
picks where in the error it goes:

- ``sample`` (SAM): a pixel drawn uniformly from the whole error region;
- ``farthest`` (SAM 2's error-centre click): the pixel farthest from the edge of its error
  region (:func:`~samtune.prompts.points.inner_distance`, the image border counting as edge),
  in whichever of the two regions reaches farther inside; ties go to the first pixel in
  row-major order.

With no error, a positive click drawn uniformly from the object, so a round never stalls.
"""

from __future__ import annotations

import numpy as np
import torch

from samtune.prompts.points import inner_distance, interior_point

CLICK_MODES = ("sample", "farthest")


def correction_clicks(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    generator: torch.Generator | None = None,
    mode: str = "sample",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per object of (N, H, W) bool ``pred`` vs ``target``, only where ``valid``:
    ((N, 2) float xy pixels, (N,) long labels), on the masks' device.

    ``sample`` runs batched on the device; ``farthest`` computes each error region's distance
    transform on the CPU (OpenCV), one object at a time."""
    if mode not in CLICK_MODES:
        raise ValueError(f"click mode must be one of {', '.join(CLICK_MODES)}, got {mode!r}")
    fn = target & ~pred & valid
    fp = pred & ~target & valid
    error = fn | fp
    has_error = error.flatten(1).any(1)
    region = torch.where(has_error[:, None, None], error, target & valid)
    noise = torch.rand(region.shape, generator=generator, device=region.device)
    flat = (noise * region).flatten(1).argmax(dim=1)
    w = region.shape[-1]
    ys, xs = flat // w, flat % w
    labels = torch.where(fp.flatten(1)[torch.arange(len(flat)), flat], 0, 1)
    points = torch.stack([xs, ys], dim=1).float()
    if mode == "farthest":
        for i in torch.nonzero(has_error).flatten().tolist():
            (x, y), label = farthest_error_pixel(fn[i].cpu().numpy(), fp[i].cpu().numpy())
            points[i] = torch.tensor([x, y], dtype=points.dtype)
            labels[i] = label
    return points, labels


def farthest_error_pixel(fn: np.ndarray, fp: np.ndarray) -> tuple[tuple[int, int], int]:
    """((x, y), label): the :func:`~samtune.prompts.points.interior_point` of the
    false-negative (label 1) or the false-positive (label 0) region, whichever reaches farther
    inside; at least one of the two (H, W) bool regions holds a pixel."""
    label = 1 if inner_distance(fn).max() >= inner_distance(fp).max() else 0
    x, y = interior_point(fn if label else fp)
    return (int(x), int(y)), label
