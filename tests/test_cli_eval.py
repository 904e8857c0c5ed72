"""``samtune eval``: a run folder end to end, and one-line errors with exit code 1."""

import json

import pytest
import torch
from typer.testing import CliRunner

from samtune.cli import app
from samtune.config import build_run_config
from samtune.config.loading import to_yaml
from samtune.data.synthetic import make_splits, write_folder, write_splits
from samtune.files import write_text

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """2 train and 2 val images (40x48) with 1-2 shapes, as a folder dataset."""
    root = tmp_path_factory.mktemp("eval_data")
    splits = make_splits({"train": 2, "val": 2}, seed=5, size=(40, 48), n_objects=(1, 2),
                         kinds=("ellipse", "rectangle"))
    return write_splits(write_folder, root, splits, masks="label_png16")


def make_run(root, dataset, with_weights=True):
    """A run folder without training: config.yaml, and an exported sam_tiny (another random
    init than the base's) as export/model.pth."""
    config = build_run_config(None, [f"data.train=[{{path: {dataset}}}]", f"output_dir={root}",
                                     "name=r", "model.name=sam_tiny"])
    write_text(config.run_dir / "config.yaml", to_yaml(config))
    if with_weights:
        from samtune.models import load_model

        torch.manual_seed(123)
        (config.run_dir / "export").mkdir()
        torch.save(load_model("sam_tiny").model.state_dict(), config.run_dir / "export" / "model.pth")
    return config.run_dir


def one_error_line(result, message):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in " ".join(result.output.split()), result.output


def test_eval_run_writes_the_report(tmp_path, dataset):
    run = make_run(tmp_path, dataset)
    result = runner.invoke(app, ["eval", "--model", str(run), "--modes", "box,none",
                                 "--max-images", "2"])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and "report.md" in result.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["modes"] == ["box", "none"]
    assert metrics["info"]["split"] == "val" and metrics["info"]["n_images"] == 2
    assert metrics["info"]["base"] == "sam_tiny (random init, seed 0)"
    assert (run / "eval" / "plots" / "iou.png").is_file()
    assert list((run / "eval" / "comparisons").glob("*.png"))


def test_checkpoint_file_with_explicit_base_and_data(tmp_path, dataset):
    run = make_run(tmp_path, dataset)
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--model", str(run / "export" / "model.pth"),
                                 "--data", str(dataset), "--base", "sam_tiny", "--modes", "box",
                                 "--max-images", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["info"]["split"] == "val"  # no test/ folder: val
    assert metrics["info"]["n_images"] == 1


@pytest.mark.parametrize("case, message", [
    ("missing_data", "no such file or folder"),
    ("unknown_model", "no such run folder or checkpoint file"),
    ("no_checkpoints", "no checkpoints yet"),
    ("file_without_output", "--output FOLDER is needed"),
    ("file_without_base", "pass --base sam_tiny"),
    ("file_without_data", "--data DATASET is needed"),
    ("bad_mode", "unknown prompt mode(s) boxes"),
    ("model_name", "sam_tiny is a model name"),
])
def test_errors_are_one_line(tmp_path, dataset, case, message):
    run = make_run(tmp_path, dataset, with_weights=case != "no_checkpoints")
    weights = str(run / "export" / "model.pth")
    out = ["--output", str(tmp_path / "out")]
    args = {
        "missing_data": ["--model", str(run), "--data", str(tmp_path / "nowhere")],
        "unknown_model": ["--model", str(tmp_path / "runs" / "nope")],
        "no_checkpoints": ["--model", str(run)],
        "file_without_output": ["--model", weights, "--data", str(dataset)],
        "file_without_base": ["--model", weights, "--data", str(dataset), *out],
        "file_without_data": ["--model", weights, "--base", "sam_tiny", *out],
        "bad_mode": ["--model", str(run), "--modes", "box,boxes"],
        "model_name": ["--model", "sam_tiny", "--data", str(dataset), *out],
    }[case]
    one_error_line(runner.invoke(app, ["eval", *args]), message)
    assert not (run / "eval").exists() and not (tmp_path / "out").exists()


def test_eval_in_bf16_says_so_in_the_report(tmp_path, dataset):
    run = make_run(tmp_path, dataset)
    metrics = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"eval_{precision}"
        result = runner.invoke(app, ["eval", "--model", str(run), "--modes", "box", "--max-images", "2",
                                     "--precision", precision, "--output", str(out)])
        assert result.exit_code == 0, result.output
        metrics[precision] = json.loads((out / "metrics.json").read_text())
        assert metrics[precision]["info"]["precision"] == precision
        assert f"cpu, {precision}" in (out / "report.md").read_text()
    for model in ("tuned", "base"):
        fp32, bf16 = (metrics[p]["models"][model]["box"]["mask"]["iou"] for p in ("fp32", "bf16"))
        assert abs(fp32 - bf16) < 0.05, (model, fp32, bf16)


def test_eval_by_tiles_records_the_tiling(tmp_path, dataset):
    run = make_run(tmp_path, dataset)
    result = runner.invoke(app, ["eval", "--model", str(run), "--modes", "box,none",
                                 "--tile-shape", "20,24", "--halo", "8,8"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["info"]["tiling"] == {"tile_shape": [20, 24], "halo": [8, 8]}
    assert metrics["models"]["tuned"]["box"]["n_masks"] >= 2
    bad = runner.invoke(app, ["eval", "--model", str(run), "--halo", "8,8"])
    one_error_line(bad, "halo needs a tile_shape")
