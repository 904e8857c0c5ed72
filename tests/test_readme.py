"""Every Python snippet and shell command of the README runs, with tiny models and generated
files in place of the full-size models and the user's files the README names.

Snippets and commands are read from README.md itself, so a section added later is run too,
and one that breaks fails here. The substitutions are the small tables below; a command they
do not cover fails with a message saying where to add it.
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from samtune.cli import app
from samtune.config import build_run_config
from samtune.data.synthetic import make_splits, write_folder, write_image, write_splits

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

#: full-size names and the user's files in the README -> what this test has ({...}: fixtures)
SUBSTITUTIONS = [
    ('"sam_vit_b", checkpoint="sam_vit_b_01ec64.pth"', '"sam_tiny", checkpoint="{weights}"'),
    ('"sam_vit_b", checkpoint="auto", delta=', '"sam_tiny", delta='),
    ("--model sam_vit_b --checkpoint auto", "--model sam_tiny"),
    ("--model sam2.1_hiera_t --checkpoint sam2.1_hiera_tiny.pt", "--model sam2_tiny"),
    ("--model litemedsam --checkpoint auto", "--model sam_tiny"),
    ("--base sam_vit_b", "--base sam_tiny"),
    ('"sam_vit_b", checkpoint="sam-vit-base/"', '"sam_tiny", checkpoint="{run}/export/hf"'),
    ('"medsam-vit-base/"', '"{run}/export/hf"'),
    ('httpx.Client(base_url="http://127.0.0.1:8000")', "serve_client()"),
    ("photo.jpg", "{image}"),
    ("cells.png", "{image}"),
    ("slide.png", "{image}"),
    ("images/", "{images}"),
    ("data/cells_test/", "{dataset}/val"),
    ("data/slides/", "{dataset}/val"),
    ("demo_output/runs/demo", "{run}"),
    ("runs/cells", "{run}"),
    ("runs/a", "{run}"),
    ("runs/b", "{run}"),
    ("--output out/", "--output {out}"),
    ("--output out", "--output {out}"),
    ("point_coords=..., point_labels=..., box=...",
     "point_coords=np.array([[30, 20]]), point_labels=np.array([1]), box=np.array([5, 5, 60, 40])"),
]

#: commands that do not run as written, and what runs instead
COMMANDS = {
    # the main job: its own test below (LiteMedSAM's real weights take minutes on a CPU)
    "make demo": None,
    # this suite itself
    "make test": None,
}

#: benchmark scripts: their arguments are checked against the script's parser (a run takes
#: minutes to hours; the scripts have their own tests)
BENCH = re.compile(r"^(?:OMP_NUM_THREADS=\d+ )?\.venv/bin/python (bench/\w+\.py)(.*)$")


def blocks(language: str) -> list[str]:
    """The text of every fenced block whose info string is ``language`` ("" for none)."""
    out, current, info = [], None, ""
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == language:
                    out.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return out


def shell_commands() -> list[str]:
    """Each command of the README's bash blocks and of its plain blocks that hold bench
    commands (continuation lines joined, comments dropped)."""
    texts = blocks("bash") + [b for b in blocks("") if BENCH.match(b.strip().split("\n")[0])]
    out = []
    for text in texts:
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


def substitute(text: str, files: dict[str, str]) -> str:
    for old, new in SUBSTITUTIONS:
        text = text.replace(old, new)
    for name, value in files.items():
        text = text.replace("{" + name + "}", value)
    return text


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A generated dataset, images, a weights file, and a tiny fine-tuned run with its
    exports (official, transformers, ONNX)."""
    from samtune import load_model
    from samtune.train.export import export_run
    from samtune.train.export_formats import export_run_format
    from samtune.train.run import train

    root = tmp_path_factory.mktemp("readme")
    splits = make_splits({"train": 4, "val": 2}, seed=0, size=(48, 64), n_objects=(1, 2),
                         kinds=("ellipse", "rectangle"))
    dataset = write_splits(write_folder, root / "data", splits, masks="label_png16")
    images = root / "images"
    for i, scene in enumerate(splits["val"]):
        write_image(images / f"img{i}.png", scene.image)
    photo = root / "photo.png"  # the README's prompts are for an image of about 480x640
    write_image(photo, np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    weights = root / "sam_tiny.pth"
    torch.save(load_model("sam_tiny").model.state_dict(), weights)
    config = build_run_config(None, [
        f"data.train=[{{path: {dataset}}}]", f"output_dir={root / 'runs'}", "name=cells",
        "model.name=sam_tiny", "train.max_steps=2", "train.batch_size=2",
        "train.val_every_n_steps=2", "train.progress_bar=false", "prompts.mix={box: 1.0}"])
    train(config)
    export_run(config.run_dir)
    for format in ("hf", "onnx"):
        export_run_format(config.run_dir, format)
    return {"dataset": str(dataset), "images": str(images), "image": str(photo),
            "weights": str(weights), "run": str(config.run_dir), "out": str(root / "out")}


def test_the_readme_has_what_this_test_reads():
    """The sections this test runs are still there (a rename would make it vacuous)."""
    assert len(blocks("python")) >= 1
    commands = shell_commands()
    assert any(c.startswith("samtune predict") for c in commands)
    assert "make demo" in commands
    assert any(BENCH.match(c) for c in commands)


def test_python_snippets_run(files):
    """The README's Python blocks in order, in one namespace (as a reader pastes them), with
    ``image_rgb_uint8`` and ``boxes_n_by_4`` defined as the text says, and the web page's
    API served in-process (FastAPI's ``TestClient``) where the README talks to ``samtune
    serve`` on port 8000."""
    from fastapi.testclient import TestClient

    from samtune.serve import build_state, create_app

    def serve_client():
        state = build_state([files["run"]], save_to=Path(files["out"]) / "corrections")
        return TestClient(create_app(state))

    rng = np.random.default_rng(0)
    namespace = {"np": np, "image_rgb_uint8": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                 "boxes_n_by_4": np.array([[5, 5, 40, 30], [10, 12, 60, 44]]),
                 "serve_client": serve_client}
    snippets = blocks("python")
    for i, snippet in enumerate(snippets):
        code = substitute(snippet, files)
        try:
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - name the block, then fail
            pytest.fail(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{code}")
    predictor = namespace.get("predictor")
    assert predictor is not None and predictor.is_image_set
    assert namespace["records"] is not None and namespace["tuned"] is not None


def test_shell_commands_run(files, monkeypatch, capsys):
    """Every command runs; ``samtune serve`` loads its models and data, then returns instead
    of serving."""
    import samtune.serve

    served = []
    monkeypatch.setattr(samtune.serve, "serve", lambda state, host, port: served.append(state))
    runner = CliRunner()
    ran = 0
    for command in shell_commands():
        command = COMMANDS.get(command, command)
        if command is None:
            continue
        command = substitute(command, files)
        bench = BENCH.match(command)
        if bench:
            check_bench_arguments(ROOT / bench.group(1), shlex.split(bench.group(2)), monkeypatch)
        elif command.startswith("samtune "):
            result = runner.invoke(app, shlex.split(command)[1:])
            assert result.exit_code == 0, f"README command failed: {command}\n{result.output}"
        else:
            pytest.fail(f"README command {command!r} is not covered: add what it should run to "
                        "COMMANDS in tests/test_readme.py")
        ran += 1
    assert ran >= 6
    assert served and all(slot.ready for state in served for slot in state.slots)


@pytest.mark.slow
def test_make_demo_runs(tmp_path):
    """``make demo`` at 2 steps (the README's figures come from 80)."""
    result = CliRunner().invoke(app, ["demo", "--output", str(tmp_path / "demo"), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "runs" / "demo" / "eval" / "report.md").is_file()


class _Parsed(Exception):
    """Raised by the patched parser once a bench script's arguments parsed."""


def check_bench_arguments(script: Path, args: list[str], monkeypatch) -> None:
    """The arguments parse with the script's own parser (unknown options and bad values
    fail); the benchmark itself does not run."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        original(self, argv, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    monkeypatch.syspath_prepend(str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except _Parsed:
        pass
    except SystemExit as e:
        pytest.fail(f"README bench command {script.name} {' '.join(args)}: arguments refused ({e})")
    else:
        pytest.fail(f"{script.name} finished without parsing arguments")
    finally:
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
