"""Checkpoints and exports carry checksums and are refused, with the file named, when their
bytes change; an export replaces its folder whole; predict never mixes two results."""

import json

import pytest
from typer.testing import CliRunner

from samtune import load_model
from samtune.cli import app
from samtune.errors import CheckpointError
from samtune.runs import verify_export
from samtune.train.export import export_run
from samtune.train.run import train


@pytest.fixture
def trained(make_config):
    config = make_config("train.max_steps=2", "train.validate_before_training=false")
    train(config)
    return config.run_dir


def flip(path, count=64, at=None):
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if at is None else at
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_flipped_bytes_is_refused(trained, tmp_path):
    last = trained / "checkpoints" / "last.ckpt"
    assert (trained / "checkpoints" / "last.sha256").is_file()
    flip(last)
    with pytest.raises(CheckpointError, match=r"last.ckpt: damaged or changed.*last.sha256"):
        load_model(last)
    result = CliRunner().invoke(app, ["export", str(trained), "--checkpoint", "last"])
    assert result.exit_code == 1 and "last.ckpt: damaged or changed" in result.output


def test_an_interrupted_re_export_leaves_the_old_export_whole(trained, monkeypatch):
    first = export_run(trained, checkpoint="last")
    before = {p.name: p.read_bytes() for p in first.output.iterdir()}
    import safetensors.torch

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed while writing trained.safetensors

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        export_run(trained, checkpoint="last")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in first.output.iterdir()} == before
    verify_export(first.output)
    assert not [p for p in trained.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_an_export_with_a_changed_file_is_refused(trained):
    result = export_run(trained, checkpoint="last")
    manifest = json.loads(result.manifest.read_text())
    assert set(manifest["sha256"]) == {"model.pth", "trained.safetensors"}
    flip(result.model)
    with pytest.raises(CheckpointError, match=r"model.pth: damaged or changed"):
        load_model(trained)


def test_an_export_never_replaces_a_folder_of_other_files(trained, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(Exception, match="not a samtune export"):
        export_run(trained, checkpoint="last", output=mine)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_predict_into_a_folder_with_an_earlier_result_replaces_it(tmp_path):
    import numpy as np
    from PIL import Image

    image = tmp_path / "cells.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    runner = CliRunner()
    boxes = ["--box", "5,5,40,30", "--box", "30,20,79,59", "--box", "1,1,20,20"]
    assert runner.invoke(app, ["predict", str(image), "--model", "sam_tiny", *boxes,
                               "--output", str(out)]).exit_code == 0
    (out / "my_notes.txt").write_text("not samtune's")
    result = runner.invoke(app, ["predict", str(image), "--model", "sam_tiny", "--box", "5,5,40,30",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "cells_mask_0.png", "cells_overlay.png", "my_notes.txt", "predictions.json"]
    data = json.loads((out / "predictions.json").read_text())
    assert len(data["annotations"]) == 1
    assert data["info"]["samtune_files"] == ["cells_mask_0.png", "cells_overlay.png"]
    (out / "predictions.json").write_text(json.dumps({"images": [], "annotations": []}))
    result = runner.invoke(app, ["predict", str(image), "--model", "sam_tiny", "--box", "5,5,40,30",
                                 "--output", str(out)])
    assert result.exit_code == 1 and "does not list its files" in result.output
