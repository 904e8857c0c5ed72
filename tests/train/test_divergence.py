"""A diverging run stops at its first non-finite loss or gradient; NaN weights never load."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from samtune import load_model
from samtune.cli import app
from samtune.config.loading import to_yaml
from samtune.errors import CheckpointError, NonFiniteError
from samtune.train.run import train

#: AdamW moves every weight by about lr per step: 1e30 overflows the next forward pass.
DIVERGING = ["train.optimizer.lr=1e30", "train.max_steps=8", "train.val_every_n_steps=null",
             "train.validate_before_training=false", "train.checkpoint.every_n_steps=1"]


def test_a_diverging_run_stops_with_one_line_naming_the_step(make_config, tmp_path):
    config = make_config(*DIVERGING)
    path = tmp_path / "run.yaml"
    path.write_text(to_yaml(config))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 1, result.exception
    lines = result.output.strip().splitlines()
    error = [line for line in lines if line.startswith("error:")]
    assert len(error) == 1, lines[-3:]
    assert "step 2: the training" in error[0] and "diverged" in error[0]
    ckpt = config.run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 1  # the last finite weights
    floats = [v for v in state["state_dict"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in floats)


def test_skip_mode_skips_a_capped_number_of_batches(make_config):
    config = make_config(*DIVERGING, "train.on_nonfinite=skip", "train.max_skipped_batches=2")
    with pytest.warns(UserWarning, match=r"step \d+: the training .*batch skipped") as seen, \
            pytest.raises(NonFiniteError, match="max_skipped_batches"):
        train(config)
    assert sum("batch skipped" in str(w.message) for w in seen) == 2


def test_nan_weights_never_load(tmp_path):
    model = load_model("sam_tiny")
    sd = model.model.state_dict()
    sd["mask_decoder.iou_token.weight"][0, 0] = float("nan")
    path = tmp_path / "diverged.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="NaN or infinite weights.*mask_decoder.iou_token"):
        load_model("sam_tiny", checkpoint=path)
    from PIL import Image

    Image.fromarray(np.zeros((32, 40, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    result = CliRunner().invoke(app, ["predict", str(tmp_path), "--model", "sam_tiny",
                                      "--checkpoint", str(path), "--auto",
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and "NaN or infinite weights" in result.output
    assert not (tmp_path / "out").exists()


def test_json_outputs_never_hold_nan(tmp_path):
    from samtune.errors import SamtuneError
    from samtune.files import write_json

    with pytest.raises(SamtuneError, match="NaN or infinite"):
        write_json(tmp_path / "p.json", {"score": float("nan")})
    assert not (tmp_path / "p.json").exists()
