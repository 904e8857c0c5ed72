"""The ``samtune`` command: one sub-command per job, each a thin call into the package.

A :class:`~samtune.errors.SamtuneError` (a problem the user can fix) prints as one line and
exits with status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from samtune.config.data import Format
from samtune.errors import SamtuneError, SamtuneWarning

app = typer.Typer(
    help="Fine-tune, evaluate and serve Segment Anything models on your own data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Piped output keeps whole table cells instead of rich's 80-column truncation.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


_format_warning = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """samtune's own warnings as one ``warning:`` line (no file, line number or code)."""
    if issubclass(category, SamtuneWarning):
        return f"warning: {message}\n"
    return _format_warning(message, category, filename, lineno, line)


warnings.formatwarning = _one_line_warning


def user_errors(fn):
    """Turn user-fixable errors into one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SamtuneError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


# Automatic-mask-generator options shared by `predict --auto` and `eval` (mode auto).
PointsPerSide = Annotated[Optional[int], typer.Option(
    min=1, help="Automatic masks: grid of points per side (family default 32).")]
PredIouThresh = Annotated[Optional[float], typer.Option(
    help="Automatic masks: drop masks whose predicted IoU is below this (family default).")]
StabilityScoreThresh = Annotated[Optional[float], typer.Option(
    help="Automatic masks: drop masks less stable than this (default 0.95).")]
# Tiling of large images, shared by `predict` and `eval` (micro-sam's tile_shape and halo).
TileShape = Annotated[Optional[str], typer.Option(
    "--tile-shape", metavar="ROWS,COLS",
    help="Cut large images into tiles of this size (e.g. 512,512), each encoded at the model's "
         "resolution, instead of shrinking the whole image.")]
Halo = Annotated[Optional[str], typer.Option(
    "--halo", metavar="ROWS,COLS",
    help="With --tile-shape: context added on every side of a tile (e.g. 64,64); an object "
         "crossing a tile border is found whole when it reaches at most halo - 20 pixels past it.")]


def tiling_options(tile_shape: Optional[str], halo: Optional[str]) -> dict:
    """``--tile-shape`` / ``--halo`` strings -> checked ``tile_shape`` and ``halo`` keywords."""
    from samtune.infer.tiling import check_tiling, parse_pair

    checked = check_tiling(parse_pair(tile_shape, "--tile-shape"), parse_pair(halo, "--halo"))
    return {} if checked is None else {"tile_shape": checked[0], "halo": checked[1]}


class PrecisionChoice(str, Enum):
    """Inference precision of `predict` and `eval`."""

    fp32 = "fp32"
    bf16 = "bf16"


class ObjectsChoice(str, Enum):
    """How `eval` reads folder masks as objects (the data config's ``objects``)."""

    auto = "auto"
    components = "components"
    whole = "whole"
    label_map = "label_map"


class Split(str, Enum):
    """A dataset split, as `samtune data check` names them."""

    train = "train"
    val = "val"
    test = "test"
    all = "all"


#: the dataset layouts of `data check --format`: the config's own vocabulary
DataFormat = Enum("DataFormat", {name: name for name in get_args(Format)}, type=str)

Precision = Annotated[PrecisionChoice, typer.Option(
    help="fp32, or bf16 autocast (faster on GPUs and bf16 CPUs; masks IoU >= 0.99 of fp32).")]


@app.command("models")
@user_errors
def models_command(
    family: Annotated[Optional[str], typer.Option(help="Only this family (sam, mobile_sam, sam2, ...).")] = None,
    tiny: Annotated[bool, typer.Option(help="Include the random-init tiny variants.")] = True,
) -> None:
    """List the model names samtune knows, and which official checkpoints are in the cache."""
    from samtune.models.checkpoints import published_status, samtune_home
    from samtune.models.registry import FAMILIES, list_models

    if family is not None and family not in FAMILIES:
        raise SamtuneError(f"unknown family {family!r}; the families: {', '.join(FAMILIES)}")
    table = Table(title=f"samtune models (cache: {samtune_home()})")
    for column in ("name", "family", "encoder", "input", "params", "checkpoint file", "sha256", "present"):
        table.add_column(column, justify="right" if column in ("input", "params") else "left")
    for spec in list_models(family=family, include_tiny=tiny):
        table.add_row(
            spec.name, spec.family, spec.encoder, str(spec.input_size), f"{spec.params / 1e6:.1f}M",
            spec.filename or "(random init)",
            "published" if spec.sha256 else "-",
            published_status(spec),
        )
    console.print(table)


@app.command("predict")
@user_errors
def predict_command(
    inputs: Annotated[Path, typer.Argument(help="An image file, or a folder of images (searched recursively).")],
    model: Annotated[str, typer.Option(
        help="Model name (see `samtune models`), run folder, or checkpoint file.")],
    checkpoint: Annotated[Optional[str], typer.Option(
        help="With a model name: checkpoint file, or 'auto' for the official one from the cache "
             "(downloaded if missing). Omit for random init.")] = None,
    box: Annotated[Optional[list[str]], typer.Option(
        help="Box prompt x0,y0,x1,y1 in pixels; repeat for several objects.")] = None,
    point: Annotated[Optional[list[str]], typer.Option(
        help="Point prompt x,y[,label] (label 1 object, 0 background); repeat for several points.")] = None,
    prompts: Annotated[Optional[Path], typer.Option(
        help="Prompt file: samtune JSON (image name -> objects) or a COCO file (its boxes).")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="Segment everything, no prompts.")] = False,
    output: Annotated[Path, typer.Option(help="Folder for masks, overlays and predictions.json.")] = Path("predictions"),
    label_map: Annotated[bool, typer.Option(
        "--label-map", help="One label-map PNG per image (object i = value i+1) instead of a PNG per object.")] = False,
    multimask: Annotated[bool, typer.Option(help="Predict three candidates per object; keep the best.")] = False,
    opacity: Annotated[float, typer.Option(min=0.0, max=1.0, help="Overlay opacity.")] = 0.5,
    points_per_side: PointsPerSide = None,
    pred_iou_thresh: PredIouThresh = None,
    stability_score_thresh: StabilityScoreThresh = None,
    crop_n_layers: Annotated[Optional[int], typer.Option(
        min=0, help="--auto: also run on 4^k crops for k = 1..n (default 0).")] = None,
    min_mask_region_area: Annotated[Optional[int], typer.Option(
        min=0, help="--auto: remove islands and holes smaller than this many pixels (default 0).")] = None,
    tile_shape: TileShape = None,
    halo: Halo = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    precision: Precision = PrecisionChoice.fp32,
) -> None:
    """Segment images from box/point prompts, a prompt file, or everything (--auto); write
    masks (or label maps), overlays and a COCO RLE file."""
    from samtune.devices import check_device
    from samtune.infer.predict_files import plan_predictions, predict_paths
    from samtune.infer.predictor import Predictor
    from samtune.infer.prompted import parse_flag_prompts, read_prompt_file
    from samtune.runs import load_model
    from samtune.models.fast import inference_options

    given = [bool(box or point), prompts is not None, auto]
    if sum(given) != 1:
        raise SamtuneError("give exactly one of: --box/--point prompts, --prompts FILE, or --auto")
    objects = (parse_flag_prompts(box or [], point or []) if (box or point)
               else read_prompt_file(prompts) if prompts is not None else None)
    tiling = tiling_options(tile_shape, halo)
    check_device(device)
    plan_predictions(inputs, output, objects if objects is not None else [])  # before the model
    adapter = load_model(model, checkpoint=checkpoint, device=device)
    generator = None
    if auto:
        from samtune.infer.automatic import AutomaticMaskGenerator

        settings = {k: v for k, v in dict(
            points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, crop_n_layers=crop_n_layers,
            min_mask_region_area=min_mask_region_area).items() if v is not None}
        generator = AutomaticMaskGenerator(adapter, **settings, **tiling)
    with inference_options(adapter, precision.value):
        result = predict_paths(Predictor(adapter, **tiling), inputs, output, prompts=objects, generator=generator,
                               multimask=multimask, as_label_map=label_map, opacity=opacity)
    console.print(f"{result.images} image(s), {result.objects} object(s) -> {output} "
                  f"(masks, overlays, {result.coco.name})", highlight=False)


@app.command("train")
@user_errors
def train_command(
    config: Annotated[Optional[Path], typer.Argument(help="Run config (YAML). See configs/ for examples.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a config value: --set train.max_steps=200 (repeatable).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue the run in this folder from its last checkpoint.")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved config (every default written out) and exit.")] = False,
) -> None:
    """Fine-tune a model as the config says; writes runs/<name>/ (config, checkpoints, logs)."""
    from samtune.config import build_run_config
    from samtune.config.loading import to_yaml

    if resume is not None and config is not None:
        raise SamtuneError("give either CONFIG or --resume RUN, not both")
    run_config = build_run_config(config, set_ or [], resume=resume)
    if resume is not None and run_config.run_dir.resolve() != resume.resolve():
        raise SamtuneError(
            f"--resume {resume}: its config (output_dir/name) points to {run_config.run_dir}, "
            f"and a resume writes only into the folder it names; add --set "
            f"output_dir={resume.parent} --set name={resume.name} to continue it here")
    if print_config:
        console.print(to_yaml(run_config), highlight=False, markup=False, end="")
        return
    from samtune.train.run import train

    result = train(run_config, resume=resume is not None)
    if result.rank == 0:  # under DDP, every process returns here
        _print_result(result)


def _print_result(result) -> None:
    if result.stopped_early:
        console.print(result.stopped_early, highlight=False)
    console.print(f"run folder: {result.run_dir}", highlight=False)
    if result.best_checkpoint:
        console.print(f"best checkpoint: {result.best_checkpoint}", highlight=False)
    if result.best_step == 0:
        console.print("no validation beat the base model: best.ckpt holds the base weights",
                      highlight=False)
    base, final, best = result.base_metrics, result.final_metrics, result.best_metrics
    names = [k for k in ("val/iou", "val/dice", "val/boundary_f1", "val/class_accuracy") if k in final]
    for name in names:
        before = f"{base[name]:.4f}" if name in base else "-"
        line = f"{name}: base {before} -> last (step {result.last_step}) {final[name]:.4f}"
        if name in best:
            at = "base" if result.best_step == 0 else f"step {result.best_step}"
            line += f", best ({at}) {best[name]:.4f}"
        console.print(line, highlight=False)


@data_app.command("check")
@user_errors
def data_check_command(
    path: Annotated[Path, typer.Argument(help="Dataset folder, COCO json, or a run config (YAML).")],
    format: Annotated[Optional[DataFormat], typer.Option(help="Dataset layout (default: auto).")] = None,
) -> None:
    """Validate a dataset and summarize it; exit 0 when it can be trained on, 1 when not.

    Never modifies the files."""
    from samtune.data.validate import check

    format = format.value if format is not None else None
    if path.suffix in (".yaml", ".yml"):
        from samtune.config import build_run_config

        sources = build_run_config(path, []).data.train
        reports = [check(source, format=format) for source in sources]
    else:
        reports = [check(path, format=format)]
    for report in reports:
        console.print(report.render(), highlight=False, markup=False)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


class ExportFormat(str, Enum):
    official = "official"
    hf = "hf"
    onnx = "onnx"


@app.command("export")
@user_errors
def export_command(
    run: Annotated[Path, typer.Argument(help="Run folder (runs/<name>).")],
    checkpoint: Annotated[Optional[str], typer.Option(
        help="best, last, or a .ckpt file. Default: best, else last (a run without validation).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        help="Output folder. Default: RUN/export (official), RUN/export/hf, RUN/export/onnx.")] = None,
    format: Annotated[Optional[list[ExportFormat]], typer.Option(
        "--format", help="official (default), hf (transformers SamModel / Sam2Model folder), "
        "onnx (encoder.onnx + decoder.onnx for onnxruntime); repeat for several.")] = None,
) -> None:
    """Write the fine-tuned model as model.pth (official format, LoRA merged: loads in the
    official builders), trained.safetensors (only the trained tensors, for load_model(...,
    delta=)) and manifest.json; --format hf or onnx writes the same weights for transformers
    or onnxruntime."""
    from samtune.train.export import export_run
    from samtune.train.export_formats import export_run_format

    formats = [f.value for f in format] if format else ["official"]
    if output is not None and len(formats) > 1:
        raise SamtuneError("--output goes with one --format; give each format its own run")
    for fmt in dict.fromkeys(formats):
        if fmt != "official":
            done = export_run_format(run, fmt, checkpoint=checkpoint, output=output)
            console.print(f"exported {done.checkpoint} (step {done.step}) as {fmt} -> {done.output}",
                          highlight=False)
            for path in done.files:
                console.print(f"  {path.name}", highlight=False)
            continue
        result = export_run(run, checkpoint=checkpoint, output=output)
        console.print(f"exported {result.checkpoint} (step {result.step}) -> {result.output}", highlight=False)
        console.print(f"  {result.model.name}: whole model, official format", highlight=False)
        console.print(f"  {result.delta.name}: {result.delta_tensors} trained tensors "
                      f"({result.delta_numel / 1e6:.2f}M values)", highlight=False)
        console.print(f"  {result.manifest.name}: base, checksum, config, metrics", highlight=False)


@app.command("eval")
@user_errors
def eval_command(
    run: Annotated[Optional[str], typer.Argument(
        metavar="RUN", help="Fine-tuned run folder (runs/<name>) or checkpoint file.")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", hidden=True, help="The same as RUN (the earlier spelling).")] = None,
    data: Annotated[Optional[Path], typer.Option(
        help="Dataset: folder, COCO or LabPics (as `samtune data check` reads). "
             "Default: the run's validation data.")] = None,
    split: Annotated[Optional[Split], typer.Option(
        help="Split of --data (default: test, else val, else all).")] = None,
    base: Annotated[Optional[str], typer.Option(
        help="Base model to compare with (default: the run's base, or for a checkpoint file "
             "its official weights from the cache).")] = None,
    base_checkpoint: Annotated[Optional[Path], typer.Option(
        help="Weights of --base (omit for random init / a tiny model).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        help="Report folder (default RUN/eval/<data name>, RUN/eval/val for the run's own "
             "validation data; required for a checkpoint file).")] = None,
    objects: Annotated[Optional[ObjectsChoice], typer.Option(
        help="How folder masks become objects, as in training: auto, components, whole, "
             "label_map (default: the dataset's setting, auto).")] = None,
    modes: Annotated[str, typer.Option(
        help="Prompt modes, comma-separated: box, point, points3, box+point, none, auto.")]
        = "box,point,points3,box+point,none,auto",
    max_images: Annotated[Optional[int], typer.Option(min=1, help="Only the first N images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random prompt points (points3).")] = 0,
    batch_objects: Annotated[int, typer.Option(min=1, help="Objects per decoder call.")] = 64,
    points_per_side: PointsPerSide = None,
    pred_iou_thresh: PredIouThresh = None,
    stability_score_thresh: StabilityScoreThresh = None,
    tile_shape: TileShape = None,
    halo: Halo = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    precision: Precision = PrecisionChoice.fp32,
) -> None:
    """Compare a fine-tuned model with its base per prompt mode (IoU, Dice, pixel accuracy,
    boundary F1; COCO mask AP of automatic masks); write report.md, metrics.json, plots and
    comparison panels."""
    from samtune.devices import check_device
    from samtune.files import check_writable
    from samtune.infer.evaluate import (
        EvalSettings,
        eval_folder_name,
        resolve_data,
        resolve_models,
        run_eval,
    )
    from samtune.models.fast import inference_options

    if (run is None) == (model is None):
        raise SamtuneError("give the run folder or checkpoint file to evaluate: samtune eval RUN")
    model = run if run is not None else model
    split = split.value if split is not None else None
    amg = {k: v for k, v in dict(points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                                 stability_score_thresh=stability_score_thresh).items()
           if v is not None}
    settings = EvalSettings(tuple(m.strip() for m in modes.split(",") if m.strip()), seed=seed,
                            max_images=max_images, batch_objects=batch_objects, amg=amg,
                            **tiling_options(tile_shape, halo))
    if output is None and Path(model).is_file():
        raise SamtuneError(f"--output FOLDER is needed: {model} is a checkpoint file, not a run folder")
    check_device(device)
    check_writable(output or Path(model) / "eval", "report folder")
    how = objects.value if objects is not None else None
    given = resolve_data(data, split, objects=how) if data is not None else None  # a bad path fails first
    models = resolve_models(model, base, base_checkpoint, device)
    dataset, described, used_split = given or resolve_data(None, split, models.run_config, how)
    info = {"model": models.tuned_label, "base": models.base_label, "data": described,
            "split": used_split, "precision": precision.value}
    with inference_options(models.tuned, precision.value), inference_options(models.base, precision.value):
        run_eval(models.tuned, models.base, dataset,
                 output or models.run_dir / "eval" / eval_folder_name(data), settings,
                 info, console=console)


@app.command("serve")
@user_errors
def serve_command(
    model: Annotated[Optional[list[str]], typer.Option(
        help="Fine-tuned run folder, checkpoint file or model name; repeat to compare several.")]
        = None,
    base: Annotated[Optional[str], typer.Option(
        help="Base model name (default: the base of the first run folder given).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(
        help="Weights of the --model names: a file, 'auto' (the official file from the cache) "
             "or 'random'. Default: auto, random init for the tiny variants.")] = None,
    base_checkpoint: Annotated[Optional[str], typer.Option(
        help="Weights of --base: a file, 'auto' or 'random' (default as --checkpoint).")] = None,
    data: Annotated[Optional[Path], typer.Option(
        help="Dataset to pick images from (folder, COCO or LabPics). Default: the run's "
             "validation data; without either, uploads only.")] = None,
    split: Annotated[Optional[str], typer.Option(
        help="Split of --data (default: test, else val, else all).")] = None,
    save_to: Annotated[Path, typer.Option(
        help="Folder dataset (imgs/ + masks/) that accepted masks are saved into.")]
        = Path("corrections"),
    host: Annotated[str, typer.Option(help="Address to bind (loopback only unless --allow-remote).")]
        = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Allow a --host other machines can reach (prints a warning).")]
        = False,
    keep_embeddings: Annotated[int, typer.Option(
        min=0, help="Images whose embeddings each model keeps (0: encode on every click).")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
) -> None:
    """A local web page: click on an image and see the base and the fine-tuned model answer
    side by side; segment everything; read the run's eval report; save corrected masks as a
    folder dataset for `samtune train`. The JSON API behind it is in the README."""
    from samtune.serve import build_state, check_host, serve

    warning = check_host(host, allow_remote)
    state = build_state(model or [], base, checkpoint, base_checkpoint, data, split, save_to,
                        device, keep_embeddings)
    if warning:
        err_console.print(f"[bold yellow]{escape(warning)}[/]", highlight=False)
    for slot in state.slots:
        status = "ready" if slot.ready else f"[red]failed to load:[/] {escape(slot.error or '')}"
        console.print(f"{escape(slot.label)} (id {slot.id}): {status}", highlight=False)
    console.print(f"images: {len(state.images.entries())} from {state.data or '(uploads only)'}; "
                  f"corrections -> {state.corrections.root}", highlight=False)
    console.print(f"open http://{host}:{port}/ (Ctrl-C stops the server)", highlight=False)
    serve(state, host, port)


@app.command("demo")
@user_errors
def demo_command(
    output: Annotated[Path, typer.Option(help="Folder for the generated data and the run.")] = Path("demo_output"),
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 80,
    seed: Annotated[int, typer.Option(min=0, help="Another dataset and training order (0: the README's run).")] = 0,
) -> None:
    """The main job on an embedded default: generate data, fine-tune LiteMedSAM from its real
    weights, compare base and fine-tuned on held-out images, predict."""
    from samtune.demo import run_demo

    run_demo(output, steps=steps, seed=seed, console=console)


def main() -> None:  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
