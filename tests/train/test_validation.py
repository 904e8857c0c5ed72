"""Validation measures the model: its own prompt defaults, the last and the best weights
each labelled, and the base model as the first candidate for best."""

import csv

import yaml
from typer.testing import CliRunner

from samtune.cli import app
from samtune.data.batch import Collator
from samtune.data.datamodule import SamDataModule
from samtune.data.mixing import open_dataset
from samtune import load_model
from samtune.train.run import train


def test_validation_prompts_every_object_without_the_ground_truth(make_config):
    """Training capped at one object with ground-truth mask prompts; validation still sees
    every object, prompted by an exact box or a centre point, never by the mask."""
    config = make_config("prompts.max_objects_per_image=1", "prompts.mix={mask: 1.0}")
    assert config.val_prompts.max_objects_per_image is None
    val = open_dataset(config.data, "val")
    data = SamDataModule(open_dataset(config.data, "train"), Collator.for_model(load_model("sam_tiny")),
                         val=val, prompts=config.prompts, val_prompts=config.val_prompts,
                         batch_size=2)
    batches = list(data.val_dataloader())
    assert sum(b.num_objects for b in batches) == sum(len(s) for s in val) > len(val)
    groups = [p for b in batches for _, p in b.prompt_groups]
    assert all(p.mask_inputs is None for p in groups)
    assert any(p.boxes is not None for p in groups) and any(p.points is not None for p in groups)
    train_batch = next(iter(data.train_dataloader()))
    assert train_batch.num_objects == len(train_batch)  # the training cap still holds
    assert all(p.mask_inputs is not None for _, p in train_batch.prompt_groups)


def test_final_metrics_hold_the_last_and_the_best_weights(make_config):
    config = make_config("train.max_steps=4", "train.val_every_n_steps=1")
    result = train(config)
    final = yaml.safe_load((config.run_dir / "final_metrics.yaml").read_text())
    assert final["last"]["step"] == 4 and final["last"]["val/iou"] == round(result.final_metrics["val/iou"], 6)
    best = final["best"]
    assert best["checkpoint"] == result.best_checkpoint.name
    assert best["step"] == result.best_step
    assert f"val_iou={best['val/iou']:.4f}" in best["checkpoint"]  # the score it was kept for
    base = yaml.safe_load((config.run_dir / "base_metrics.yaml").read_text())
    assert best["val/iou"] >= base["val/iou"]  # the base competed


def test_the_best_weights_are_measured_again_without_a_row_in_the_history(make_config):
    """No base candidate and a learning rate that makes every validation worse: the best is the
    first validation's checkpoint, measured again for final_metrics.yaml (the score it was kept
    for), and that measurement is no row of metrics.csv, whose rows are the run's own
    validations (each step's, then the last weights')."""
    config = make_config("train.max_steps=4", "train.val_every_n_steps=1",
                         "train.validate_before_training=false", "train.optimizer.lr=0.01")
    result = train(config)
    assert result.best_step == 1 and result.best_checkpoint.name.startswith("step=1-")
    final = yaml.safe_load((config.run_dir / "final_metrics.yaml").read_text())
    assert f"val_iou={final['best']['val/iou']:.4f}" in final["best"]["checkpoint"]
    with open(config.run_dir / "logs" / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("val/iou")]
    assert len(steps) == 4 + 1 and steps[-1] == 4  # no row for the best's measurement


def test_a_run_that_never_beats_the_base_keeps_pointing_to_it(make_config):
    """A learning rate too small to move a float32 weight: every validation equals the base's,
    none beats it, and best.ckpt is the base model's checkpoint."""
    config = make_config("train.max_steps=3", "train.val_every_n_steps=1",
                         "train.optimizer.lr=1e-30", "train.schedule.name=constant")
    result = train(config)
    assert result.best_step == 0 and result.best_checkpoint.name.startswith("step=0-")
    assert (config.run_dir / "checkpoints" / "best.ckpt").resolve() == result.best_checkpoint.resolve()
    final = yaml.safe_load((config.run_dir / "final_metrics.yaml").read_text())
    assert final["best"]["step"] == 0
    assert final["best"]["val/iou"] == round(result.base_metrics["val/iou"], 6)
    assert load_model("sam_tiny", checkpoint=result.best_checkpoint).model.state_dict()


def test_train_cli_labels_last_and_best(make_config, tmp_path):
    config = make_config("train.max_steps=2", "train.val_every_n_steps=1",
                         "train.optimizer.lr=1e-30", "train.schedule.name=constant")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    out = CliRunner().invoke(app, ["train", str(path)])
    assert out.exit_code == 0, out.output
    assert "no validation beat the base model" in out.output
    assert "-> last (step 2)" in out.output and "best (base)" in out.output
