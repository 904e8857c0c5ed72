"""Does the class head learn the data's categories?

LiteMedSAM from its bundled checkpoint, on generated COCO data whose objects are rings,
ellipses, rectangles and cables, each filled with a random texture (so only the shape tells
the class). Per seed, a run trains the mask decoder on cached embeddings with
``model.class_head: true`` (the head sends no gradient into the decoder, so the masks are the
ones the same run without a head trains: ``tests/train/test_class_head.py``), and is scored on
the test images, which no run sees, as ``samtune eval`` scores them:

- box and one-point masks: IoU, and the head's category accuracy against the majority class of
  the training objects (chance), with the recall per category;
- automatic masks (a 16 x 16 point grid): COCO mask AP class-agnostic and class-aware with the
  head's labels.

``bench/results/classes_<device>.json`` keeps the table.

    .venv/bin/python bench/classes.py                   # CPU, the README's figures
    .venv/bin/python bench/classes.py --seeds 0 1 2 --steps 300
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

KINDS = ("ring", "ellipse", "rectangle", "cable")
MODES = ("box", "point", "auto")
#: lower than the official filters: LiteMedSAM is a box model, and its one-point masks
#: score below SAM's 0.88 predicted IoU
AMG = {"points_per_side": 16, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}


def make_data(root: Path, counts: dict[str, int], seed: int) -> Path:
    from samtune.data.synthetic import make_splits, write_coco

    splits = make_splits(counts, seed=1000 * seed + 7, size=(192, 256), n_objects=(2, 4),
                         kinds=KINDS, min_area=30)
    for split, scenes in splits.items():
        write_coco(root / split, scenes, "_annotations.coco.json", image_ext=".png")
    return root


def config(data: Path, out: Path, name: str, seed: int, args, class_head: bool = True):
    from samtune.config import build_run_config

    return build_run_config(None, [
        f"data.train=[{{path: {data}}}]",  # train/ val/ test/ folders, each a COCO file
        f"output_dir={out}", f"name={name}", f"seed={seed}",
        "model.name=litemedsam", "model.checkpoint=auto", f"model.class_head={str(class_head).lower()}",
        "prompts.mix={box: 0.5, points: 0.5}", f"train.batch_size={args.batch}",
        f"train.max_steps={args.steps}", f"train.val_every_n_steps={args.steps}",
        "train.validate_before_training=false", f"train.optimizer.lr={args.lr}",
        "train.schedule.warmup_steps=10", "train.progress_bar=false",
        "train.loss.weights={dice: 1.0, bce: 1.0, iou_head: 1.0}",
    ])


def score(model, data: Path) -> dict:
    """What ``samtune eval`` reports for the test images: IoU per prompted mode, the class
    head's accuracy, automatic AP class-agnostic and (with a head) class-aware."""
    from samtune.data.source import category_names
    from samtune.infer.evaluate import EvalSettings, evaluate_models, metrics_document, resolve_data

    test, _, _ = resolve_data(str(data), "test")
    settings = EvalSettings(modes=MODES, amg=AMG)
    results, truth = evaluate_models({"tuned": model}, test, settings, progress=False)
    doc = metrics_document(results, truth, settings, {}, category_names(test))["models"]["tuned"]
    out = {f"{m}_iou": doc[m]["mask"]["iou"] for m in ("box", "point")}
    out["auto_AP"] = doc["auto"]["coco"]["AP"]
    if "coco_classes" in doc["auto"]:
        out.update({f"{m}_class_accuracy": doc[m]["class_accuracy"] for m in ("box", "point")})
        out["auto_class_AP"] = doc["auto"]["coco_classes"]["all"]["AP"]
        out["auto_class_AP50"] = doc["auto"]["coco_classes"]["all"]["AP50"]
        out["per_category_recall_box"] = {e["name"]: e["class_recall"]
                                          for e in doc["box"]["per_category"].values()}
    return out


def chance(data: Path) -> float:
    """Accuracy of always answering the training data's most frequent category."""
    def counts(split):
        ann = json.loads((data / split / "_annotations.coco.json").read_text())["annotations"]
        return Counter(a["category_id"] for a in ann)

    majority = counts("train").most_common(1)[0][0]
    test = counts("test")
    return test[majority] / sum(test.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--test", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    from samtune import load_model
    from samtune.train.run import train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in args.seeds:
            data = make_data(tmp / f"data-{seed}", {"train": args.train, "val": 4, "test": args.test}, seed)
            row = {"seed": seed, "chance_accuracy": chance(data)}
            start = time.perf_counter()
            result = train(config(data, tmp / "runs", f"head-{seed}", seed, args, True))
            row["train_s"] = round(time.perf_counter() - start, 1)
            row["val_class_accuracy"] = result.final_metrics.get("val/class_accuracy")
            row.update(score(load_model(tmp / "runs" / f"head-{seed}" / "checkpoints" / "last.ckpt"), data))
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {"bench": "classes", "device": "cpu", "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "settings": {**vars(args), "out": None, "kinds": KINDS, "amg": AMG}, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "classes_cpu.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    for h in rows:
        print(f"seed {h['seed']}: class accuracy box {h['box_class_accuracy']:.3f} point "
              f"{h['point_class_accuracy']:.3f} (chance {h['chance_accuracy']:.3f}); box IoU "
              f"{h['box_iou']:.3f}, point {h['point_iou']:.3f}; auto AP {h['auto_AP']:.3f}, "
              f"class-aware {h['auto_class_AP']:.3f}; trained in {h['train_s']} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
