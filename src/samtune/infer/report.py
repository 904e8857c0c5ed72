"""The evaluation report people read: ``report.md``, ``metrics.json``, plots and comparison
panels, all written atomically, plus the compact console table and the worse-than-base warning.

Everything here works from the metrics document :func:`samtune.infer.evaluate.metrics_document`
builds (``models -> base|tuned -> mode -> aggregates``), so anyone can re-plot from
``metrics.json`` alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.table import Table

from samtune.files import atomic_path, write_json, write_png, write_text
from samtune.infer.visualize import overlay, side_by_side

#: metrics shown in the tables and plotted, with their display names
SHOWN = {"iou": "IoU", "dice": "Dice", "pixel_accuracy": "pixel accuracy",
         "boundary_f1": "boundary F1"}
SIDES = ("base", "tuned")
SIDE_NAMES = {"base": "base", "tuned": "fine-tuned"}
AP_SHOWN = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


@dataclass
class PanelCase:
    """One comparison panel: which (best/median/worst), the image, its true masks and each
    model's predicted masks (k, H, W) in the panel's mode, with the tuned and base per-image
    IoU; ``boxes`` (k, 4) and ``points`` (k, P, 2) are drawn on the ground truth when given."""

    rank: str
    path: str
    mode: str
    image: np.ndarray
    truth: np.ndarray
    base: np.ndarray
    tuned: np.ndarray
    iou_base: float
    iou_tuned: float
    boxes: np.ndarray | None = None
    points: np.ndarray | None = None


# --- numbers --------------------------------------------------------------------------------


def mode_value(metrics: Mapping[str, Any], side: str, mode: str, metric: str,
               level: str = "mask") -> float | None:
    """One aggregate (``level`` mask, image or micro) of one model in one mode, or None."""
    entry = metrics["models"].get(side, {}).get(mode)
    return None if entry is None else entry[level].get(metric)


def worse_than_base(metrics: Mapping[str, Any]) -> list[str]:
    """The modes where the fine-tuned model scores below the base: mean IoU over masks, and
    AP for the automatic mode, e.g. ``point (IoU 0.610 vs 0.640)``."""
    found = []
    for mode in metrics["modes"]:
        base, tuned = (mode_value(metrics, s, mode, "iou") for s in SIDES)
        if base is not None and tuned is not None and tuned < base:
            found.append(f"{mode} (IoU {tuned:.3f} vs {base:.3f})")
        if mode == "auto":
            base, tuned = (metrics["models"][s]["auto"]["coco"]["AP"] for s in SIDES)
            if tuned < base:
                found.append(f"auto (AP {tuned:.3f} vs {base:.3f})")
    return found


def warning_line(worse: Sequence[str]) -> str | None:
    """The plain warning sentence for :func:`worse_than_base`'s list, or None when empty."""
    if not worse:
        return None
    return f"the fine-tuned model is worse than the base on: {', '.join(worse)}"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(base: float | None, tuned: float | None) -> str:
    return "-" if base is None or tuned is None else f"{tuned - base:+.3f}"


# --- console --------------------------------------------------------------------------------


def console_table(metrics: Mapping[str, Any]) -> Table:
    """Mode x (IoU, Dice, boundary F1, AP) with base -> fine-tuned, for the terminal."""
    table = Table(title="base -> fine-tuned (mean over masks)")
    for column in ("mode", "masks", "IoU", "Dice", "boundary F1", "AP"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode in metrics["modes"]:
        cells = [mode, str(metrics["models"]["tuned"][mode]["n_masks"])]
        for metric in ("iou", "dice", "boundary_f1"):
            base, tuned = (mode_value(metrics, s, mode, metric) for s in SIDES)
            cells.append(f"{_fmt(base)} -> {_fmt(tuned)}")
        if mode == "auto":
            base, tuned = (metrics["models"][s]["auto"]["coco"]["AP"] for s in SIDES)
            cells.append(f"{_fmt(base)} -> {_fmt(tuned)}")
        else:
            cells.append("")
        table.add_row(*cells)
    return table


# --- plots ----------------------------------------------------------------------------------


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    """A matplotlib Figure and its axes, without pyplot: no backend or global state is
    touched, so evaluating from a notebook leaves its plotting alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def plot_metric(metrics: Mapping[str, Any], metric: str, path: Path) -> Path:
    """Bar chart of ``metric`` (mean over masks): modes on the x axis, base and fine-tuned
    bars side by side."""
    modes = list(metrics["modes"])
    fig, axes = _figure(1.3 * len(modes) + 2, 3.6)
    ax = axes[0, 0]
    x = np.arange(len(modes))
    for k, side in enumerate(SIDES):
        values = [mode_value(metrics, side, m, metric) for m in modes]
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (k - 0.5) * 0.38, heights, 0.38, label=SIDE_NAMES[side],
                      color=("#9aa5b1", "#1e90ff")[k])
        ax.bar_label(bars, labels=[_fmt(v, 2) for v in values], fontsize=7, padding=2)
    ax.set_xticks(x, modes)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(SHOWN.get(metric, metric))
    ax.set_title(f"{SHOWN.get(metric, metric)} per prompt mode (mean over masks)")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_iou_histograms(metrics: Mapping[str, Any], path: Path) -> Path:
    """Per-mask IoU histograms, base vs fine-tuned, one panel per mode."""
    modes = list(metrics["modes"])
    cols = min(3, len(modes))
    rows = (len(modes) + cols - 1) // cols
    fig, axes = _figure(4 * cols, 2.8 * rows, rows, cols)
    bins = np.linspace(0, 1, 21)
    for ax, mode in zip(axes.ravel(), modes):
        for k, side in enumerate(SIDES):
            values = [v for r in metrics["models"][side][mode]["images"] for v in r["iou"]]
            ax.hist(values, bins=bins, alpha=0.6, label=SIDE_NAMES[side],
                    color=("#9aa5b1", "#1e90ff")[k])
        ax.set_title(mode)
        ax.set_xlabel("IoU per mask")
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(modes):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


# --- panels ---------------------------------------------------------------------------------


def _fit(tile: np.ndarray, target: int = 320) -> np.ndarray:
    """Small images enlarged by a whole factor (pixels stay sharp), large ones shrunk, so a
    panel reads at about ``target`` pixels on its longer side."""
    side = max(tile.shape[:2])
    if side < target / 1.5:
        k = round(target / side)
        return np.repeat(np.repeat(tile, k, axis=0), k, axis=1)
    if side > 1.5 * target:
        scale = target / side
        size = (round(tile.shape[1] * scale), round(tile.shape[0] * scale))
        return cv2.resize(tile, size, interpolation=cv2.INTER_AREA)
    return tile


def write_panel(case: PanelCase, path: Path) -> Path:
    """original | ground truth (with the prompts) | base | fine-tuned, in one PNG."""
    truth = overlay(case.image, case.truth, 0.5, boxes=case.boxes,
                    points=None if case.points is None else case.points.reshape(-1, 2))
    tiles = [case.image, truth, overlay(case.image, case.base, 0.5),
             overlay(case.image, case.tuned, 0.5)]
    titles = ["original", "ground truth", f"base IoU {case.iou_base:.2f}",
              f"fine-tuned IoU {case.iou_tuned:.2f}"]
    return write_png(path, side_by_side([_fit(t) for t in tiles], titles))


# --- report ---------------------------------------------------------------------------------


def write_report(out_dir: str | Path, metrics: Mapping[str, Any],
                 panels: Sequence[PanelCase] = ()) -> Path:
    """Write ``metrics.json``, ``plots/*.png``, ``comparisons/*.png`` and ``report.md`` into
    ``out_dir``; returns the report's path. The report is written last, so it only ever links
    to files that exist."""
    out = Path(out_dir)
    write_json(out / "metrics.json", metrics)
    plots = [plot_metric(metrics, metric, out / "plots" / f"{metric}.png") for metric in SHOWN]
    plots.append(plot_iou_histograms(metrics, out / "plots" / "iou_histograms.png"))
    written = []
    for case in panels:
        stem = Path(case.path).stem or "image"
        written.append((case, write_panel(case, out / "comparisons" / f"{case.rank}_{stem}.png")))
    return write_text(out / "report.md", render_markdown(metrics, plots, written, out))


def render_markdown(metrics: Mapping[str, Any], plots: Sequence[Path],
                    panels: Sequence[tuple[PanelCase, Path]], out: Path) -> str:
    """report.md's text; links are relative to ``out``."""
    info = metrics["info"]
    lines = [f"# Evaluation: {info['model']} vs base {info['base']}", "",
             (f"- data: {info['data']} (split {info['split']}, {info['n_images']} images, "
              f"{info['n_objects']} objects)"),
             (f"- date: {info['date']}; device: {info['device']}, {info.get('precision', 'fp32')}; "
              f"seed: {info['seed']}"), ""]
    worse = warning_line(metrics.get("warnings", []))
    if worse:
        lines += [f"> **Warning:** {worse}.", ""]
    for note in metrics.get("notes", []):
        lines += [f"> **Note:** {note}.", ""]
    lines += ["## Prompt modes", ""]
    lines += [f"- **{m}**: {metrics['mode_descriptions'][m]}" for m in metrics["modes"]]
    lines += ["", ("Metrics at the original image size; boundary F1 with a 0-pixel tolerance; "
                   "automatic AP is class-agnostic COCO mask AP (pycocotools, maxDets 100)."), ""]
    lines += _results_table(metrics) + _iou_levels_table(metrics) + _category_table(metrics)
    lines += _ap_table(metrics) + _class_table(metrics)
    lines += ["## Plots", ""]
    lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots]
    if panels:
        lines += ["", (f"## Comparisons ({panels[0][0].mode} mode; best, median and worst "
                       "image by fine-tuned IoU)"), ""]
        for case, path in panels:
            lines += [(f"**{case.rank}**: `{case.path}` (IoU base {case.iou_base:.3f}, "
                       f"fine-tuned {case.iou_tuned:.3f})"), "",
                      f"![{case.rank}]({path.relative_to(out).as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _results_table(metrics: Mapping[str, Any]) -> list[str]:
    lines = ["## Results per prompt mode (mean over masks)", "",
             "| mode | metric | base | fine-tuned | Δ |", "| --- | --- | ---: | ---: | ---: |"]
    for mode in metrics["modes"]:
        for metric, name in SHOWN.items():
            base, tuned = (mode_value(metrics, s, mode, metric) for s in SIDES)
            lines.append(f"| {mode} | {name} | {_fmt(base)} | {_fmt(tuned)} | "
                         f"{_delta(base, tuned)} |")
    return lines + [""]


def _iou_levels_table(metrics: Mapping[str, Any]) -> list[str]:
    lines = ["## IoU three ways", "",
             ("Mean over masks, mean over images (of each image's mean), and micro (pixels "
              "pooled over the dataset)."), "",
             "| mode | masks | per mask base | tuned | per image base | tuned | micro base | tuned |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mode in metrics["modes"]:
        cells = [mode, str(metrics["models"]["tuned"][mode]["n_masks"])]
        for level in ("mask", "image", "micro"):
            cells += [_fmt(mode_value(metrics, s, mode, "iou", level)) for s in SIDES]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _category_table(metrics: Mapping[str, Any]) -> list[str]:
    rows = []
    for mode in metrics["modes"]:
        tuned = metrics["models"]["tuned"][mode]["per_category"]
        base = metrics["models"]["base"][mode]["per_category"]
        for cid, entry in tuned.items():
            b = base.get(cid, {})
            rows.append(f"| {entry['name']} | {mode} | {entry['n_masks']} | "
                        f"{_fmt(b.get('iou'))} | {_fmt(entry['iou'])} | "
                        f"{_delta(b.get('iou'), entry['iou'])} | {_fmt(b.get('dice'))} | "
                        f"{_fmt(entry['dice'])} |")
    if not rows:
        return []
    return ["## Per category (mean over masks)", "",
            "| category | mode | masks | IoU base | IoU tuned | Δ | Dice base | Dice tuned |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |", *rows, ""]


def _ap_table(metrics: Mapping[str, Any]) -> list[str]:
    if "auto" not in metrics["modes"]:
        return []
    lines = ["## Automatic masks: COCO mask AP", "", "| | base | fine-tuned | Δ |",
             "| --- | ---: | ---: | ---: |"]
    for key in AP_SHOWN:
        base, tuned = (metrics["models"][s]["auto"]["coco"][key] for s in SIDES)
        lines.append(f"| {key} | {_fmt(base)} | {_fmt(tuned)} | {_delta(base, tuned)} |")
    lines += ["", ("`-` where the data has no object in that area range "
                   "(small < 32², medium < 96² pixels, large above)."), ""]
    return lines + _ap_category_table(metrics)


def _ap_category_table(metrics: Mapping[str, Any]) -> list[str]:
    tuned = metrics["models"]["tuned"]["auto"].get("coco_per_category") or {}
    base = metrics["models"]["base"]["auto"].get("coco_per_category") or {}
    if not tuned:
        return []
    lines = ["## Automatic masks: COCO mask AP per category", "",
             ("The class-agnostic masks against each category's objects; masks on objects of "
              "other categories are ignored (COCO crowd), masks on background count against "
              "every category."), "",
             "| category | objects | AP base | AP tuned | Δ | AP50 base | AP50 tuned |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for cid, entry in tuned.items():
        b = base.get(cid, {})
        lines.append(f"| {entry['name']} | {entry['n_objects']} | {_fmt(b.get('AP'))} | "
                     f"{_fmt(entry['AP'])} | {_delta(b.get('AP'), entry['AP'])} | "
                     f"{_fmt(b.get('AP50'))} | {_fmt(entry['AP50'])} |")
    return lines + [""]


def _class_table(metrics: Mapping[str, Any]) -> list[str]:
    """The fine-tuned model's class head (``model.class_head``): how often each prompted
    mask got its object's category, and class-aware AP of the labelled automatic masks."""
    tuned = metrics["models"]["tuned"]
    rows = []
    for mode in metrics["modes"]:
        entry = tuned[mode]
        if entry.get("class_accuracy") is not None:
            recall = ", ".join(f"{c['name']} {_fmt(c.get('class_recall'))}"
                               for c in entry["per_category"].values())
            rows.append(f"| {mode} | {_fmt(entry['class_accuracy'])} | {recall} |")
    classes = tuned.get("auto", {}).get("coco_classes")
    if not rows and not classes:
        return []
    lines = ["## Classes (the fine-tuned model's class head)", ""]
    if rows:
        lines += ["Prompted masks labelled with their object's category:", "",
                  "| mode | accuracy | recall per category |", "| --- | ---: | --- |", *rows, ""]
    if classes:
        lines += [("Automatic masks with the head's labels, class-aware COCO mask AP (a mask "
                   "counts only on objects of its label):"), "",
                  "| category | objects | AP | AP50 |", "| --- | ---: | ---: | ---: |",
                  f"| all (mean) | | {_fmt(classes['all']['AP'])} | "
                  f"{_fmt(classes['all']['AP50'])} |"]
        lines += [f"| {c['name']} | {c['n_objects']} | {_fmt(c['AP'])} | {_fmt(c['AP50'])} |"
                  for c in classes["per_category"].values()]
        lines.append("")
    return lines
