"""``samtune data check``: read a whole dataset once and report what it holds and what is wrong.

:func:`check` never raises for a problem in the data (only for invalid options) and never
writes anything: every problem becomes a :class:`~samtune.data.source.Problem` naming the file
relative to the dataset root (and the COCO annotation id), and :attr:`DatasetReport.ok` says
whether training can start. Training runs the same reading through ``open_source``, so what
``check`` accepts is what training accepts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samtune.config.data import SourceConfig
from samtune.data.detect import detect_layout, open_part, source_config
from samtune.data.source import BadSample, Problem, Source, size_text
from samtune.errors import SamtuneError


@dataclass
class SplitStats:
    """What one split holds. ``sizes`` counts images per (H, W); ``categories`` counts objects
    per category id, with every declared category present (zero when unused)."""

    name: str
    images: int = 0
    objects: int = 0
    objects_min: int = 0
    objects_max: int = 0
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    categories: Counter[int] = field(default_factory=Counter)
    category_names: dict[int, str] = field(default_factory=dict)

    @property
    def objects_mean(self) -> float:
        return self.objects / self.images if self.images else 0.0

    def add(self, objects: int, size: tuple[int, int], categories: list[int] | None) -> None:
        self.objects_min = objects if self.images == 0 else min(self.objects_min, objects)
        self.objects_max = max(self.objects_max, objects)
        self.images += 1
        self.objects += objects
        self.sizes[size] += 1
        self.categories.update(categories or [])

    def sizes_text(self) -> str:
        """Up to four distinct sizes with their counts, else the smallest and largest."""
        if not self.sizes:
            return "no readable images"
        if len(self.sizes) <= 4:
            return ", ".join(f"{size_text(s)} ({n})" for s, n in self.sizes.most_common())
        by_area = sorted(self.sizes, key=lambda s: (s[0] * s[1], s))
        return (f"{len(self.sizes)} sizes from {size_text(by_area[0])} to "
                f"{size_text(by_area[-1])}")

    def render(self) -> str:
        lines = [(f"{self.name}: {_count(self.images, 'image')}, {_count(self.objects, 'object')} "
                  f"({self.objects_min}-{self.objects_max} per image, mean "
                  f"{self.objects_mean:.1f}); sizes {self.sizes_text()}")]
        if self.category_names or self.categories:
            ids = sorted(set(self.category_names) | set(self.categories))
            listed = ", ".join(f"{self.category_names.get(c, '?')} (id {c}): {self.categories[c]}"
                               for c in ids)
            lines.append(f"  categories: {listed}")
        return "\n".join(lines)


@dataclass
class DatasetReport:
    """The result of :func:`check`: layout, per-split statistics, every problem found."""

    path: Path
    layout: str
    splits: list[SplitStats] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    note: str = ""

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        """True when the dataset can be trained on as it is: no errors (warnings allowed)."""
        return not self.errors

    def render(self) -> str:
        """Plain-text report: summary, then every problem (errors first), then the verdict."""
        lines = [f"Dataset  {self.path}", f"Layout   {self.layout}"]
        if self.note:
            lines.append(f"Note     {self.note}")
        if self.splits:
            lines.append("")
            lines.extend(s.render() for s in self.splits)
        n_err, n_warn = len(self.errors), len(self.warnings)
        if self.problems:
            lines.append("")
            lines.append(f"{_count(n_err, 'error')}, {_count(n_warn, 'warning')}:")
            lines.extend(f"  {p.level:<8} {p}" for p in self.errors + self.warnings)
        lines.append("")
        if self.ok:
            lines.append(f"OK: the dataset can be trained on ({_count(n_warn, 'warning')}).")
        elif not self.splits:
            lines.append("NOT OK: no dataset could be read.")
        else:
            lines.append(f"NOT OK: fix the {_count(n_err, 'error')} above, or set skip_bad: true "
                         "to train without the bad samples and annotations.")
        return "\n".join(lines)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def check(path_or_config: str | Path | SourceConfig, format: str | None = None,
          **options: Any) -> DatasetReport:
    """Detect the layout of the dataset at ``path_or_config``, read every split and every
    sample once, and report statistics and problems. Files are only read. Raises
    SamtuneError only for invalid options; problems in the data go into the report."""
    config = source_config(path_or_config, format, **options)
    try:
        layout = detect_layout(config.path, config.format)
    except SamtuneError as e:
        return DatasetReport(Path(config.path), "none found", problems=[Problem("error", "", str(e))])
    report = DatasetReport(layout.root, layout.description)
    for part in layout.parts:
        try:
            source = open_part(layout, part, config, part)
        except SamtuneError as e:
            file = Path(layout.parts[part]).relative_to(layout.root).as_posix()
            report.problems.append(Problem("error", file, str(e).split(": ", 1)[-1]))
            continue
        report.problems.extend(source.problems)
        report.splits.append(scan(source, report.problems))
    if not layout.presplit and report.splits:
        n = report.splits[0].images
        n_val = int(n * config.val_size)
        report.note = (f"no split folders: training cuts it into {n - n_val} train and {n_val} "
                       f"val images (val_size {config.val_size}, seed {config.seed})")
    report.problems = list(dict.fromkeys(report.problems))
    return report


def scan(source: Source, problems: list[Problem]) -> SplitStats:
    """Read every sample of ``source``; statistics of the readable ones, problems appended."""
    stats = SplitStats(source.name, category_names=dict(getattr(source, "categories", {})))
    for i in range(len(source)):
        try:
            sample, found = source.load(i)
        except BadSample as e:
            problems.extend(e.problems)
            continue
        problems.extend(found)
        stats.add(len(sample), sample.size, sample.category_ids)
    return stats
