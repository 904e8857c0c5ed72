"""Each training option takes effect: freezing, LoRA, accumulation, the cache, bf16, rounds."""

import pytest
import torch

from samtune.data.batch import Collator
from samtune.data.datamodule import SamDataModule
from samtune.data.mixing import open_dataset
from samtune.prompts import correction_clicks
from samtune.train.cache import EmbeddingCache, model_key, preprocess_key
from samtune.train.module import FineTuneModule
from samtune.train.run import build_trainer


def first_batch(module, config):
    data = SamDataModule(open_dataset(config.data, "train"), Collator.for_model(module.adapter),
                         prompts=config.prompts, batch_size=2, seed=0)
    return next(iter(data.train_dataloader())), data


def fit(module, config, data):
    trainer = build_trainer(config, has_val=False)
    trainer.fit(module, datamodule=data)
    return trainer


def snapshot(module, prefix):
    return {k: v.clone() for k, v in module.adapter.model.state_dict().items() if k.startswith(prefix)}


def test_frozen_groups_do_not_change(make_config):
    config = make_config("model.freeze=[image_encoder, prompt_encoder]")
    module = FineTuneModule(config)
    before_enc, before_dec = snapshot(module, "image_encoder."), snapshot(module, "mask_decoder.")
    _, data = first_batch(module, config)
    fit(module, config, data)
    after_enc, after_dec = snapshot(module, "image_encoder."), snapshot(module, "mask_decoder.")
    assert all(torch.equal(before_enc[k], after_enc[k]) for k in before_enc)
    assert any(not torch.equal(before_dec[k], after_dec[k]) for k in before_dec)


def test_lora_trains_only_adapter_tensors(make_config):
    config = make_config("model.freeze=[image_encoder, prompt_encoder, mask_decoder]",
                         "model.lora={targets: [image_encoder], rank: 2}")
    module = FineTuneModule(config)
    trainable = [n for n, p in module.adapter.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.clone() for n, p in module.adapter.model.named_parameters()}
    _, data = first_batch(module, config)
    fit(module, config, data)
    changed = {n for n, p in module.adapter.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)
    # lora_B starts at zero and must have moved
    assert any("lora_B" in n for n in changed)


@pytest.mark.parametrize("batch_norm", ["frozen", "update"])
def test_batch_norm_statistics_stay_pretrained_unless_asked(make_config, batch_norm):
    """A LoRA run on TinyViT trains its encoder: its batch norms keep their running statistics
    (eval mode) by default, and re-estimate them only with ``model.batch_norm=update``."""
    config = make_config("model.name=mobile_sam_tiny", "model.freeze=[image_encoder, prompt_encoder]",
                         "model.lora={targets: [image_encoder], rank: 2}",
                         f"model.batch_norm={batch_norm}")
    module = FineTuneModule(config).train()  # as train() builds it
    stats = {n: b.clone() for n, b in module.adapter.model.named_buffers() if "running_mean" in n}
    assert stats
    _, data = first_batch(module, config)
    fit(module, config, data)
    moved = {n for n, b in module.adapter.model.named_buffers() if n in stats and not torch.equal(stats[n], b)}
    if batch_norm == "frozen":
        assert not moved
        assert not any(k.endswith("running_mean") for k in module.trainable_state())
    else:
        assert moved == set(stats)
        assert moved <= set(module.trainable_state())


@pytest.mark.parametrize("setting", ["auto", "false"])
def test_one_click_prompts_train_the_candidates_inference_reads(make_config, setting):
    """``auto``: a one-click prompt gets three candidates (SAM's rule; eval's point mode and
    segment-everything keep the best-scored of three), boxes one; a batch mixing both still
    gives one loss. ``false``: one candidate for everything."""
    config = make_config("prompts.mix={box: 0.5, points: 0.5}", f"train.multimask_output={setting}")
    module = FineTuneModule(config).train()
    batch, _ = first_batch(module, config)
    calls = []
    decode = module.adapter.decode

    def recording(features, prompts, multimask_output):
        calls.append((prompts.boxes is None and prompts.points.shape[1] == 1, multimask_output))
        return decode(features, prompts, multimask_output=multimask_output)

    module.adapter.decode = recording
    total, _, (logits, iou, _, classes), _ = module._step(batch, "train")
    assert classes is None  # no class head
    assert {one_click for one_click, _ in calls} == {True, False}  # the batch mixes both
    if setting == "auto":
        assert all(one_click == multimask for one_click, multimask in calls)
        assert logits.shape[1] == iou.shape[1] == 3
    else:
        assert not any(multimask for _, multimask in calls)
        assert logits.shape[1] == 1
    assert torch.isfinite(total)
    total.backward()


def test_accumulation_steps_the_optimizer_every_k_batches(make_config):
    config = make_config("train.accumulate_grad_batches=2", "train.max_steps=1")
    module = FineTuneModule(config)
    _, data = first_batch(module, config)
    steps = []
    original = torch.optim.AdamW.step

    def counting(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = counting
    try:
        trainer = fit(module, config, data)
    finally:
        torch.optim.AdamW.step = original
    assert trainer.global_step == 1 and len(steps) == 1
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 2


def test_cache_skips_the_encoder_and_gives_the_same_loss(make_config, tmp_path):
    config = make_config()
    module = FineTuneModule(config).eval()
    batch, _ = first_batch(module, config)
    module.cache = EmbeddingCache(tmp_path / "cache", model_key(module.adapter), preprocess_key(module.adapter))
    with torch.no_grad():
        first = module._step(batch, "val")[0]
        calls = module.encoder_calls
        second = module._step(batch, "val")[0]
    assert calls == 1 and module.encoder_calls == 1  # the second step read the cache
    assert module.cache.hits == len(batch)
    torch.testing.assert_close(first, second, rtol=0, atol=1e-6)
    module.cache = None
    with torch.no_grad():
        uncached = module._step(batch, "val")[0]
    torch.testing.assert_close(first, uncached, rtol=0, atol=1e-6)


def test_bf16_mixed_runs_on_cpu(make_config):
    config = make_config("train.precision=bf16-mixed", "train.max_steps=2")
    module = FineTuneModule(config)
    _, data = first_batch(module, config)
    trainer = fit(module, config, data)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_multimask_and_correction_rounds_run(make_config):
    config = make_config("train.multimask_output=true", "train.correction_rounds=2",
                         "model.freeze=[image_encoder]")
    module = FineTuneModule(config)
    batch, _ = first_batch(module, config)
    outputs = module.forward_objects(batch, module.features(batch), torch.Generator().manual_seed(0), rounds=2)
    assert [o[0].shape[1] for o in outputs] == [3, 1, 1]
    total, parts, _, _ = module._step(batch, "train")
    total.backward()
    assert torch.isfinite(total)


@pytest.mark.parametrize("mode", ["sample", "farthest"])
def test_correction_rounds_click_as_prompts_click_mode_says(make_config, monkeypatch, mode):
    config = make_config("train.correction_rounds=1", f"prompts.click_mode={mode}")
    module = FineTuneModule(config)
    batch, _ = first_batch(module, config)
    seen = []

    def recording(pred, target, valid, generator, click_mode):
        seen.append(click_mode)
        return correction_clicks(pred, target, valid, generator, click_mode)

    monkeypatch.setattr("samtune.train.module.correction_clicks", recording)
    module.forward_objects(batch, module.features(batch), torch.Generator().manual_seed(0), rounds=1)
    assert seen == [mode]


def test_farthest_clicks_are_the_deepest_error_pixels():
    target = torch.zeros(2, 12, 12, dtype=torch.bool)
    target[:, 1:10, 1:10] = True
    pred = target.clone()
    pred[0, 1:10, 1:6] = False    # missed a 9x5 band: its middle column, first of the ties
    pred[1, 10:12, :] = True      # a thin spill only: a negative click in it
    valid = torch.ones(12, 12, dtype=torch.bool).expand(2, 12, 12)
    points, labels = correction_clicks(pred, target, valid, None, "farthest")
    assert labels.tolist() == [1, 0]
    assert points[0].tolist() == [3.0, 3.0]
    x, y = points[1].long()
    assert pred[1, y, x] and not target[1, y, x]


def test_error_clicks_land_in_the_error_region():
    target = torch.zeros(3, 8, 8, dtype=torch.bool)
    target[:, 2:6, 2:6] = True
    pred = target.clone()
    pred[0, 2:6, 2:4] = False   # missed part: positive click there
    pred[1, 0:2, :] = True      # spill: negative click there
    valid = torch.ones(8, 8, dtype=torch.bool).expand(3, 8, 8)
    points, labels = correction_clicks(pred, target, valid, torch.Generator().manual_seed(0))
    x, y = points[0].long()
    assert labels[0] == 1 and target[0, y, x] and not pred[0, y, x]
    x, y = points[1].long()
    assert labels[1] == 0 and pred[1, y, x] and not target[1, y, x]
    x, y = points[2].long()  # no error: a positive click on the object
    assert labels[2] == 1 and target[2, y, x]


def test_low_res_loss_compares_decoder_logits_with_shrunk_targets(make_config):
    config = make_config("train.loss_resolution=low_res")
    module = FineTuneModule(config)
    batch, _ = first_batch(module, config)
    valid = module.valid_mask(batch)
    targets, low_valid = module.low_res_targets(batch, valid)
    h, w = module.adapter.mask_input_size
    assert targets.shape == (batch.num_objects, h, w) and low_valid.shape == targets.shape
    # the shrunk target keeps each object's area fraction (within the 4x4 block rounding)
    scale = (module.adapter.image_size // h) ** 2
    assert torch.allclose(targets.sum((1, 2)).float() * scale, batch.targets.sum((1, 2)).float(),
                          rtol=0.35, atol=4 * scale)
    total, parts, _, _ = module._step(batch, "train")
    total.backward()
    assert torch.isfinite(total)
    grads = [p.grad for p in module.adapter.model.mask_decoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_sam2_decoder_fine_tune_keeps_the_encoder_projections_frozen():
    """SAM 2's conv_s0/conv_s1 live in the decoder module but project encoder features: a
    decoder fine-tune must leave them (and so the cache) alone."""
    from samtune.config import build_run_config

    config = build_run_config(None, ["model.name=sam2_tiny", "model.freeze=[image_encoder, prompt_encoder]"])
    module = FineTuneModule(config)
    groups = module.adapter.parameter_groups()
    assert not module.encoder_trainable
    assert not any(p.requires_grad for p in groups["image_encoder"].values())
    assert any("conv_s0" in n for n in groups["image_encoder"])
    assert all(p.requires_grad for p in groups["mask_decoder"].values())


def test_the_training_loss_is_normalised_by_the_objects_of_every_process(make_config, monkeypatch):
    """Under DDP the loss divides by the all-reduced mean object count (SAM 2's trainer): here
    a second process with three times the objects halves this one's loss; alone, the loss
    divides by its own objects as before."""
    config = make_config("model.freeze=[image_encoder]")
    module = FineTuneModule(config)
    batch, _ = first_batch(module, config)
    alone = module._step(batch, "train")[0]
    assert module._step(batch, "val")[0].item() == pytest.approx(alone.item())
    n = batch.num_objects
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(3 * n))
    shared = module._step(batch, "train")[0]
    assert shared.item() == pytest.approx(alone.item() / 2, rel=1e-5)
