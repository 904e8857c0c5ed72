"""Training settings do what they say: steps are optimizer steps, precision changes are said,
early stopping says why, the progress bar counts the run's steps."""

import csv
import warnings
from pathlib import Path

import pytest

from samtune.train import run as run_module
from samtune.notices import TrainWarning
from samtune.train.progress import StepProgressBar, step_description, total_steps
from samtune.train.run import build_trainer, train


def _val_steps(run_dir) -> list[int]:
    rows = list(csv.DictReader(open(run_dir / "logs" / "metrics.csv")))
    return sorted({int(r["step"]) for r in rows if r.get("val/iou")})


def test_val_every_n_steps_counts_optimizer_steps_under_accumulation(make_config):
    config = make_config("train.max_steps=4", "train.accumulate_grad_batches=2",
                         "train.val_every_n_steps=2", "train.validate_before_training=false")
    train(config)
    assert _val_steps(config.run_dir) == [2, 4]  # not after every 2 batches: steps 1, 2, 3, 4


def test_16_mixed_on_cpu_says_it_trains_in_bf16_once(make_config):
    config = make_config("train.precision=16-mixed", "train.accelerator=cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = build_trainer(config, has_val=True)
    said = [w for w in caught if issubclass(w.category, TrainWarning)]
    assert len(said) == 1 and "bf16-mixed" in str(said[0].message)
    assert not [w for w in caught if "16-mixed" in str(w.message) and w not in said]
    assert trainer.precision == "bf16-mixed"


def test_what_a_run_says_prints_as_one_warning_line(make_config, tmp_path):
    """`samtune train` prints the run's notices (here the precision change) as one
    `warning:` line, like samtune's other warnings: no file and line of Lightning's."""
    import subprocess
    import sys

    from samtune.config.loading import to_yaml

    path = tmp_path / "run.yaml"
    path.write_text(to_yaml(make_config("train.precision=16-mixed", "train.accelerator=cpu",
                                        "train.max_steps=1", "train.validate_before_training=false")))
    done = subprocess.run([sys.executable, "-m", "samtune", "train", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if "precision 16-mixed" in line]
    assert len(said) == 1 and said[0].startswith("warning: precision 16-mixed"), said


def test_early_stopping_says_that_it_stopped_and_why(make_config):
    config = make_config("train.max_steps=20", "train.val_every_n_steps=1",
                         "train.early_stopping={monitor: val/iou, patience: 1, min_delta: 1.0}")
    result = train(config)
    assert result.stopped_early is not None
    assert "at step 2" in result.stopped_early and "val/iou" in result.stopped_early


def test_the_progress_bar_counts_the_steps_of_the_run(make_config, monkeypatch):
    seen = {}

    class Recording(StepProgressBar):
        def on_train_end(self, trainer, pl_module):
            task = self.progress.tasks[self.train_progress_bar_id]
            seen.update(total=task.total, completed=task.completed, description=task.description)
            super().on_train_end(trainer, pl_module)

    monkeypatch.setattr(run_module, "StepProgressBar", Recording)
    config = make_config("train.max_steps=5", "train.progress_bar=true")  # 3 batches an epoch
    train(config)
    assert seen == {"total": 5, "completed": 5, "description": "step"}
    bounded = build_trainer(make_config("train.max_steps=-1", "train.max_epochs=3"), has_val=True)
    assert step_description(bounded) == "step (epoch 1/3)"
    assert total_steps(build_trainer(config, has_val=True)) == 5


@pytest.mark.parametrize("accelerator", ["cpu"])
def test_32_stays_32(make_config, accelerator):
    trainer = build_trainer(make_config(f"train.accelerator={accelerator}"), has_val=True)
    assert trainer.precision == "32-true"


def test_periodic_last_ckpt_is_written_once_per_optimizer_step_under_accumulation(make_config,
                                                                                monkeypatch):
    """accumulate_grad_batches=2, checkpoint.every_n_steps=2, 3 batches an epoch (the epoch's
    last batch steps alone): last.ckpt after steps 2 and 4, then at the end; never after a
    batch that only accumulated (at step 0, or at step 2 again in the next epoch), which would
    hold the step with that batch counted as done but its gradient lost."""
    from samtune.train.callbacks import RunCheckpointIO

    saved = []
    original = RunCheckpointIO.save_checkpoint

    def recording(self, checkpoint, path, storage_options=None):
        if Path(path).name == "last.ckpt":
            progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
            saved.append((checkpoint["global_step"], progress["processed"]))
        original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(RunCheckpointIO, "save_checkpoint", recording)
    config = make_config("train.max_steps=4", "train.accumulate_grad_batches=2",
                         "train.checkpoint.every_n_steps=2", "train.val_every_n_steps=100",
                         "train.validate_before_training=false")
    train(config)
    assert saved == [(2, 3), (4, 3), (4, 3)]  # the last one: train() at the end
