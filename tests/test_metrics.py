"""Mask metrics on hand-built masks, R0's conventions, and accumulation across batches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from samtune.metrics import (
    METRIC_NAMES,
    MaskMetrics,
    boundary_band,
    boundary_f1,
    confusion_counts,
    mask_metrics,
    per_image_mean,
)


def square(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


def test_overlap_of_two_squares():
    """4 predicted and 4 target pixels on 4x4, 2 shared: IoU 1/3, Dice 1/2, accuracy 12/16."""
    pred = square(4, 4, 0, 2, 0, 2)[None]
    target = square(4, 4, 0, 2, 1, 3)[None]
    m = mask_metrics(pred, target)
    assert m["iou"].item() == pytest.approx(1 / 3)
    assert m["dice"].item() == pytest.approx(0.5)
    assert m["pixel_accuracy"].item() == pytest.approx(0.75)
    assert m["precision"].item() == pytest.approx(0.5)
    assert m["recall"].item() == pytest.approx(0.5)
    c = confusion_counts(pred, target)
    assert (c.tp.item(), c.fp.item(), c.fn.item(), c.tn.item()) == (2, 2, 2, 10)


def test_logits_are_thresholded_at_zero():
    target = square(4, 4, 0, 2, 0, 2)[None]
    logits = torch.where(target, torch.tensor(0.3), torch.tensor(-0.3))
    assert mask_metrics(logits, target)["iou"].item() == 1.0


def test_empty_versus_empty_conventions():
    """R0: union 0 counts as IoU 1.0; zero denominators give 0 (precision, recall, BF1)."""
    empty = torch.zeros(1, 6, 6, dtype=torch.bool)
    m = mask_metrics(empty, empty)
    assert m["iou"].item() == 1.0 and m["dice"].item() == 1.0
    assert m["pixel_accuracy"].item() == 1.0
    assert m["precision"].item() == 0.0 and m["recall"].item() == 0.0
    assert m["boundary_f1"].item() == 0.0
    other = mask_metrics(empty, empty, empty=0.0, boundary_empty=1.0)
    assert other["iou"].item() == 0.0 and other["boundary_f1"].item() == 1.0
    # a missed object is 0 everywhere, never NaN
    missed = mask_metrics(empty, square(6, 6, 1, 3, 1, 3)[None])
    assert all(v.item() == 0.0 for k, v in missed.items() if k != "pixel_accuracy")


def test_valid_excludes_padding():
    pred = square(4, 6, 0, 2, 0, 2)
    pred[:, 4:] = True  # garbage in the padding
    target = square(4, 6, 0, 2, 1, 3)
    valid = torch.zeros(4, 6, dtype=torch.bool)
    valid[:, :4] = True
    padded = mask_metrics(pred[None], target[None], valid, boundary_tolerance=1)
    cropped = mask_metrics(pred[None, :, :4], target[None, :, :4], boundary_tolerance=1)
    for name in METRIC_NAMES:
        assert padded[name].item() == pytest.approx(cropped[name].item()), name
    assert padded["iou"].item() == pytest.approx(1 / 3)


def test_boundary_band_of_a_square():
    """3x3 square: dilation by the cross has 21 pixels, erosion keeps the centre: band 20."""
    band = boundary_band(square(7, 7, 2, 5, 2, 5))
    assert band.sum().item() == 20
    assert not band[3, 3] and band[1, 3] and not band[1, 1]


def test_boundary_band_matches_r0_definition():
    """dilation(cross) XOR erosion(cross), zero outside the image (SciPy's default), via cv2."""
    rng = np.random.default_rng(0)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    masks = rng.random((4, 12, 15)) > 0.6
    masks[0, :, :5] = True  # touches the image border
    ours = boundary_band(torch.from_numpy(masks)).numpy()
    for m, band in zip(masks, ours):
        m8 = m.astype(np.uint8)
        kw = {"borderType": cv2.BORDER_CONSTANT, "borderValue": 0}
        ref = cv2.dilate(m8, cross, **kw).astype(bool) ^ cv2.erode(m8, cross, **kw).astype(bool)
        assert np.array_equal(band, ref)


def test_boundary_f1_of_a_shifted_square():
    """An 8x8 square and the same shifted one pixel right: bands of 60 pixels share 44 (hand
    count), so tolerance 0 (R0) gives 44/60; with 1 pixel of tolerance every band pixel matches."""
    gt = square(20, 20, 4, 12, 4, 12)[None]
    pred = square(20, 20, 4, 12, 5, 13)[None]
    assert boundary_band(gt).sum().item() == 60
    assert boundary_f1(pred, gt, tolerance=0).item() == pytest.approx(44 / 60)
    assert boundary_f1(pred, gt, tolerance=1).item() == pytest.approx(1.0)
    assert boundary_f1(gt, gt).item() == pytest.approx(1.0)
    far = square(20, 20, 4, 12, 9, 17)[None]  # shifted 5 pixels
    assert boundary_f1(far, gt, tolerance=1).item() < boundary_f1(far, gt, tolerance=4).item()


def test_per_image_mean():
    values = torch.tensor([1.0, 0.0, 1 / 3])
    means, images = per_image_mean(values, torch.tensor([3, 3, 7]))
    assert images.tolist() == [3, 7]
    assert means.tolist() == pytest.approx([0.5, 1 / 3])


def _batch(seed: int, n: int = 5, size: int = 10):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.rand(n, size, size, generator=gen) > 0.5
    target = torch.rand(n, size, size, generator=gen) > 0.6
    return pred, target


def test_mask_metrics_means_per_mask_and_per_image():
    target = square(4, 4, 0, 2, 1, 3)
    pred = torch.stack([target, ~target, square(4, 4, 0, 2, 0, 2)])  # IoU 1, 0, 1/3
    metric = MaskMetrics()
    metric.update(pred, target.expand(3, 4, 4), image_index=torch.tensor([0, 0, 1]))
    out = metric.compute()
    assert out["mask_iou"].item() == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert out["image_iou"].item() == pytest.approx((0.5 + 1 / 3) / 2)
    # pooled counts: tp 4 + 0 + 2, fp 0 + 12 + 2, fn 0 + 4 + 2
    assert out["micro_iou"].item() == pytest.approx(6 / 26)
    assert out["micro_precision"].item() == pytest.approx(6 / 20)
    assert out["micro_recall"].item() == pytest.approx(6 / 12)
    assert out["micro_accuracy"].item() == pytest.approx((48 - 20) / 48)


def test_two_updates_equal_one_update_on_the_concatenation():
    (p1, t1), (p2, t2) = _batch(0), _batch(1, n=3)
    i1, i2 = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1])
    split = MaskMetrics(boundary_tolerance=1)
    split.update(p1, t1, image_index=i1)
    split.update(p2, t2, image_index=i2)
    joined = MaskMetrics(boundary_tolerance=1)
    joined.update(torch.cat([p1, p2]), torch.cat([t1, t2]), image_index=torch.cat([i1, i2 + 3]))
    a, b = split.compute(), joined.compute()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].item() == pytest.approx(b[name].item(), rel=1e-6), name


def test_states_merge_like_an_all_reduce():
    """Two devices' states summed (what torchmetrics' sync does) equal one device's result."""
    (p1, t1), (p2, t2) = _batch(2), _batch(3)
    rank0, rank1, single = MaskMetrics(), MaskMetrics(), MaskMetrics()
    rank0.update(p1, t1)
    rank1.update(p2, t2)
    single.update(torch.cat([p1, p2]), torch.cat([t1, t2]))
    rank0.merge_state(rank1)
    a, b = rank0.compute(), single.compute()
    for name in a:
        assert a[name].item() == pytest.approx(b[name].item(), rel=1e-6), name


def test_default_image_index_is_one_mask_per_image():
    pred, target = _batch(4)
    metric = MaskMetrics()
    metric.update(pred, target)
    out = metric.compute()
    for name in METRIC_NAMES:
        assert out[f"image_{name}"].item() == pytest.approx(out[f"mask_{name}"].item()), name


def test_update_refuses_candidate_dimension():
    metric = MaskMetrics()
    with pytest.raises(ValueError, match="one candidate per object"):
        metric.update(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool))


def test_metrics_run_a_chunk_of_objects_at_a_time(monkeypatch):
    """400 objects: the same values as one pass, with no pass over more than the chunk's
    pixels (one pass over every object took 80 GB at 2048x1536)."""
    from samtune import metrics

    g = torch.Generator().manual_seed(0)
    pred = torch.rand(400, 32, 48, generator=g) > 0.6
    target = torch.rand(400, 32, 48, generator=g) > 0.6
    whole = metrics._values(metrics.confusion_counts(pred, target), pred, target, None, 0, 1.0, 0.0)
    monkeypatch.setattr(metrics, "CHUNK_PIXELS", 32 * 48 * 16)
    seen = []
    original = metrics.boundary_band
    monkeypatch.setattr(metrics, "boundary_band", lambda m: seen.append(m.numel()) or original(m))
    chunked = metrics.mask_metrics(pred, target)
    assert max(seen) <= 32 * 48 * 16
    for name, values in whole.items():
        torch.testing.assert_close(chunked[name], values, msg=name)
    tracker = metrics.MaskMetrics()
    tracker.update(pred, target, image_index=torch.arange(400) // 100)
    assert max(seen) <= 32 * 48 * 16
    assert float(tracker.compute()["mask_iou"]) == pytest.approx(float(whole["iou"].mean()), rel=1e-6)
