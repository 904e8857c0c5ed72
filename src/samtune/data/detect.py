"""Which layout a dataset folder has, and :func:`open_source`, the one way to read one.

Detection looks only at folder and file names (no file is read): LabPicsV1, then COCO, then
image + mask folders. A dataset with ``train/ val/ test/`` folders (any of the aliases in
:data:`samtune.data.source.SPLIT_ALIASES`) is pre-split; one without is cut into train and val
by ``val_size`` and ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from samtune.config.data import SourceConfig
from samtune.data.coco import CocoSource, coco_parts
from samtune.data.folder import FolderSource, pair_dirs
from samtune.data.labpics import LabPicsSource, labpics_parts
from samtune.data.source import (
    BadSample,
    Source,
    canonical_split,
    choose_split,
    split_dirs,
    split_indices,
    warn_problem,
)
from samtune.errors import SamtuneError

ACCEPTED_LAYOUTS = """\
  folder:  imgs/ (or images/) + masks/, optionally inside train/ val/ (valid/) test/;
           or cellpose style NAME.png + NAME_masks.png in one folder
  coco:    annotations.json or _annotations.coco.json beside the images (or above images/);
           train/ valid/ test/ each with _annotations.coco.json (Roboflow, ``lightning_coco_boxes``);
           data/images + data/annotations.json (``finestsam_points``, cut by val_size);
           train|val/images + annotations.json (``finestsam_points`` pre-split)
  labpics: LabPicsV1 Simple/Train|Test/Image/*.jpg + Instance/*.png"""


@dataclass(frozen=True)
class Layout:
    """A detected layout: its format, a description for reports, the dataset root, and the
    folder (folder, labpics) or json file (coco) of each split; the single key ``all`` marks
    an unsplit dataset."""

    format: str
    description: str
    root: Path
    parts: dict[str, Path]

    @property
    def presplit(self) -> bool:
        return "all" not in self.parts


def _folder_parts(root: Path) -> tuple[dict[str, Path], str] | None:
    dirs = pair_dirs(root)
    if dirs is not None:
        return {"all": root}, _folder_description(dirs)
    pairs = {split: (folder, pair_dirs(folder)) for split, folder in split_dirs(root).items()}
    found = {split: (folder, dirs) for split, (folder, dirs) in pairs.items() if dirs}
    if not found:
        return None
    names = " ".join(f"{folder.name}/" for folder, _ in found.values())
    first_dirs = next(iter(found.values()))[1]
    return ({split: folder for split, (folder, _) in found.items()},
            f"{_folder_description(first_dirs)} in {names}")


def _labpics_parts(root: Path) -> tuple[dict[str, Path], str] | None:
    parts = labpics_parts(root)
    return (parts, "LabPicsV1 (Simple/Train|Test with Image/ + Instance/)") if parts else None


def _folder_description(dirs: tuple[Path, Path]) -> str:
    if dirs[0] == dirs[1]:
        return "folder, cellpose style (NAME.png + NAME_masks.png)"
    return f"folder ({dirs[0].name}/ + {dirs[1].name}/)"


def detect_layout(path: str | Path, format: str = "auto") -> Layout:
    """The layout of the dataset at ``path``; ``format`` other than ``auto`` restricts the
    search to that format. Raises SamtuneError naming what was found when nothing fits."""
    root = Path(path).expanduser()
    if not root.exists():
        raise SamtuneError(f"{root}: no such file or folder; check the dataset path")
    finders = {
        "labpics": _labpics_parts,
        "coco": coco_parts,
        "folder": _folder_parts,
    }
    for name, finder in finders.items():
        if format not in ("auto", name) or (root.is_file() and name != "coco"):
            continue
        found = finder(root)
        if found is not None:
            parts, description = found
            base = root.parent if root.is_file() else root
            return Layout(name, description, base, parts)
    raise SamtuneError(_no_layout_message(root, format))


def _no_layout_message(root: Path, format: str) -> str:
    if root.is_dir():
        entries = sorted(root.iterdir())
        shown = ", ".join(e.name + ("/" if e.is_dir() else "") for e in entries[:12])
        more = f" and {len(entries) - 12} more" if len(entries) > 12 else ""
        found = f"found {shown or 'nothing'}{more}"
    else:
        found = "it is a file, not a COCO .json"
    wanted = "any known layout" if format == "auto" else f"a {format} layout"
    return (f"{root}: not {wanted}; {found}. Accepted layouts:\n{ACCEPTED_LAYOUTS}\n"
            "Move the files into one of these, or name the format with format:.")


def source_config(path_or_config: str | Path | SourceConfig, format: str | None = None,
                  **options: Any) -> SourceConfig:
    """A validated SourceConfig from a path or a config plus overrides; invalid options raise
    SamtuneError listing them."""
    try:
        if isinstance(path_or_config, SourceConfig):
            base = path_or_config.model_dump(exclude_unset=True)
        else:
            base = {"path": Path(path_or_config)}
        if format is not None:
            base["format"] = format
        return SourceConfig.model_validate({**base, **options})
    except ValidationError as e:
        details = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
                            for err in e.errors())
        raise SamtuneError(f"invalid dataset options: {details}") from None


def open_part(layout: Layout, part: str, config: SourceConfig, name: str) -> Source:
    """The raw source of one part (a split, or ``all``): problems recorded, none acted on."""
    where = layout.parts[part]
    if layout.format == "coco":
        return CocoSource(layout.root, where, config, name)
    if layout.format == "labpics":
        return LabPicsSource(layout.root, where, config, name)
    return FolderSource(layout.root, where, config, name)


def open_split(layout: Layout, split: str, config: SourceConfig) -> Source:
    """The raw source of ``split``. An unsplit dataset gives its ``train``/``val`` cut (by
    ``val_size`` and ``seed``), or everything for ``split='all'``."""
    base = config.name or layout.root.name
    if layout.presplit:
        part = choose_split(layout.parts, split, layout.root)
        key = next(k for k, v in layout.parts.items() if v == part)
        return open_part(layout, key, config, f"{base}/{key}")
    whole = open_part(layout, "all", config, base)
    want = canonical_split(split) or split
    if want == "all":
        return whole
    if want not in ("train", "val"):
        raise SamtuneError(f"{layout.root}: the dataset has no split folders, so it has only "
                           f"train and val (cut by val_size={config.val_size}); no '{split}'")
    indices = split_indices(len(whole), want, config.val_size, config.seed)
    return whole.subset(indices, f"{base}/{want}")


def apply_policy(source: Source, skip_bad: bool) -> Source:
    """Refuse a source with errors, or (``skip_bad``) drop what is bad with one warning each,
    reading every sample once to find the unreadable ones. Warnings are issued either way."""
    errors = [p for p in source.problems if p.level == "error"]
    if errors and not skip_bad:
        listed = "\n".join(f"  {p}" for p in errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise SamtuneError(
            f"{source.root}: {len(errors)} problem(s) in {source.name}:\n{listed}{more}\n"
            f"Fix them (`samtune data check {source.root}` lists all), or set skip_bad: true "
            "to train without the bad samples.")
    for problem in source.problems:
        warn_problem(problem, "skipped: " if problem.level == "error" else "")
    if not skip_bad:
        return source
    good = []
    for i in range(len(source)):
        try:
            source.load(i)
        except BadSample as e:
            for problem in e.problems:
                warn_problem(problem, "skipped: ")
        else:
            good.append(i)
    return source.subset(good) if len(good) < len(source) else source


def open_source(path_or_config: str | Path | SourceConfig, split: str = "train",
                format: str | None = None, **options: Any) -> Source:
    """The ``split`` ('train', 'val', 'test', or 'all' for an unsplit dataset) of the dataset
    at a path or described by a SourceConfig, ``options`` overriding config fields.

    The layout is detected unless ``format`` (or the config's) names it. A dataset with errors
    raises SamtuneError listing them, unless ``skip_bad=True``, which skips each bad sample
    or annotation with a :class:`~samtune.data.source.DataWarning`.
    """
    config = source_config(path_or_config, format, **options)
    layout = detect_layout(config.path, config.format)
    return apply_policy(open_split(layout, split, config), config.skip_bad)
