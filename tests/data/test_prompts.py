"""Prompt rules (R4's points, SAM's box noise, R2's scaled box, R1's full box), the mix, the
previous-logits store and the click simulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from samtune.config.prompts import PromptConfig, parse_prompt_kind
from samtune.data.prompts import (
    PreviousLogitsStore,
    PromptSampler,
    mask_key,
    mask_logits_from_targets,
)
from samtune.data.sample import Sample
from samtune.prompts import (
    PAD_LABEL,
    center_point,
    correction_clicks,
    full_image_box,
    jitter_box,
    sample_points,
    scale_box,
    snap_to_grid,
)

H, W = 48, 64


def ring_mask() -> np.ndarray:
    """An annulus: its mean pixel (the hole's centre) is off the mask."""
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(yy - 24, xx - 30)
    return (r >= 8) & (r <= 14)


def crescent_mask() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (np.hypot(yy - 24, xx - 30) <= 14) & (np.hypot(yy - 24, xx - 36) > 10)


def box_of(mask: np.ndarray) -> np.ndarray:
    return Sample(np.zeros((*mask.shape, 3), np.uint8), masks=mask[None]).boxes()[0]


@pytest.mark.parametrize("mask", [ring_mask(), crescent_mask()])
def test_positives_on_mask_negatives_in_box_off_mask(mask):
    box = box_of(mask)
    for seed in range(20):
        pts, labels = sample_points(mask, box, 3, 4, np.random.default_rng(seed))
        assert pts.shape == (7, 2) and list(labels) == [1, 1, 1, 0, 0, 0, 0]
        xs, ys = pts[:, 0].astype(int), pts[:, 1].astype(int)
        assert mask[ys[:3], xs[:3]].all()
        assert not mask[ys[3:], xs[3:]].any()
        nx, ny = xs[3:], ys[3:]
        assert ((nx >= box[0]) & (nx < box[2]) & (ny >= box[1]) & (ny < box[3])).all()
        assert len({tuple(p) for p in pts[:3]}) == 3  # without replacement


def test_missing_candidates_become_padding():
    mask = np.zeros((H, W), bool)
    mask[10:20, 10:30] = True  # a rectangle fills its box: no negatives exist
    pts, labels = sample_points(mask, box_of(mask), 1, 2, np.random.default_rng(0))
    assert list(labels) == [1, PAD_LABEL, PAD_LABEL]
    np.testing.assert_array_equal(pts[1:], 0)


def test_center_point_is_on_the_mask_and_nearest_the_mean():
    for mask in (ring_mask(), crescent_mask()):
        c = center_point(mask)
        assert mask[int(c[1]), int(c[0])]
        ys, xs = np.nonzero(mask)
        d = np.hypot(xs - xs.mean(), ys - ys.mean())
        assert np.isclose(np.hypot(c[0] - xs.mean(), c[1] - ys.mean()), d.min())
    blob = np.zeros((H, W), bool)
    blob[10:21, 30:41] = True
    np.testing.assert_array_equal(center_point(blob), [35, 15])


def test_center_is_first_positive_and_not_drawn_twice():
    mask = crescent_mask()
    for seed in range(10):
        pts, _ = sample_points(mask, box_of(mask), 3, 0, np.random.default_rng(seed),
                               use_center=True)
        np.testing.assert_array_equal(pts[0], center_point(mask))
        assert len({tuple(p) for p in pts}) == 3


def test_snapped_points_are_grid_points_of_the_automatic_generator():
    n = 32
    grid_x = (np.arange(n) + 0.5) / n * W
    grid_y = (np.arange(n) + 0.5) / n * H
    rng = np.random.default_rng(0)
    for p in rng.uniform(0, [W, H], size=(200, 2)):
        s = snap_to_grid(p, (H, W), n)
        assert np.isclose(grid_x, s[0]).any() and np.isclose(grid_y, s[1]).any()
        # nearest: no grid point is closer
        assert abs(s[0] - p[0]) <= np.abs(grid_x - p[0]).min() + 1e-4
        assert abs(s[1] - p[1]) <= np.abs(grid_y - p[1]).min() + 1e-4
    mask = ring_mask()
    pts, _ = sample_points(mask, box_of(mask), 2, 1, rng, use_center=True, snap=True)
    assert np.isclose(grid_x, pts[0, 0]).any() and np.isclose(grid_y, pts[0, 1]).any()


def test_box_jitter_stays_within_sams_noise():
    size = (1000, 1000)
    small = np.array([400, 400, 450, 430], np.float32)  # sides 50 and 30: std 5 and 3 px
    rng = np.random.default_rng(0)
    offsets = np.stack([jitter_box(small, size, rng) - small for _ in range(4000)])
    np.testing.assert_allclose(offsets.std(0), [5, 3, 5, 3], rtol=0.06)
    assert np.abs(offsets.mean(0)).max() < 0.3
    large = np.array([200, 200, 700, 800], np.float32)  # std 50/60 px, capped at 20
    offsets = np.stack([jitter_box(large, size, rng) - large for _ in range(500)])
    assert np.abs(offsets).max() <= 20 + 1e-4 and np.abs(offsets).max() > 19
    uniform = np.stack([jitter_box(small, size, rng, distribution="uniform") - small
                        for _ in range(500)])
    assert (np.abs(uniform) <= [5, 3, 5, 3]).all()
    edge = jitter_box(np.array([0, 0, 64, 48], np.float32), (H, W), rng)
    assert edge.min() >= 0 and edge[2] <= W and edge[3] <= H and edge[0] <= edge[2]


def test_scaled_box_keeps_centre_and_is_clipped():
    np.testing.assert_allclose(scale_box(np.array([20, 10, 40, 30]), 1.5, (H, W)), [15, 5, 45, 35])
    np.testing.assert_allclose(scale_box(np.array([0, 0, 20, 20]), 2.0, (H, W)), [0, 0, 30, 30])
    np.testing.assert_allclose(scale_box(np.array([50, 30, 64, 48]), 3.0, (H, W)), [36, 12, 64, 48])


def test_full_image_box_equals_the_image():
    np.testing.assert_array_equal(full_image_box((H, W)), [0, 0, W, H])


def many_objects(n: int = 40) -> Sample:
    masks = np.zeros((n, 32, 32), bool)
    for i in range(n):
        masks[i, i % 24: i % 24 + 6, (3 * i) % 24: (3 * i) % 24 + 7] = True
        masks[i, i % 24 + 2, (3 * i) % 24 + 3] = False
    return Sample(np.zeros((32, 32, 3), np.uint8), masks=masks)


def test_mix_probabilities_are_respected():
    cfg = PromptConfig(mix={"box": 0.5, "points": 0.3, "none": 0.2})
    sampler = PromptSampler(cfg)
    s = many_objects()
    counts = {"box": 0, "points": 0, "none": 0}
    rng = np.random.default_rng(0)
    for _ in range(50):
        for p in sampler(s, rng):
            counts[p.kind.name] += 1
    total = sum(counts.values())
    assert abs(counts["box"] / total - 0.5) < 0.04
    assert abs(counts["points"] / total - 0.3) < 0.04
    assert abs(counts["none"] / total - 0.2) < 0.04


def test_kinds_carry_what_they_name():
    cfg = PromptConfig(mix={"box+points": 1.0, "full_box": 1.0, "mask": 1.0, "none": 1.0},
                       points={"positive": 2, "negative": 1})
    s = many_objects()
    for p in PromptSampler(cfg)(s, np.random.default_rng(1)):
        k = p.kind
        assert (p.box is not None) == (k.box is not None)
        assert (p.points is not None) == k.points
        if k.points:
            assert p.points.shape == (3, 2)
        if k.box == "full":
            np.testing.assert_array_equal(p.box, [0, 0, 32, 32])
        assert p.structure == ((3 if k.points else 0), k.box is not None, k.mask is not None)


def test_same_seed_same_prompts():
    cfg = PromptConfig(mix={"box": 1, "points": 1}, points={"positive": 2, "negative": 2})
    s = many_objects()
    a = PromptSampler(cfg)(s, np.random.default_rng(5))
    b = PromptSampler(cfg)(s, np.random.default_rng(5))
    c = PromptSampler(cfg)(s, np.random.default_rng(6))
    flat = [lambda ps: [(p.kind.name, None if p.box is None else p.box.tolist(),
                         None if p.points is None else p.points.tolist()) for p in ps]][0]
    assert flat(a) == flat(b) != flat(c)


def test_previous_logits_are_used_only_for_the_same_placement():
    s = many_objects(3)
    keys = [mask_key(m) for m in s.masks]
    store = PreviousLogitsStore()
    store.put(7, 1, keys[1], np.full((1, 8, 8), 3.0))
    cfg = PromptConfig(mix={"logits": 1.0}, mask={"logits_fallback": "full_box"})
    prompts = PromptSampler(cfg, store)(s, np.random.default_rng(0), sample_index=7, mask_keys=keys)
    assert [p.kind.name for p in prompts] == ["full_box", "logits", "full_box"]
    np.testing.assert_array_equal(prompts[1].logits, np.full((8, 8), 3.0))
    moved = [keys[0], mask_key(np.roll(s.masks[1], 1, axis=0)), keys[2]]
    prompts = PromptSampler(cfg, store)(s, np.random.default_rng(0), 7, moved)
    assert prompts[1].kind.name == "full_box"
    combined = PromptConfig(mix={"logits+points": 1.0})
    prompts = PromptSampler(combined, store)(s, np.random.default_rng(0), 7, keys)
    assert [p.kind.name for p in prompts] == ["points", "points+logits", "points"]


def test_mask_prompt_is_logits_of_the_target():
    t = torch.zeros(1, 16, 16, dtype=torch.bool)
    t[0, :8] = True
    t[0, 8:10, :2] = True  # half of one low-res pixel
    m = mask_logits_from_targets(t, (4, 4), logit=10.0)
    assert m.shape == (1, 1, 4, 4)
    assert (m[0, 0, :2] == 10).all() and (m[0, 0, 3] == -10).all()
    assert m[0, 0, 2, 0] == pytest.approx(-5.0)  # 4 of 16 covered -> 10 * (2 * 0.25 - 1)


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


def test_bad_prompt_config_names_the_option_and_choices():
    with pytest.raises(ValidationError,
                       match="prompts.mix: unknown prompt kind 'boxes'.*box, full_box"):
        PromptConfig(mix={"boxes": 1.0})
    with pytest.raises(ValidationError, match="two boxes"):
        PromptConfig(mix={"box+full_box": 1.0})
    with pytest.raises(ValidationError, match="logits_fallback"):
        PromptConfig(mask={"logits_fallback": "logits"})
    with pytest.raises(ValidationError, match="click_mode"):
        PromptConfig(click_mode="nearest")
    with pytest.raises(ValidationError, match="extra"):
        PromptConfig(points={"positives": 2})
    assert parse_prompt_kind("points+box").name == "box+points"
