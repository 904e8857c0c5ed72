"""DDP on CPU: two gloo processes with batch B follow one process with batch 2B, for every
freezing choice, started from the command line as a user would (Lightning re-runs it per
process)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from samtune.config import build_run_config
from samtune.data.synthetic import make_splits, write_folder, write_splits
from samtune.train.module import FineTuneModule
from samtune.train.run import train

FREEZING = {
    "decoder": [],
    "lora": ["model.lora={rank: 2, targets: [image_encoder]}"],
    # the default mix of boxes and points: a step may draw only one of them
    "full": ["model.freeze=[]", "prompts.mix={box: 0.5, points: 0.5}"],
}


@pytest.fixture(scope="module")
def two_object_data(tmp_path_factory):
    """4 train and 1 val images with exactly 2 objects each, so the mean loss over one
    process's objects equals the mean over each half of them."""
    root = tmp_path_factory.mktemp("ddp_data")
    splits = make_splits({"train": 4, "val": 1}, seed=0, size=(48, 64), n_objects=(2, 2),
                         kinds=("ellipse", "rectangle"))
    assert all(len(s.category_ids) == 2 for part in splits.values() for s in part)
    return write_splits(write_folder, root, splits, masks="label_png16")


def _overrides(data: Path, out: Path, name: str, batch: int, freezing: str) -> list[str]:
    return [f"data.train=[{{path: {data}}}]", f"output_dir={out}", f"name={name}",
            "model.name=sam_tiny", "train.max_steps=3", f"train.batch_size={batch}",
            "train.val_every_n_steps=null", "train.log_every_n_steps=1",
            "train.progress_bar=false", "train.optimizer.name=sgd", "train.optimizer.lr=0.01",
            "train.accelerator=cpu",
            "prompts.mix={box: 1.0}", *FREEZING[freezing]]


def _losses(run: Path) -> list[float]:
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.parametrize("freezing", list(FREEZING))
def test_two_processes_follow_one_process_with_the_doubled_batch(freezing, two_object_data, tmp_path):
    out = tmp_path / "runs"
    one = build_run_config(None, _overrides(two_object_data, out, "one", 4, freezing))
    train(one)
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({"train": {"strategy": "ddp", "devices": 2}}))
    sets = [a for o in _overrides(two_object_data, out, "two", 2, freezing) for a in ("--set", o)]
    done = subprocess.run([sys.executable, "-m", "samtune", "train", str(config), *sets],
                          capture_output=True, text=True, timeout=240, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1, done.stdout  # printed by rank 0 only
    assert "not used in producing the loss" not in done.stderr
    two = out / "two"
    assert len(_losses(two)) == len(_losses(one.run_dir)) == 3
    torch.testing.assert_close(torch.tensor(_losses(two)), torch.tensor(_losses(one.run_dir)),
                               rtol=1e-4, atol=1e-5)
    a = load_file(str(one.run_dir / "checkpoints" / "last.safetensors"))
    b = load_file(str(two / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    base = yaml.safe_load((two / "base_metrics.yaml").read_text())
    assert base == yaml.safe_load((one.run_dir / "base_metrics.yaml").read_text())


def _nonfinite_run(data: Path, tmp_path: Path, name: str, batch: int, rank: int,
                   *extra: str) -> subprocess.CompletedProcess:
    """A run whose loss is NaN at step 1 in the process of ``rank`` (ddp_nonfinite_run.py)."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(build_run_config(None, [
        *_overrides(data, tmp_path / "runs", name, batch, "decoder"), *extra,
    ]).model_dump(mode="json")))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(Path(__file__).with_name("ddp_nonfinite_run.py")),
                           str(config), "1", str(rank)], capture_output=True, text=True,
                          timeout=240, env=env)


@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_a_loss_not_finite_in_one_process_skips_or_stops_every_process(two_object_data, tmp_path,
                                                                       mode):
    """A NaN loss in rank 1 alone: every process skips that batch (as one process with the
    doubled batch does: the same losses and weights after), or every process stops with the
    one-line error. (A process that skipped alone was refused by Lightning; one that stopped
    alone left the other to fail in the gradient all-reduce.)"""
    ddp = ["train.strategy=ddp", "train.devices=2", f"train.on_nonfinite={mode}"]
    two = _nonfinite_run(two_object_data, tmp_path, "two", 2, 1, *ddp)
    if mode == "stop":
        assert two.returncode == 1, two.stderr[-3000:]
        assert "Connection closed" not in two.stderr and "Traceback" not in two.stderr
        assert "error: step 2: the training loss is" in two.stdout + two.stderr
        return
    assert two.returncode == 0, two.stderr[-3000:]
    assert "step 2: the training loss is not finite in another process; batch skipped" in two.stderr
    one = _nonfinite_run(two_object_data, tmp_path, "one", 4, 0, f"train.on_nonfinite={mode}")
    assert one.returncode == 0, one.stderr[-3000:]
    runs = tmp_path / "runs"
    assert len(_losses(runs / "two")) == len(_losses(runs / "one")) == 2  # none for the skip
    torch.testing.assert_close(torch.tensor(_losses(runs / "two")),
                               torch.tensor(_losses(runs / "one")), rtol=1e-4, atol=1e-5)
    a = load_file(str(runs / "one" / "checkpoints" / "last.safetensors"))
    b = load_file(str(runs / "two" / "checkpoints" / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("model, unreached", [
    ("mobile_sam_tiny", "image_encoder.norm_head.weight"),
    ("sam2_tiny", "sam_mask_decoder.pred_obj_score_head.layers.0.weight"),
])
def test_heads_no_forward_pass_reaches_never_train(model, unreached):
    """TinyViT's classifier and SAM 2's object-score head get no gradient from any step, so a
    full fine-tune leaves them out instead of stalling DDP."""
    module = FineTuneModule(build_run_config(None, [f"model.name={model}", "model.freeze=[]"]))
    assert unreached in module.adapter.parameter_groups()["other"]
    assert not dict(module.adapter.model.named_parameters())[unreached].requires_grad


def test_prompt_embeddings_follow_the_prompt_kinds_a_run_draws():
    """Boxes only: the point and mask-input tensors can never train and stay frozen, and the box
    corners miss a step of negatives only (no prompt); boxes and points: the point and box
    embeddings each miss some steps (DDP must look for them)."""
    boxes = FineTuneModule(build_run_config(None, ["model.freeze=[]", "prompts.mix={box: 1.0}"]))
    params = dict(boxes.adapter.model.named_parameters())
    assert not params["prompt_encoder.mask_downscaling.0.weight"].requires_grad
    assert not params["prompt_encoder.point_embeddings.1.weight"].requires_grad
    assert params["prompt_encoder.point_embeddings.2.weight"].requires_grad
    assert params["prompt_encoder.no_mask_embed.weight"].requires_grad
    assert set(boxes.step_varying_parameters) == {
        "prompt_encoder.point_embeddings.2.weight", "prompt_encoder.point_embeddings.3.weight"}
    decoder = FineTuneModule(build_run_config(None, ["prompts.mix={box: 1.0}"]))
    assert decoder.step_varying_parameters == ()  # a frozen prompt encoder: plain DDP
    mixed = FineTuneModule(build_run_config(None, ["model.freeze=[]"]))
    assert set(mixed.step_varying_parameters) == {
        "prompt_encoder.point_embeddings.0.weight", "prompt_encoder.point_embeddings.1.weight",
        "prompt_encoder.point_embeddings.2.weight", "prompt_encoder.point_embeddings.3.weight",
        "prompt_encoder.not_a_point_embed.weight"}
    rounds = FineTuneModule(build_run_config(None, ["model.freeze=[]", "prompts.mix={box: 1.0}",
                                                    "train.correction_rounds=1"]))
    assert dict(rounds.adapter.model.named_parameters())[
        "prompt_encoder.mask_downscaling.0.weight"].requires_grad
