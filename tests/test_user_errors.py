"""Every user mistake is one ``error:`` line, exit status 1, nothing written, and found before
a model loads."""

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import samtune.runs
from samtune.cli import app
from samtune.errors import CheckpointError

runner = CliRunner()


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "imgs" / "cells.png"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the command gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(samtune.runs, "load_model", refuse)


def one_error_line(result, *expected: str) -> str:
    assert result.exit_code == 1, (result.output, result.exception)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("objects", "expected"), [
    ([{"box": [5, 5, 40, 30]}, {"box": [float("nan"), 5, 40, 30]}], "NaN or infinite"),
    ([{"box": ["5", 5, 40, 30]}], "must hold numbers"),
    ([{"points": [["a", 2]]}], "must hold numbers"),
], ids=["nan-box", "string-coordinate", "string-point"])
def test_bad_prompt_values(image_file, tmp_path, no_model, objects, expected):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"cells.png": objects}))  # json writes NaN as NaN
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(image_file.parent), "--model", "sam_tiny",
                                 "--prompts", str(prompts), "--output", str(out)])
    one_error_line(result, expected, "prompts.json")
    assert not out.exists()


def test_unwritable_output_folder_is_refused_before_the_model_loads(image_file, tmp_path, no_model):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["predict", str(image_file), "--model", "sam_tiny",
                                 "--box", "5,5,40,30", "--output", str(blocker / "out")])
    one_error_line(result, "a_file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_a_missing_cuda_device_is_one_line(image_file, tmp_path, no_model):
    result = runner.invoke(app, ["predict", str(image_file), "--model", "sam_tiny",
                                 "--box", "5,5,40,30", "--device", "cuda",
                                 "--output", str(tmp_path / "out")])
    one_error_line(result, "--device cuda", "no CUDA device")
    result = runner.invoke(app, ["predict", str(image_file), "--model", "sam_tiny", "--box",
                                 "5,5,40,30", "--device", "gpu7", "--output", str(tmp_path / "o")])
    one_error_line(result, "not a device name")


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (the pixels are never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_an_image_above_the_size_limit_is_one_line(tmp_path, no_model):
    huge = png_header_only(tmp_path / "huge.png", 20000, 20000)
    result = runner.invoke(app, ["predict", str(huge), "--model", "sam_tiny", "--box", "5,5,40,30",
                                 "--output", str(tmp_path / "out")])
    one_error_line(result, "huge.png", "20000x20000", "SAMTUNE_MAX_IMAGE_PIXELS")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("content", "expected"), [
    (b"hello", "not a PyTorch checkpoint"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a PyTorch checkpoint"),
    (b"", "the file is empty"),
], ids=["text-file", "random-bytes", "zero-bytes"])
def test_a_checkpoint_that_is_not_one(image_file, tmp_path, content, expected):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(content)
    result = runner.invoke(app, ["predict", str(image_file), "--model", "sam_tiny", "--checkpoint",
                                 str(bad), "--box", "5,5,40,30", "--output", str(tmp_path / "out")])
    line = one_error_line(result, "weights.pth", expected)
    unsafe_advice = "weights_only" + "=False"  # the error must never suggest unpickling
    assert unsafe_advice not in line


class Payload:
    def __reduce__(self):
        return (os.system, ("echo PAYLOAD_RAN_42",))


def test_a_hostile_checkpoint_is_never_unpickled(image_file, tmp_path):
    bad = tmp_path / "last.ckpt"
    torch.save({"state_dict": Payload()}, bad)
    result = runner.invoke(app, ["predict", str(image_file), "--model", str(bad),
                                 "--box", "5,5,40,30", "--output", str(tmp_path / "out")])
    one_error_line(result, "last.ckpt", "never unpickles")
    assert "PAYLOAD_RAN_42" not in result.output


@pytest.mark.parametrize("name", ["mobile_sam_tiny", "litemedsam"])
def test_tiny_vit_families_print_no_timm_warnings(name):
    code = (f"from samtune import load_model; from samtune.models.fast import "
            f"enable_fused_attention; enable_fused_attention(load_model({name!r}))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "timm" not in done.stderr and "Overwriting" not in done.stderr, done.stderr


def test_a_cached_official_file_is_checked_once_against_its_published_sha256(monkeypatch):
    import dataclasses

    from samtune.models import checkpoints
    from samtune.models.registry import get_spec

    spec = get_spec("sam_vit_b")
    fake = checkpoints.samtune_home() / spec.filename
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_bytes(b"random weights, not Meta's file")
    with pytest.raises(CheckpointError, match="not the official sam_vit_b_01ec64.pth"):
        samtune.load_model("sam_vit_b", checkpoint="auto")
    assert checkpoints.published_status(spec) == "wrong sha256"
    result = runner.invoke(app, ["models", "--family", "sam"])
    assert "wrong sha256" in result.output
    good = dataclasses.replace(spec, sha256=checkpoints.sha256_of(fake))
    hashed = []
    original = checkpoints.sha256_of
    monkeypatch.setattr(checkpoints, "sha256_of", lambda p: hashed.append(p) or original(p))
    for _ in range(3):
        checkpoints.check_published(good, fake)
    assert len(hashed) == 1  # remembered by size and mtime
    os.utime(fake, ns=(1, 1))
    checkpoints.check_published(good, fake)
    assert len(hashed) == 2  # a changed file is hashed again


def test_dataset_paths_stay_inside_the_dataset_folder(tmp_path):
    from samtune.config.data import SourceConfig
    from samtune.data.coco import CocoSource

    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(outside)
    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "images" / "ok.png")
    (root / "images" / "link.png").symlink_to(outside)
    images = [{"id": 1, "file_name": "../secret.png"}, {"id": 2, "file_name": str(outside)},
              {"id": 3, "file_name": "link.png"}, {"id": 4, "file_name": "ok.png"}]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": [],
                                                       "categories": [{"id": 1, "name": "a"}]}))
    source = CocoSource(root, root / "annotations.json", SourceConfig(path=root), "d")
    assert [p.name for p in source.image_paths] == ["ok.png"]
    errors = [p for p in source.problems if "outside the dataset folder" in p.message]
    assert len(errors) == 3 and all("allow_outside_paths" in p.message for p in errors)
    allowed = CocoSource(root, root / "annotations.json",
                         SourceConfig(path=root, allow_outside_paths=True), "d")
    assert len(allowed.image_paths) == 4
