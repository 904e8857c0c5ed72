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
        from samtune import load_model

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
    result = runner.invoke(app, ["eval", str(run), "--modes", "box,none",
                                 "--max-images", "2"])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and "report.md" in result.output
    metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert metrics["modes"] == ["box", "none"]
    assert metrics["info"]["split"] == "val" and metrics["info"]["n_images"] == 2
    assert metrics["info"]["base"] == "sam_tiny (random init, seed 0)"
    assert (run / "eval" / "val" / "plots" / "iou.png").is_file()
    assert list((run / "eval" / "val" / "comparisons").glob("*.png"))


def test_checkpoint_file_with_explicit_base_and_data(tmp_path, dataset):
    run = make_run(tmp_path, dataset)
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", str(run / "export" / "model.pth"),
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
    ("no_run", "samtune eval RUN"),
])
def test_errors_are_one_line(tmp_path, dataset, case, message):
    run = make_run(tmp_path, dataset, with_weights=case != "no_checkpoints")
    weights = str(run / "export" / "model.pth")
    out = ["--output", str(tmp_path / "out")]
    args = {
        "missing_data": ["--model", str(run), "--data", str(tmp_path / "nowhere")],
        "unknown_model": ["--model", str(tmp_path / "runs" / "nope")],
        "no_checkpoints": [str(run)],
        "file_without_output": ["--model", weights, "--data", str(dataset)],
        "file_without_base": ["--model", weights, "--data", str(dataset), *out],
        "file_without_data": ["--model", weights, "--base", "sam_tiny", *out],
        "bad_mode": [str(run), "--modes", "box,boxes"],
        "model_name": ["sam_tiny", "--data", str(dataset), *out],
        "no_run": ["--data", str(dataset)],
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
    metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert metrics["info"]["tiling"] == {"tile_shape": [20, 24], "halo": [8, 8]}
    assert metrics["models"]["tuned"]["box"]["n_masks"] >= 2
    bad = runner.invoke(app, ["eval", "--model", str(run), "--halo", "8,8"])
    one_error_line(bad, "halo needs a tile_shape")


def test_each_dataset_gets_its_own_report_folder(tmp_path, dataset):
    """RUN/eval/<data name>/: a second dataset neither overwrites the first report nor leaves
    its comparison panels beside the new ones."""
    run = make_run(tmp_path, dataset)
    other = write_folder(tmp_path / "scans", make_splits({"val": 2}, seed=9, size=(40, 48))["val"])
    for data in (dataset, other):
        result = runner.invoke(app, ["eval", "--model", str(run), "--data", str(data),
                                     "--modes", "box", "--max-images", "2"])
        assert result.exit_code == 0, result.output
    first, second = run / "eval" / dataset.name, run / "eval" / "scans"
    assert json.loads((first / "metrics.json").read_text())["info"]["data"] == str(dataset)
    assert json.loads((second / "metrics.json").read_text())["info"]["data"] == str(other)
    stale = second / "comparisons" / "best_from_an_older_report.png"
    stale.write_bytes(b"")
    result = runner.invoke(app, ["eval", "--model", str(run), "--data", str(other),
                                 "--modes", "box", "--max-images", "1"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and list((second / "comparisons").glob("*.png"))


def test_eval_objects_reads_masks_as_training_does(tmp_path):
    """A binary mask holding two separate shapes: one object by default (whole), two with
    --objects components."""
    import numpy as np

    from samtune.data.synthetic import Scene

    label_map = np.zeros((40, 48), dtype=np.int32)
    label_map[4:14, 4:14], label_map[24:36, 30:44] = 1, 2
    scene = Scene(np.full((40, 48, 3), 90, dtype=np.uint8), label_map, [1, 2], "two")
    data = write_folder(tmp_path / "binary", [scene], masks="binary")
    run = make_run(tmp_path, data)
    counts = {}
    for objects in (None, "components"):
        out = tmp_path / f"eval_{objects}"
        extra = [] if objects is None else ["--objects", objects]
        result = runner.invoke(app, ["eval", "--model", str(run), "--data", str(data), "--split", "all",
                                     "--modes", "box", "--output", str(out), *extra])
        assert result.exit_code == 0, result.output
        counts[objects] = json.loads((out / "metrics.json").read_text())["info"]["n_objects"]
    assert counts == {None: 1, "components": 2}


def test_the_report_says_when_a_mode_produced_no_masks(tmp_path, dataset):
    run = make_run(tmp_path, dataset)
    out = tmp_path / "auto"
    result = runner.invoke(app, ["eval", "--model", str(run), "--modes", "auto", "--max-images", "1",
                                 "--points-per-side", "2", "--pred-iou-thresh", "1.5",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["tuned"]["auto"]["n_generated"] == 0
    assert len(metrics["notes"]) == 2 and "produced no masks for the tuned model" in metrics["notes"][1]
    assert "produced no masks" in (out / "report.md").read_text()
    assert "produced no masks" in " ".join(result.output.split())
