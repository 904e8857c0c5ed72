"""Box rules: SAM's training noise, ``lightning_coco_boxes``'s scaled box, the full-image box."""

from __future__ import annotations

import numpy as np

from samtune.prompts import clip_box, full_image_box, jitter_box, scale_box
from tests.prompts.shapes import H, W


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


def test_clip_box_keeps_a_box_inside_the_image():
    np.testing.assert_array_equal(clip_box(np.array([-5.0, 3, 70, 60]), (H, W)), [0, 3, W, H])
