"""Atomic writes: a failed write leaves nothing behind; a finished one has the usual mode."""

import os

import pytest

from samtune.files import atomic_path, write_text


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_written_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "report.md", "# ok\n")
    finally:
        os.umask(old)
    assert path.read_text() == "# ok\n"
    assert path.stat().st_mode & 0o777 == 0o644
