"""Correction clicks of interactive rounds: SAM's uniform error pixel (``sample``) and SAM 2's
farthest error pixel (``farthest``), batched over objects."""

from __future__ import annotations

import numpy as np
import torch

from samtune.prompts import correction_clicks
from tests.prompts.shapes import H, W


def next_click(pred, gt, seed: int, mode: str) -> tuple[np.ndarray, int]:
    """One object's correction click from numpy masks, through the batched sampler."""
    pred, gt = torch.from_numpy(pred)[None], torch.from_numpy(gt)[None]
    points, labels = correction_clicks(pred, gt, torch.ones_like(gt),
                                       torch.Generator().manual_seed(seed), mode)
    return points[0].numpy(), int(labels[0])


def test_click_from_error_region_sample_mode():
    gt = np.zeros((H, W), bool)
    gt[10:30, 10:30] = True
    pred = np.zeros((H, W), bool)
    pred[10:30, 10:20] = True   # misses the right half
    pred[35:40, 50:60] = True   # and covers something else
    fn, fp = gt & ~pred, pred & ~gt
    labels = []
    for seed in range(60):
        (x, y), label = next_click(pred, gt, seed, "sample")
        region = fn if label == 1 else fp
        assert region[int(y), int(x)]
        labels.append(label)
    assert 0 < np.mean(labels) < 1 and np.mean(labels) > 0.6  # fn area 200, fp area 50


def test_click_farthest_picks_the_centre_of_the_larger_error():
    gt = np.zeros((H, W), bool)
    gt[10:31, 10:31] = True
    pred = np.zeros((H, W), bool)
    pred[35:40, 50:60] = True   # a thin false positive
    (x, y), label = next_click(pred, gt, 0, "farthest")
    assert label == 1 and (x, y) == (20, 20)
    pred2 = gt.copy()
    pred2[0:20, 40:60] = True   # a large false positive
    (x, y), label = next_click(pred2, gt, 0, "farthest")
    assert label == 0 and 47 <= x <= 52 and 7 <= y <= 12 and not gt[int(y), int(x)]


def test_click_without_error_is_a_positive_on_the_object():
    gt = np.zeros((H, W), bool)
    gt[5:9, 5:9] = True
    (x, y), label = next_click(gt, gt, 0, "farthest")
    assert label == 1 and gt[int(y), int(x)]
