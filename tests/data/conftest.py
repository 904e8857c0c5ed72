"""Generated datasets for the data tests: tiny scenes, written to tmp_path per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from samtune.data.synthetic import Scene, make_splits


@pytest.fixture(scope="session")
def splits() -> dict[str, list[Scene]]:
    """Three train and two val scenes of 64x80 px with 1-4 objects each."""
    return make_splits({"train": 3, "val": 2}, seed=0)


def object_counts(scenes: list[Scene]) -> list[int]:
    return [len(s.category_ids) for s in scenes]


def sorted_masks(masks: np.ndarray) -> list[bytes]:
    """Masks as comparable bytes, independent of object order."""
    return sorted(np.asarray(m, dtype=bool).tobytes() for m in masks)


def tree_state(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file below root with its size and content, to show nothing was modified."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}
