import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from samtune.cli import app

runner = CliRunner()


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "cells.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("models", "predict"):
        assert command in result.output


def test_models_lists_names_and_presence(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMTUNE_HOME", str(tmp_path))
    (tmp_path / "mobile_sam.pt").write_bytes(b"x")
    result = runner.invoke(app, ["models", "--family", "mobile_sam"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert set(rows) == {"mobile_sam", "mobile_sam_tiny"}
    assert "yes" in rows["mobile_sam"] and "n/a" in rows["mobile_sam_tiny"]


def test_predict_writes_masks_overlay_and_json(image_file, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(image_file), "--model", "sam_tiny",
                                 "--box", "5,5,40,30", "--box", "30,20,79,59", "--output", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cells_mask_0.png", "cells_mask_1.png", "cells_masks.json", "cells_overlay.png"]
    mask = np.asarray(Image.open(out / "cells_mask_0.png"))
    assert mask.shape == (60, 80) and set(np.unique(mask)) <= {0, 255}
    summary = json.loads((out / "cells_masks.json").read_text())
    assert [o["box"] for o in summary["objects"]] == [[5, 5, 40, 30], [30, 20, 79, 59]]
    assert np.asarray(Image.open(out / "cells_overlay.png")).shape == (60, 80, 3)


def test_predict_points_and_multimask(image_file, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(image_file), "--model", "sam2_tiny", "--point", "20,20",
                                 "--point", "50,40,0", "--multimask", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {f"cells_mask_0_{k}.png" for k in range(3)}
    summary = json.loads((out / "cells_masks.json").read_text())
    assert summary["objects"][0]["point_labels"] == [1, 0]
    assert len(summary["objects"][0]["scores"]) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "sam_tiny", "--box", "5,5,200,30"], "--box 5,5,200,30 is outside cells.png (80x60)"),
        (["--model", "sam_tiny", "--box", "5,5,3"], "expected 4 comma-separated numbers"),
        (["--model", "sam_tiny", "--box", "40,5,3,30"], "x1 > x0"),
        (["--model", "sam_tiny", "--point", "10,10,7"], "the label must be 1"),
        (["--model", "sam_tiny"], "give at least one prompt"),
        (["--model", "sam_vitb", "--box", "1,1,5,5"], "unknown model 'sam_vitb'. Did you mean"),
        (["--model", "sam_tiny", "--box", "1,1,5,5", "--checkpoint", "nope.pth"], "nope.pth: no such checkpoint file"),
    ],
)
def test_bad_arguments_give_one_clear_line(image_file, args, message):
    result = runner.invoke(app, ["predict", str(image_file), *args])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in " ".join(result.output.split())


def test_missing_image(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "none.png"), "--model", "sam_tiny", "--box", "1,1,5,5"])
    assert result.exit_code == 1 and "none.png: no such image file" in result.output


def test_data_check_exit_codes(tmp_path):
    from samtune.data.synthetic import make_scenes, write_folder

    good = write_folder(tmp_path / "good", make_scenes(3, size=(32, 40)), masks="label_png16")
    result = runner.invoke(app, ["data", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert "3 images" in result.output
    bad = write_folder(tmp_path / "bad", make_scenes(3, size=(32, 40)), masks="label_png16")
    mask = next((bad / "masks").iterdir())
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(mask)
    result = runner.invoke(app, ["data", "check", str(bad)])
    assert result.exit_code == 1
    assert f"masks/{mask.name}" in result.output


def test_demo_is_a_command():
    result = runner.invoke(app, ["demo", "--help"])
    assert result.exit_code == 0 and "--steps" in result.output
