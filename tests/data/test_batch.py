"""A batch reaches the adapter in model coordinates: prompts, targets and images line up after
each family's preprocessing, and every prompt group decodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samtune
from samtune.config.prompts import PromptConfig
from samtune.data.batch import Batch, Collator, Item, image_key
from samtune.data.prompts import PreviousLogitsStore, PromptSampler, mask_key
from samtune.data.sample import Sample
from samtune.models.preprocess import ResizeLongestSide, SquareResize

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def blob(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def samples() -> list[Sample]:
    """Two non-square images of different shapes (so padding and aspect both matter), with
    three objects and one object; only the first has categories."""
    rng = np.random.default_rng(0)
    a = np.stack([blob(48, 80, 12, 15, 7, 10), blob(48, 80, 30, 55, 12, 18),
                  blob(48, 80, 38, 20, 6, 6)])
    b = blob(70, 50, 40, 25, 20, 12)[None]
    return [
        Sample(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8), masks=a, category_ids=[3, 4, 3]),
        Sample(rng.integers(0, 255, (70, 50, 3), dtype=np.uint8), masks=b),
    ]


def collate(collator: Collator, config: PromptConfig, seed: int = 0,
            store: PreviousLogitsStore | None = None) -> Batch:
    sampler = PromptSampler(config, store)
    items = []
    for index, s in enumerate(samples()):
        keys = [mask_key(m) for m in s.masks]
        items.append(Item(s, sampler(s, np.random.default_rng([seed, index]), index, keys),
                          index, keys))
    return collator(items)


@pytest.fixture(scope="module", params=["sam_tiny", "sam2_tiny", "mobile_sam_tiny"])
def model(request):
    return samtune.load_model(request.param).eval()


def group_of(batch: Batch, i: int):
    for objects, prompts in batch.prompt_groups:
        hits = (objects == i).nonzero()
        if len(hits):
            return prompts, int(hits[0, 0])
    raise AssertionError(f"object {i} is in no prompt group")


def test_points_land_on_their_targets(model):
    collator = Collator.for_model(model)
    cfg = PromptConfig(mix={"points": 1.0},
                       points={"positive": 3, "negative": 0, "use_center": True})
    batch = collate(collator, cfg)
    pre = collator.preprocessor
    assert batch.num_objects == 4
    for i in range(batch.num_objects):
        prompts, row = group_of(batch, i)
        assert prompts.image_index[row] == batch.object_image[i]
        pts = prompts.points[row]
        assert (prompts.point_labels[row] == 1).all()
        x, y = pts[0].tolist()  # the centre point, well inside the object
        assert batch.targets[i, int(y), int(x)]
        # every positive: the centre of its original pixel lands on the target
        b = int(batch.object_image[i])
        orig = pts / torch.tensor(pre.coord_scale(batch.original_sizes[b]))
        centres = pre.transform_coords(orig.numpy() + 0.5, batch.original_sizes[b])
        for cx, cy in centres.tolist():
            assert batch.targets[i, int(cy), int(cx)]


def test_tight_boxes_enclose_their_targets(model):
    cfg = PromptConfig(mix={"box": 1.0}, box={"jitter": 0.0})
    batch = collate(Collator.for_model(model), cfg)
    for i in range(batch.num_objects):
        prompts, row = group_of(batch, i)
        x1, y1, x2, y2 = prompts.boxes[row].tolist()
        ys, xs = batch.targets[i].nonzero().unbind(1)
        assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1
        assert ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
        assert abs(xs.min() - x1) <= 1 and abs(ys.max() + 1 - y2) <= 1  # and tightly


def test_every_prompt_group_decodes(model):
    cfg = PromptConfig(mix={"box": 1, "points": 1, "box+points": 1, "mask": 1, "full_box": 1,
                            "none": 1}, points={"positive": 2, "negative": 1})
    batch = collate(Collator.for_model(model), cfg, seed=3)
    covered = torch.cat([g.objects for g in batch.prompt_groups]).sort().values
    assert covered.tolist() == list(range(batch.num_objects))
    h, w = model.mask_input_size
    with torch.no_grad():
        features = model.encode(batch.images)
        for objects, prompts in batch.prompt_groups:
            for multimask, k in ((True, 3), (False, 1)):
                low_res, iou = model.decode(features, prompts, multimask)
                assert low_res.shape == (len(objects), k, h, w)
                assert iou.shape == (len(objects), k)


def test_mask_prompts_are_the_targets_at_low_res(model):
    batch = collate(Collator.for_model(model),
                    PromptConfig(mix={"mask": 1.0}, mask={"logit": 8.0}))
    (objects, prompts), = batch.prompt_groups
    h, w = model.mask_input_size
    assert prompts.mask_inputs.shape == (4, 1, h, w)
    assert prompts.points is None and prompts.boxes is None
    assert prompts.mask_inputs.abs().max() == 8.0
    inside = torch.nn.functional.interpolate(batch.targets[objects, None].float(), (h, w),
                                             mode="area") > 0.5
    assert ((prompts.mask_inputs > 0) == inside).all()


def test_batch_fields():
    pre = ResizeLongestSide(64, MEAN, STD)
    batch = collate(Collator(pre, (16, 16)), PromptConfig())
    assert batch.images.shape == (2, 3, 64, 64) and len(batch) == 2
    assert batch.original_sizes == [(48, 80), (70, 50)]
    assert batch.input_sizes == [(38, 64), (64, 46)]
    assert batch.targets.shape == (4, 64, 64) and batch.targets.dtype == torch.bool
    assert not batch.targets[:3, 38:].any() and not batch.targets[3, :, 46:].any()
    assert batch.object_image.tolist() == [0, 0, 0, 1]
    assert batch.category_ids.tolist() == [3, 4, 3, -1]
    assert batch.object_ids.tolist() == [0, 1, 2, 0]
    assert batch.sample_indices.tolist() == [0, 1]
    assert batch.image_ids == [image_key(s.image) for s in samples()]
    assert len(set(batch.image_ids)) == 2 and len(batch.mask_keys) == 4
    moved = batch.to("cpu")
    assert torch.equal(moved.targets, batch.targets) and len(moved.prompt_groups) == len(
        batch.prompt_groups)


@pytest.mark.parametrize("pre", [ResizeLongestSide(64, MEAN, STD), SquareResize(64, MEAN, STD)])
def test_resize_masks_follows_the_image_resize(pre):
    masks = np.zeros((2, 16, 32), bool)
    masks[0, 4:8, 8:16] = True
    out = pre.resize_masks(masks)
    in_h, in_w = pre.input_size((16, 32))
    assert out.shape == (2, 64, 64) and out.dtype == torch.bool
    assert not out[1].any() and not out[:, in_h:].any()
    sy, sx = in_h / 16, in_w / 32
    ys, xs = out[0].nonzero().unbind(1)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (4 * sy, 8 * sy, 8 * sx, 16 * sx)
    assert pre.resize_masks(np.zeros((0, 16, 32), bool)).shape == (0, 64, 64)


def test_stored_logits_reach_the_mask_input():
    pre = ResizeLongestSide(64, MEAN, STD)
    collator = Collator(pre, (16, 16))
    cfg = PromptConfig(mix={"logits": 1.0})
    store = PreviousLogitsStore()
    first = collate(collator, cfg, store=store)
    assert all(p.mask_inputs is None for _, p in first.prompt_groups)  # fell back to boxes
    logits = torch.randn(first.num_objects, 1, 16, 16)
    store.update(first, torch.arange(first.num_objects), logits)
    assert len(store) == 4
    second = collate(collator, cfg, store=store)
    (objects, prompts), = second.prompt_groups
    torch.testing.assert_close(prompts.mask_inputs, logits[objects].half().float())
