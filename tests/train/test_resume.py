"""Kill a run at chosen moments (SIGKILL), resume it, and end where an uninterrupted run ends:
the same weights, the same metrics.csv, the same files."""

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from samtune.cli import app
from samtune.config.loading import to_yaml
from samtune.errors import SamtuneWarning
from samtune.files import is_temporary
from samtune.train.run import train

#: 6 train images in batches of 2: 3 steps an epoch; validation at steps 3 and 6, a periodic
#: checkpoint every 2 steps, the base model validated first.
COMMON = ["train.max_steps=6", "train.val_every_n_steps=3", "train.checkpoint.every_n_steps=2",
          "train.log_every_n_steps=1", "model.freeze=[image_encoder]",
          "prompts.mix={box: 0.5, points: 0.5}"]
CHILD = Path(__file__).with_name("killed_run.py")


@pytest.fixture
def uninterrupted(make_config):
    config = make_config(*COMMON, name="full")
    train(config)
    return config.run_dir


def killed_run(make_config, tmp_path, moment: str, step: int) -> Path:
    config = make_config(*COMMON, name=f"killed_{moment}_{step}")
    path = tmp_path / f"{moment}_{step}.yaml"
    path.write_text(to_yaml(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                       str(Path(__file__).parents[2])]))
    done = subprocess.run([sys.executable, str(CHILD), str(path), moment, str(step)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, done.stderr[-3000:]
    return config.run_dir


def resume(run: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output


def assert_same_run(run: Path, reference: Path) -> None:
    a = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=0, atol=1e-6, msg=k)
    rows_a, rows_b = csv_rows(reference), csv_rows(run)
    assert [sorted(r) for r in rows_b] == [sorted(r) for r in rows_a]
    for ra, rb in zip(rows_a, rows_b):
        for key in ra:
            if key == "step":
                assert rb[key] == ra[key]
            else:
                assert float(rb[key]) == pytest.approx(float(ra[key]), abs=1e-5), key
    assert files(run) == files(reference)


def csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def files(run: Path) -> set[str]:
    """Every file of the run folder but TensorBoard's (a resume adds an event file to the
    same log folder: the curves continue), with no temporary leftovers."""
    found = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() or p.is_symlink()}
    assert not [f for f in found if is_temporary(Path(f))], found
    return {f for f in found if "tfevents" not in f}


def test_kill_during_a_checkpoint_write_resumes_to_the_same_run(make_config, tmp_path,
                                                                 uninterrupted):
    """Killed while last.ckpt is written after the validation at step 3: the old last.ckpt
    (step 2) stays whole, and the resume starts from the step-3 best checkpoint."""
    run = killed_run(make_config, tmp_path, "write", 3)
    ckpts = run / "checkpoints"
    assert any(is_temporary(p) for p in ckpts.iterdir())  # the write the kill interrupted
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 2  # never half
    resume(run)
    assert_same_run(run, uninterrupted)


def test_kill_between_a_checkpoint_and_its_log_row_keeps_the_history_whole(make_config, tmp_path,
                                                                           uninterrupted):
    """Killed after the step-4 checkpoints (periodic and last.ckpt) were saved but before that
    step's metrics.csv row: the resume starts from the step-3 checkpoint instead (the row of
    step 4 is logged again) and removes the two it does not trust."""
    run = killed_run(make_config, tmp_path, "logged", 4)
    ckpts = run / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 4
    # the row of the fourth step (logged as step 3) was still to come
    assert [r["step"] for r in csv_rows(run) if "train/loss" in r] == ["0", "1", "2"]
    with pytest.warns(SamtuneWarning, match="saved just before its step's row") as seen:
        resume(run)
    assert {Path(str(w.message).split(":")[0]).name for w in seen
            if "saved just before" in str(w.message)} == {"last.ckpt", "periodic-step=4.ckpt"}
    assert_same_run(run, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize(("moment", "step"), [("validation", 3), ("train", 2), ("train", 1)],
                         ids=["during-validation", "before-first-validation", "before-any-save"])
def test_kill_at_other_moments_resumes_to_the_same_run(make_config, tmp_path, uninterrupted,
                                                       moment, step):
    run = killed_run(make_config, tmp_path, moment, step)
    resume(run)
    assert_same_run(run, uninterrupted)


def test_a_longer_max_steps_on_resume_extends_the_schedule(make_config):
    """Resumed after its cosine schedule ended (lr 0), a run given more steps trains on the
    schedule over the new length, not at lr 0."""
    config = make_config("train.max_steps=3", "train.val_every_n_steps=null",
                         "train.validate_before_training=false", "train.log_every_n_steps=1")
    train(config)
    result = CliRunner().invoke(app, ["train", "--resume", str(config.run_dir),
                                      "--set", "train.max_steps=6"])
    assert result.exit_code == 0, result.output
    lrs = [float(r["lr-AdamW/mask_decoder"]) for r in csv_rows(config.run_dir)
           if "lr-AdamW/mask_decoder" in r]
    assert len(lrs) == 6  # the first run's three rows kept, three new ones
    for step in range(6):  # cosine over 3 steps, then over 6 from the restored step on
        total = 3 if step < 3 else 6
        assert lrs[step] == pytest.approx(0.001 * 0.5 * (1 + math.cos(math.pi * step / total)),
                                          rel=1e-6), step


def test_resume_writes_only_into_the_folder_it_names(make_config, tmp_path):
    config = make_config("train.max_steps=1", "train.validate_before_training=false")
    train(config)
    copy = tmp_path / "moved" / "copy"
    shutil.copytree(config.run_dir, copy)
    result = CliRunner().invoke(app, ["train", "--resume", str(copy), "--set", "train.max_steps=2"])
    assert result.exit_code == 1
    assert str(copy) in result.output and str(config.run_dir) in result.output
    result = CliRunner().invoke(app, ["train", "--resume", str(copy), "--set", "train.max_steps=2",
                                      "--set", f"output_dir={copy.parent}", "--set", "name=copy"])
    assert result.exit_code == 0, result.output
    assert torch.load(copy / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert torch.load(config.run_dir / "checkpoints" / "last.ckpt",
                      weights_only=True)["global_step"] == 1  # the original is untouched


def test_max_steps_zero_is_refused():
    from samtune.config import ConfigError, build_run_config

    with pytest.raises(ConfigError, match="max_steps is 0"):
        build_run_config(None, ["train.max_steps=0"])
