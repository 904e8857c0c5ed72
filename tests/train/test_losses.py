"""Losses against hand-computed values on tiny masks."""

from __future__ import annotations

import math

import pytest
import torch

from samtune.train.losses import (
    SegmentationLoss,
    actual_iou,
    bce_loss,
    dice_loss,
    focal_loss,
    iou_head_loss,
    soft_iou_loss,
)

BIG = 50.0  # sigmoid(50) == 1.0 and sigmoid(-50) ~ 2e-22 in float32: hard masks as logits
LN2 = math.log(2.0)


def hard_logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, torch.tensor(BIG), torch.tensor(-BIG))


def square(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


@pytest.fixture
def overlap():
    """Prediction and target of 4 pixels each, overlapping in 2: IoU 1/3, Dice 1/2."""
    pred = square(4, 4, 0, 2, 0, 2)
    target = square(4, 4, 0, 2, 1, 3)
    return hard_logits(pred)[None], target[None]


def test_dice_of_known_overlap(overlap):
    logits, target = overlap
    assert dice_loss(logits, target, smooth=1.0).item() == pytest.approx(1 - 5 / 9, abs=1e-6)
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(0.5, abs=1e-6)


def test_losses_at_logit_zero():
    """p = 0.5 everywhere on 2x2, one positive pixel: every term has a closed form."""
    logits = torch.zeros(1, 2, 2)
    target = square(2, 2, 0, 1, 0, 1)[None]
    # focal: ce = ln2, (1 - p_t)^2 = 1/4, alpha_t = .25 (positive) or .75 (3 negatives)
    expected_focal = (0.25 + 3 * 0.75) * 0.25 * LN2 / 4
    assert focal_loss(logits, target, alpha=0.25, gamma=2).item() == pytest.approx(expected_focal)
    assert focal_loss(logits, target, alpha=None, gamma=0).item() == pytest.approx(LN2)
    assert bce_loss(logits, target).item() == pytest.approx(LN2)
    # dice: (2*0.5 + 1) / (2 + 1 + 1) = 1/2
    assert dice_loss(logits, target, smooth=1.0).item() == pytest.approx(0.5)
    # soft IoU: 0.5 / (2 + 1 - 0.5) = 0.2
    assert soft_iou_loss(logits, target).item() == pytest.approx(0.8)
    assert soft_iou_loss(logits, target, tanh_scale=3).item() == pytest.approx(1 - math.tanh(0.6))


def test_iou_head_regresses_to_iou_of_logits_above_zero(overlap):
    logits, target = overlap
    assert actual_iou(logits, target).item() == pytest.approx(1 / 3)
    pred = torch.tensor([0.5])
    assert iou_head_loss(pred, logits, target).item() == pytest.approx((0.5 - 1 / 3) ** 2)
    assert iou_head_loss(pred, logits, target, kind="l1").item() == pytest.approx(1 / 6)


def test_actual_iou_thresholds_at_logit_zero_not_half():
    target = square(4, 4, 0, 2, 0, 2)[None]
    logits = torch.where(target, torch.tensor(0.3), torch.tensor(-1.0))
    assert actual_iou(logits, target).item() == pytest.approx(1.0)


def test_actual_iou_of_empty_prediction_and_target_is_zero():
    """Union clamped to one pixel (R0, SAM 2): the head learns to score empty masks low."""
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert actual_iou(hard_logits(empty), empty).item() == 0.0


def test_valid_mask_excludes_padding():
    """Loss on a padded 4x6 tensor with valid 4x4 equals the loss on the 4x4 crop."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, generator=gen) * 3
    target = torch.rand(2, 4, 6, generator=gen) > 0.5
    valid = torch.zeros(4, 6, dtype=torch.bool)
    valid[:, :4] = True
    crop_l, crop_t = logits[..., :4], target[..., :4]
    for fn in (focal_loss, dice_loss, bce_loss, soft_iou_loss, actual_iou):
        padded = fn(logits, target, valid)
        assert torch.allclose(padded, fn(crop_l, crop_t), atol=1e-6), fn.__name__
        per_mask_valid = fn(logits, target, valid.expand(2, 4, 6))
        assert torch.allclose(per_mask_valid, padded, atol=1e-6), fn.__name__


def test_per_mask_functions_keep_the_candidate_dimension():
    logits = torch.randn(2, 3, 5, 5)
    target = torch.rand(2, 5, 5) > 0.5
    for fn in (focal_loss, dice_loss, bce_loss, soft_iou_loss, actual_iou):
        out = fn(logits, target)
        assert out.shape == (2, 3), fn.__name__
        assert torch.allclose(out[:, 1], fn(logits[:, 1], target), atol=1e-6), fn.__name__


def test_no_nan_on_empty_targets():
    empty = torch.zeros(2, 8, 8, dtype=torch.bool)
    for value in (-200.0, 0.0, 200.0):  # -200: sigmoid underflows to exactly 0
        logits = torch.full((2, 8, 8), value, requires_grad=True)
        loss = SegmentationLoss(
            {"focal": 1, "dice": 1, "bce": 1, "iou": 1, "iou_head": 1},
            dice_smooth=0.0,
            iou_smooth=0.0,
        )
        out = loss(logits, empty, torch.zeros(2, requires_grad=True))
        out.total.backward()
        assert torch.isfinite(out.total)
        assert all(torch.isfinite(v) for v in out.parts.values())
        assert torch.isfinite(logits.grad).all()
    # empty target, empty (all -200) prediction: a perfect answer costs nothing
    perfect = SegmentationLoss({"dice": 1, "iou": 1}, dice_smooth=0.0)(
        torch.full((1, 8, 8), -200.0), empty[:1]
    )
    assert perfect.total.item() == 0.0


def test_soft_iou_has_gradient_where_r0_hard_iou_has_none():
    logits = torch.zeros(1, 4, 4, requires_grad=True)
    target = square(4, 4, 0, 2, 0, 2)[None]
    soft_iou_loss(logits, target, tanh_scale=3).sum().backward()
    assert logits.grad.abs().sum() > 0
    # positive pixels are pushed up, negative ones down
    assert (logits.grad[target] < 0).all() and (logits.grad[~target] > 0).all()


def test_combination_weights_and_parts():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 6, generator=gen)
    target = torch.rand(3, 6, 6, generator=gen) > 0.5
    iou_pred = torch.rand(3, generator=gen)
    r0 = SegmentationLoss(
        {"dice": 0.4, "focal": 12, "iou_head": 5, "iou": 2}, focal_alpha=0.3, iou_tanh_scale=3
    )
    out = r0(logits, target, iou_pred)
    assert set(out.parts) == {"dice", "focal", "iou_head", "iou"}
    expected = (
        0.4 * dice_loss(logits, target).mean()
        + 12 * focal_loss(logits, target, alpha=0.3).mean()
        + 5 * iou_head_loss(iou_pred, logits, target).mean()
        + 2 * soft_iou_loss(logits, target, tanh_scale=3).mean()
    )
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.parts["focal"].item() == pytest.approx(
        focal_loss(logits, target, alpha=0.3).mean().item(), rel=1e-6
    )
    # a zero weight reports the term but does not train on it
    logged = SegmentationLoss({"focal": 20, "dice": 1, "bce": 0})(logits, target)
    sam = SegmentationLoss({"focal": 20, "dice": 1})(logits, target)
    assert "bce" in logged.parts and logged.total.item() == pytest.approx(sam.total.item())


def test_normalization_is_per_mask():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 6, generator=gen)
    target = torch.rand(2, 6, 6, generator=gen) > 0.5
    iou_pred = torch.rand(2, generator=gen)
    loss = SegmentationLoss()
    both = loss(logits, target, iou_pred).total
    singles = [
        loss(logits[i : i + 1], target[i : i + 1], iou_pred[i : i + 1]).total for i in (0, 1)
    ]
    assert both.item() == pytest.approx((singles[0] + singles[1]).item() / 2, rel=1e-6)
    doubled = loss(logits.repeat(2, 1, 1), target.repeat(2, 1, 1), iou_pred.repeat(2)).total
    assert doubled.item() == pytest.approx(both.item(), rel=1e-6)
    # a global mask count (DDP) divides the local sum
    assert loss(logits, target, iou_pred, num_masks=4).total.item() == pytest.approx(
        both.item() / 2, rel=1e-6
    )


def test_best_of_k_trains_the_best_mask_and_the_iou_head_on_all():
    target = square(8, 8, 2, 6, 2, 6)
    soft = 0.04  # logits of +-2: every candidate has a gradient of its own
    candidates = soft * torch.stack(
        [
            hard_logits(square(8, 8, 0, 8, 0, 8)),  # whole image: poor
            hard_logits(target),  # exact
            hard_logits(square(8, 8, 0, 2, 0, 2)),  # disjoint: worst
        ]
    )
    # the second object lists the same candidates rolled: disjoint, whole, exact
    logits = torch.stack([candidates, candidates.roll(1, 0)]).clone().requires_grad_(True)
    iou_pred = torch.full((2, 3), 0.5, requires_grad=True)
    targets = torch.stack([target, target])
    out = SegmentationLoss()(logits, targets, iou_pred)
    assert out.best.tolist() == [1, 2]
    (20 * out.parts["focal"] + out.parts["dice"]).backward(retain_graph=True)
    trained = logits.grad.abs().sum((-2, -1)) > 0
    assert trained.tolist() == [[False, True, False], [False, False, True]]
    out.parts["iou_head"].backward()
    assert (iou_pred.grad != 0).all()
    # the exact candidate has IoU 1, the whole-image one 16/64, the disjoint one 0
    expected = ((0.5 - 0.25) ** 2 + (0.5 - 1.0) ** 2 + 0.5**2) / 3
    assert out.parts["iou_head"].item() == pytest.approx(expected)


def test_iou_head_on_best_candidate_only():
    target = square(8, 8, 2, 6, 2, 6)[None]
    logits = torch.stack([hard_logits(target[0]), hard_logits(~target[0])])[None]
    out = SegmentationLoss(iou_head_all=False)(logits, target, torch.tensor([[0.25, 0.25]]))
    assert out.best.tolist() == [0]
    assert out.parts["iou_head"].item() == pytest.approx(0.75**2)


def test_empty_batch_gives_zero_loss():
    logits = torch.zeros(0, 3, 8, 8, requires_grad=True)
    out = SegmentationLoss()(logits, torch.zeros(0, 8, 8, dtype=torch.bool), torch.zeros(0, 3))
    assert out.total.item() == 0.0 and out.best.shape == (0,)


def test_bfloat16_logits_are_computed_in_float32():
    logits = torch.randn(2, 16, 16)
    target = torch.rand(2, 16, 16) > 0.5
    ref = focal_loss(logits.bfloat16().float(), target)
    out = focal_loss(logits.bfloat16(), target)
    assert out.dtype == torch.float32 and torch.allclose(out, ref)


def test_bad_configuration_and_shapes_fail_clearly():
    with pytest.raises(ValueError, match="unknown loss terms"):
        SegmentationLoss({"focal": 1, "lovasz": 1})
    with pytest.raises(ValueError, match="no mask term"):
        SegmentationLoss({"iou_head": 1})
    with pytest.raises(ValueError, match="needs iou_pred"):
        SegmentationLoss()(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="targets must be"):
        dice_loss(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="iou_pred must have shape"):
        iou_head_loss(
            torch.zeros(2), torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool)
        )


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.8, 2.0), (None, 1.5), (0.15, 0.0)])
def test_focal_matches_torchvision_per_pixel(alpha, gamma):
    """samtune computes the focal term from its shared probabilities and cross-entropy; it
    must equal torchvision's ``sigmoid_focal_loss`` averaged over the valid pixels, values
    and gradients, for K candidates per object."""
    from torchvision.ops import sigmoid_focal_loss

    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 2, 16, 20, generator=gen) * 4).requires_grad_(True)
    targets = torch.rand(3, 16, 20, generator=gen) > 0.6
    valid = torch.ones(3, 16, 20, dtype=torch.bool)
    valid[:, 12:] = False
    valid[1, :, 15:] = False
    ours = focal_loss(logits, targets, valid, alpha=alpha, gamma=gamma)
    pixel = sigmoid_focal_loss(logits, targets[:, None].float().expand_as(logits),
                               alpha=-1 if alpha is None else alpha, gamma=gamma)
    v = valid[:, None].float()
    reference = (pixel * v).sum((-2, -1)) / v.sum((-2, -1))
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(ours.sum(), logits)
    (reference_grad,) = torch.autograd.grad(reference.sum(), logits)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-9)


def test_terms_share_their_work_and_equal_the_separate_functions():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 12, 12, generator=gen) * 3
    targets = torch.rand(4, 12, 12, generator=gen) > 0.5
    valid = torch.rand(4, 12, 12, generator=gen) > 0.2
    loss = SegmentationLoss({"focal": 1, "dice": 1, "bce": 1, "iou": 1}, focal_alpha=0.3,
                            dice_smooth=1e-7, iou_smooth=0.5, iou_tanh_scale=3)
    terms = loss.mask_terms(logits, targets, valid)
    torch.testing.assert_close(terms["focal"], focal_loss(logits, targets, valid, 0.3))
    torch.testing.assert_close(terms["dice"], dice_loss(logits, targets, valid, 1e-7))
    torch.testing.assert_close(terms["bce"], bce_loss(logits, targets, valid))
    torch.testing.assert_close(terms["iou"], soft_iou_loss(logits, targets, valid, 0.5, 3))
    v = valid[:, None].float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets[:, None].float().expand_as(logits), reduction="none")
    torch.testing.assert_close(terms["bce"], (bce * v).sum((-2, -1)) / v.sum((-2, -1)))
