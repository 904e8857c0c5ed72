"""Point rules: positives on the mask and negatives in its box off it (``finestsam_points``),
padding where no candidate exists, the centre point and the automatic generator's grid."""

from __future__ import annotations

import numpy as np
import pytest

from samtune.prompts import PAD_LABEL, center_point, interior_point, sample_points, snap_to_grid
from tests.prompts.shapes import H, W, box_of, crescent_mask, ring_mask


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


@pytest.mark.parametrize("mask", [ring_mask(), crescent_mask()])
def test_interior_point_is_deep_inside_the_mask(mask):
    x, y = interior_point(mask)
    assert mask[int(y), int(x)]
    # at least 3 px from every off-mask pixel and the border (the ring's band is 7 px wide),
    # where the ring's mean pixel is not on the mask at all
    eys, exs = np.nonzero(~np.pad(mask, 1))
    assert np.hypot(exs - 1 - x, eys - 1 - y).min() >= 3
    ys, xs = np.nonzero(ring_mask())
    assert not ring_mask()[int(round(ys.mean())), int(round(xs.mean()))]


def test_interior_point_of_a_rectangle_is_its_centre_and_of_nothing_an_error():
    blob = np.zeros((H, W), bool)
    blob[10:21, 30:41] = True
    np.testing.assert_array_equal(interior_point(blob), [35, 15])
    with pytest.raises(ValueError, match="empty"):
        interior_point(np.zeros((H, W), bool))
