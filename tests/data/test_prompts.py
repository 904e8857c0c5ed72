"""The training prompt sampler: the mix of prompt kinds, what each kind carries, seeding, the
previous-logits store and the mask prompt (the prompt rules themselves: ``tests/prompts``)."""

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
