"""The run folder, checkpoints, logs, resume and the train CLI."""

import csv
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from samtune import load_model
from samtune.cli import app
from samtune.config import ConfigError, build_run_config
from samtune.errors import SamtuneError
from samtune.runs import load_run_config
from samtune.train.run import train


def test_run_folder_holds_config_checkpoints_and_logs(make_config):
    config = make_config("train.max_steps=4", "train.val_every_n_steps=2", "train.log_every_n_steps=1")
    result = train(config)
    run = config.run_dir
    assert load_run_config(run) == config  # every default written out, read back equal
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    best = [n for n in names if n.startswith("step=") and n.endswith(".ckpt")]
    assert best and all("-val_iou=" in n for n in best), names
    assert "last.ckpt" in names and "last.safetensors" in names and "best.ckpt" in names
    assert (run / "checkpoints" / "best.ckpt").resolve() == result.best_checkpoint.resolve()
    # only the trained tensors beside each checkpoint (the encoder is frozen by default)
    side = load_file(str(run / "checkpoints" / "last.safetensors"))
    assert side and all(k.startswith("mask_decoder.") for k in side)
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    logged = set().union(*(r.keys() for r in rows))
    assert {"train/loss", "train/loss_focal", "train/loss_dice", "val/iou", "val/dice",
            "lr-AdamW/mask_decoder"} <= logged
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "logs").iterdir())
    assert "val/iou" in result.base_metrics and "val/iou" in result.final_metrics
    # the checkpoint loads back as a plain model with the trained decoder
    model = load_model("sam_tiny", checkpoint=run / "checkpoints" / "last.ckpt")
    for k, v in side.items():
        assert torch.equal(model.model.state_dict()[k], v)


def test_an_existing_run_is_not_overwritten(make_config):
    config = make_config("train.max_steps=1")
    train(config)
    with pytest.raises(SamtuneError, match="--resume"):
        train(config)


@pytest.mark.parametrize("mix", ["{box: 0.5, points: 0.5}", "{box: 0.5, box+logits: 0.5}"])
def test_resume_matches_an_uninterrupted_run(make_config, mix):
    """Kill a run after step 4 of 6 (mid-epoch: 3 batches per epoch), resume it, and end with
    the weights of the uninterrupted run: optimizer, schedule, step and data order restored;
    with ``logits`` prompts, the previous logits of epoch 1 too (they travel in the
    checkpoint)."""
    common = ["train.max_steps=6", "train.val_every_n_steps=null", "train.val_every_n_epochs=1",
              "train.validate_before_training=false", "train.checkpoint.every_n_steps=1",
              "model.freeze=[image_encoder]", f"prompts.mix={mix}"]
    full = make_config(*common, name="full")
    train(full)
    part = make_config(*common, name="part")
    train(part)
    ckpts = part.run_dir / "checkpoints"
    for later in ckpts.glob("*"):
        if later.name.startswith(("periodic-step=5", "periodic-step=6", "last")):
            later.unlink()
    shutil.copy(ckpts / "periodic-step=4.ckpt", ckpts / "last.ckpt")  # killed after step 4
    if "logits" in mix:
        saved = torch.load(ckpts / "last.ckpt", weights_only=True)["callbacks"]
        stores = [v for k, v in saved.items() if k.startswith("PreviousLogits")]
        assert stores and len(stores[0]["ids"]) > 0 and len(stores[0]["keys"]) == len(stores[0]["ids"])
    train(part, resume=True)
    a = torch.load(full.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(part.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=0, atol=1e-6, msg=k)


def test_unknown_keys_suggest_the_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'train.optimzer'; did you mean 'train.optimizer'"):
        build_run_config(None, ["train.optimzer.lr=0.1"])
    with pytest.raises(ConfigError, match=r"train.max_steps"):
        build_run_config(None, ["train.max_steps=many"])


def test_print_config_writes_every_default():
    result = CliRunner().invoke(app, ["train", "--print-config", "--set", "train.max_steps=7"])
    assert result.exit_code == 0, result.output
    for key in ("max_steps: 7", "focal_alpha:", "accumulate_grad_batches:", "freeze:", "mix:"):
        assert key in result.output


def test_cli_train_and_resume(make_config, tmp_path):
    config = make_config("train.max_steps=2")
    path = tmp_path / "run.yaml"
    from samtune.config.loading import to_yaml

    path.write_text(to_yaml(config))
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    assert "val/iou: base" in result.output and "-> last (step 2)" in result.output
    result = runner.invoke(app, ["train", "--resume", str(config.run_dir), "--set", "train.max_steps=3"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "not a run folder" in result.output


def test_cached_run_encodes_each_image_once(make_config):
    """Frozen encoder, no augmentation: the images are encoded before training and never again."""
    config = make_config("train.max_steps=6", "train.val_every_n_steps=3")
    from samtune.models.sam import SamAdapter
    from samtune.train import cache as cache_module

    calls, encodes = [], []
    original, original_encode = cache_module._encode_into_cache, SamAdapter.encode

    def counting(adapter, cache, pending):
        calls.append(len(pending))
        return original(adapter, cache, pending)

    def encode(self, images):
        encodes.append(len(images))
        return original_encode(self, images)

    cache_module._encode_into_cache, SamAdapter.encode = counting, encode
    try:
        result = train(config)
    finally:
        cache_module._encode_into_cache, SamAdapter.encode = original, original_encode
    assert sum(calls) == 8  # 6 train + 2 val images, once each
    assert encodes == calls  # the training and validation steps never ran the encoder
    assert result.final_metrics
    calls.clear()
    cache_module._encode_into_cache = counting
    try:  # a later run with the same model and data reads everything from the cache
        train(make_config("train.max_steps=2", name="again"))
    finally:
        cache_module._encode_into_cache = original
    assert calls == []


def test_cache_is_kept_in_memory_when_it_fits(tmp_path):
    from samtune.models.adapter import Features
    from samtune.train.cache import EmbeddingCache
    from samtune.train.cache import keep_cache_in_memory

    cache = EmbeddingCache(tmp_path, "m", "p", dtype=torch.bfloat16)
    keep_cache_in_memory(cache, 3, torch.device("cpu"))
    assert cache.memory_items == 0  # nothing on disk yet: nothing to size
    for i in range(3):
        cache.put(f"img{i}", Features(torch.randn(1, 8, 4, 4), (torch.randn(1, 2, 8, 8),)))
    keep_cache_in_memory(cache, 3, torch.device("cpu"))
    assert cache.memory_items == 3 and cache.memory_device == torch.device("cpu")
    reader = EmbeddingCache(tmp_path, "m", "p", dtype=torch.bfloat16, memory_items=3)
    first = reader.get("img1")
    for entry in tmp_path.glob("*/*/*.safetensors"):
        entry.unlink()
    again = reader.get("img1")  # served from memory: the file is gone
    assert again is not None and torch.equal(again.image_embed, first.image_embed)


def test_random_crop_trains_on_windows_at_the_model_size(make_config, monkeypatch):
    """``data.random_crop: model`` hands the datamodule the model's input size."""
    from samtune.data import datamodule as dm
    from samtune.data.transforms import random_window

    sizes = []

    def spy(sample, size, rng):
        sizes.append(size)
        return random_window(sample, size, rng)

    monkeypatch.setattr(dm, "random_window", spy)
    config = make_config("train.max_steps=2", "train.val_every_n_steps=null",
                         "train.validate_before_training=false", "data.random_crop=model",
                         "data.val=null")
    train(config)
    assert sizes and set(sizes) == {256}  # sam_tiny's input size


def test_a_cache_folder_that_cannot_be_written(make_config, tmp_path, monkeypatch):
    blocker = tmp_path / "home_is_a_file"
    blocker.write_text("")
    monkeypatch.setenv("SAMTUNE_HOME", str(blocker / "samtune"))
    from samtune.config.loading import to_yaml

    path = tmp_path / "run.yaml"
    path.write_text(to_yaml(make_config("train.max_steps=1")))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "SAMTUNE_HOME" in lines[0], result.output
