"""`samtune serve` on the command line: what it loads and prints, and one-line errors."""

import pytest
from typer.testing import CliRunner

import samtune.serve
from samtune.cli import app
from samtune.serve import check_host

runner = CliRunner()


@pytest.fixture
def started(monkeypatch):
    """Record the serve() call instead of blocking on uvicorn."""
    calls = []
    monkeypatch.setattr(samtune.serve, "serve", lambda state, host, port: calls.append(
        (state, host, port)))
    return calls


def test_serve_loads_the_run_and_its_base(serve_run, tmp_path, started):
    result = runner.invoke(app, ["serve", "--model", str(serve_run), "--port", "8123",
                                 "--save-to", str(tmp_path / "fixes")])
    assert result.exit_code == 0, result.output
    (state, host, port), = started
    assert (host, port) == ("127.0.0.1", 8123)
    assert [s.id for s in state.slots] == ["base", "tuned"] and all(s.ready for s in state.slots)
    assert "base: sam_tiny (random init, seed 0) (id base): ready" in result.output
    assert "images: 2 from validation data of the run" in result.output
    assert "open http://127.0.0.1:8123/" in result.output


def test_a_model_that_fails_is_printed_and_the_server_still_starts(serve_data, tmp_path, started):
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "nothing"), "--base",
                                 "sam_tiny", "--data", str(serve_data)])
    assert result.exit_code == 0, result.output
    assert f"fine-tuned: {tmp_path / 'nothing'} (id tuned): failed to load" in " ".join(
        result.output.split())
    assert len(started) == 1


@pytest.mark.parametrize("args, message", [
    (["--base", "sam_tiny", "--host", "0.0.0.0"], "--host 0.0.0.0 would open the page"),
    ([], "give --model RUN_OR_NAME"),
    (["--base", "sam_tiny", "--data", "/no/such/data"], "/no/such/data: no such file or folder"),
])
def test_errors_are_one_line(args, message, started):
    result = runner.invoke(app, ["serve", *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in " ".join(result.output.split())
    assert not started


def test_another_host_needs_the_flag_and_warns(serve_data, started):
    result = runner.invoke(app, ["serve", "--base", "sam_tiny", "--data", str(serve_data),
                                 "--host", "0.0.0.0", "--allow-remote"])
    assert result.exit_code == 0, result.output
    assert "warning: serving on 0.0.0.0" in result.output
    assert started[0][1] == "0.0.0.0"
    assert check_host("127.0.0.1", False) is None and check_host("::1", False) is None
    assert check_host("localhost", False) is None
