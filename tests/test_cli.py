import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from samtune.cli import app

runner = CliRunner()


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
    # a file that is not the published one is not shown as present
    assert "wrong sha256" in rows["mobile_sam"] and "n/a" in rows["mobile_sam_tiny"]


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
