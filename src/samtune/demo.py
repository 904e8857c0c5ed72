"""``samtune demo``: the main job end to end on data the project generates.

Generate a small instance-segmentation dataset (textured shapes), check it, fine-tune the tiny
SAM on it with box prompts, print the base model's validation IoU next to the fine-tuned one,
and write prediction panels (image | ground truth | base | fine-tuned) for validation images.
A few minutes on 2 CPU cores; the same code paths as a real run with ``sam_vit_b``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from samtune.config import build_run_config
from samtune.data.mixing import open_dataset
from samtune.data.synthetic import make_splits, write_folder, write_splits
from samtune.data.validate import check
from samtune.files import write_png
from samtune.infer.predictor import Predictor
from samtune.infer.visualize import overlay, side_by_side
from samtune.models import list_models, load_model
from samtune.train.run import train

#: The demo's run config, beyond the dataset path: a full fine-tune of the tiny SAM with
#: tight boxes (with SAM's jitter), AdamW with warmup and cosine decay.
DEMO_OVERRIDES = [
    "name=demo",
    "model.name=sam_tiny",
    "model.freeze=[]",
    "prompts.mix={box: 1.0}",
    "train.batch_size=4",
    "train.val_every_n_steps=100",
    "train.optimizer.lr=0.002",
    "train.schedule.warmup_steps=20",
]


def make_demo_data(root: Path) -> Path:
    """48 training and 12 validation images (128x160) with 1-3 shapes each, as imgs/ + masks/
    folders with 16-bit instance label maps; generated once."""
    if not (root / "train").is_dir():
        splits = make_splits({"train": 48, "val": 12}, seed=0, size=(128, 160), n_objects=(1, 3),
                             kinds=("ellipse", "rectangle", "polygon"))
        write_splits(write_folder, root, splits, masks="label_png16")
    return root


def run_demo(output: Path, steps: int = 800, console: Console | None = None) -> dict[str, float]:
    """Run the demo into ``output``; returns the base and fine-tuned validation IoU."""
    console = console or Console()
    output = Path(output)
    console.rule("samtune demo")
    names = ", ".join(spec.name for spec in list_models())
    console.print(f"models samtune knows: {names}", highlight=False)

    console.rule("1. data")
    data = make_demo_data(output / "data")
    report = check(data)
    console.print(report.render(), highlight=False, markup=False)

    console.rule("2. fine-tune sam_tiny (random init) with box prompts")
    overrides = [f"data.train=[{{path: {data}}}]", f"output_dir={output / 'runs'}",
                 f"train.max_steps={steps}", *DEMO_OVERRIDES]
    config = build_run_config(None, overrides)
    run_dir = config.run_dir
    if (run_dir / "checkpoints").is_dir():
        import shutil

        shutil.rmtree(run_dir)  # the demo starts over each time
    result = train(config)
    base_iou = result.base_metrics.get("val/iou", float("nan"))
    tuned_iou = result.final_metrics.get("val/iou", float("nan"))

    console.rule("3. predict on validation images")
    panels = write_panels(config, result.best_checkpoint, output / "predictions")
    for path in panels:
        console.print(f"wrote {path}", highlight=False)

    console.rule("result")
    console.print(f"validation IoU: base {base_iou:.3f} -> fine-tuned {tuned_iou:.3f}", highlight=False)
    console.print(f"run folder: {run_dir} (config.yaml, checkpoints/, logs/)", highlight=False)
    return {"base_iou": base_iou, "tuned_iou": tuned_iou}


def write_panels(config, checkpoint: Path, out: Path, count: int = 4) -> list[Path]:
    """image | ground truth | base | fine-tuned, box-prompted, for the first validation images."""
    base = Predictor(load_model(config.model.name))
    tuned = Predictor(load_model(config.model.name, checkpoint=checkpoint))
    val = open_dataset(config.data, "val")
    written = []
    for i in range(min(count, len(val))):
        sample = val[i]
        boxes = sample.boxes()
        truth = sample.object_masks()
        row = [sample.image, overlay(sample.image, truth, 0.5, boxes=boxes)]
        for predictor in (base, tuned):
            predictor.set_image(sample.image)
            masks, scores, _ = predictor.predict(box=boxes, multimask_output=False)
            row.append(overlay(sample.image, masks[:, 0], 0.5, boxes=boxes))
        panel = side_by_side([np.kron(p, np.ones((2, 2, 1), dtype=np.uint8)) for p in row],
                             ["image", "ground truth", "base", "fine-tuned"])
        written.append(write_png(out / f"{Path(sample.path).stem}_comparison.png", panel))
    return written
