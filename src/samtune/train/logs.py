"""The run's ``logs/metrics.csv``: one history across every resume of a run.

Lightning's CSV writer deletes an existing ``metrics.csv`` when a new Trainer starts, so each
resume erased the earlier rows (the base validation, the first steps), and it flushes rows
only every 100 steps, so a kill lost the latest ones. :class:`RunCSVLogger` appends to the
file instead and flushes each step (an append of the new rows). On resume,
:func:`keep_rows_before` first cuts the file back to the rows of the steps the checkpoint had
completed (the resumed run logs the later ones again) and drops a row a kill cut short.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from samtune.files import atomic_path

METRICS_FILE = "metrics.csv"


def metrics_path(run_dir: Path) -> Path:
    """A run's ``logs/metrics.csv``, where :class:`RunCSVLogger` writes it."""
    return Path(run_dir) / "logs" / METRICS_FILE


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer, minus deleting the file it finds: it continues that file's columns."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class RunCSVLogger(CSVLogger):
    """``logs/metrics.csv`` appended across resumes and flushed every step."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir, name="logs", version="", flush_logs_every_n_steps=1)

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def keep_rows_before(path: Path, step: int) -> int:
    """Rewrite ``metrics.csv`` (atomically) with only its rows logged before ``step`` that are
    whole; returns how many rows it kept."""
    if not path.is_file():
        return 0
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.endswith("\n"):  # a kill cut the last row short
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    rows = list(reader)
    if not header:
        path.unlink()
        return 0
    column = header.index("step") if "step" in header else None
    kept = [r for r in rows if len(r) == len(header)
            and (column is None or _step(r[column]) is not None and _step(r[column]) < step)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(kept)
    return len(kept)


def _step(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None
