"""Tiled against whole-image automatic masks on a large generated image: memory, time, recall.

One generated image (``--size`` pixels a side, default 4096) holds ``--objects`` small
textured ellipses (radius 6-24 px, one per cell of a jittered grid, none touching) on a
textured background. Each case runs in its own process, so that its peak resident memory
is its own: the model is loaded and the image made, the kernel's peak counter is reset
(``/proc/self/clear_refs``), then ``AutomaticMaskGenerator.generate`` runs once with
``output_mode="coco_rle"``. Reported per case: seconds, peak RSS during ``generate`` and how
much it rose above the RSS before it, records, and recall: the share of objects matched by a
record with IoU >= 0.5, and their mean best IoU.

Cases: ``whole`` (the image shrunk to the model's input, as the official generators) and
``tiled`` (``--tile-shape`` / ``--halo``, micro-sam's convention, ``--points-per-side`` in
every tile; the whole image gets ``--whole-points-per-side``, the official 32 by default), plus ``tiled`` on a quarter of the image (the same object density) to show that
the peak does not grow with the image. ``--model oracle`` is not a model: a perfect local
segmenter (the decoder returns the pixels of the prompt's colour on a flat-coloured version
of the scene) that isolates what tiling and shrinking do, independent of weights.

    .venv/bin/python bench/tiling.py --model oracle --size 4096 --objects 400 --tile-shape 192 192 --halo 32 32
    .venv/bin/python bench/tiling.py --model litemedsam                      # real weights
    .venv/bin/python bench/tiling.py --model sam_tiny --size 2048 --objects 100

The tile plus its halo should be about the model's input (256 for LiteMedSAM and the oracle,
which runs on sam_tiny's): a 512 tile with a 64 halo is shrunk 2.5x, and objects of a few
pixels vanish from the low-res masks as they do from the whole image.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


def make_image(size: int, objects: int, seed: int, flat: bool) -> tuple[np.ndarray, np.ndarray]:
    """(image, label map): small ellipses one per cell of a jittered grid; ``flat`` gives each
    object its own uniform colour on black (for the oracle), else textures."""
    from samtune.data.synthetic import texture

    rng = np.random.default_rng(seed)
    per_side = int(np.ceil(np.sqrt(objects)))
    cell = size // per_side
    image = np.zeros((size, size, 3), np.uint8) if flat else texture(rng, (size, size))
    labels = np.zeros((size, size), np.int32)
    patch = None if flat else texture(rng, (64, 64))
    for i in range(objects):
        row, col = divmod(i, per_side)
        r = int(rng.integers(6, 25))
        cx = col * cell + int(rng.integers(r + 2, cell - r - 2))
        cy = row * cell + int(rng.integers(r + 2, cell - r - 2))
        axes = (r, max(4, int(r * rng.uniform(0.5, 1.0))))
        canvas = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
        cv2.ellipse(canvas, (r, r), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        ys, xs = np.nonzero(canvas)
        ys, xs = ys + cy - r, xs + cx - r
        labels[ys, xs] = i + 1
        if flat:
            image[ys, xs] = (40 + (i * 37) % 200, 40 + (i * 91) % 211, 40 + (i * 53) % 197)
        else:
            shift = rng.uniform(-90, 90, size=3)
            colour = np.clip(patch[ys % 64, xs % 64].astype(np.float32) + shift, 0, 255)
            image[ys, xs] = colour.astype(np.uint8)
    return image, labels


def oracle(model):
    """A perfect local segmenter on the sam_tiny adapter: features are the preprocessed image,
    and each point's mask is the pixels of its colour at the decoder's 4x coarser grid."""

    def encode(self, images):
        from samtune.models.adapter import Features

        return Features(images)

    def decode(self, features, prompts, multimask_output):
        out, ious = [], []
        for start in range(0, len(prompts), 16):
            rows = torch.arange(start, min(start + 16, len(prompts)))
            images = features.image_embed[prompts.image_index[rows]]
            xy = prompts.points[rows, 0].round().long().clamp(0, images.shape[-1] - 1)
            colour = images[torch.arange(len(rows)), :, xy[:, 1], xy[:, 0]]
            # (resampling blends an object's rim: a few grey levels of tolerance)
            same = ((images - colour[:, :, None, None]).abs().amax(dim=1) < 0.1).float()
            logits = (F.avg_pool2d(same[:, None], 4) - 0.5) * 40
            black = (colour - images[:, :, -1, -1]).abs().amax(dim=1) < 1e-3
            logits[black] = -20.0
            k = 3 if multimask_output else 1
            out.append(logits.expand(-1, k, -1, -1))
            ious.append(torch.full((len(rows), k), 0.95))
        return torch.cat(out), torch.cat(ious)

    model.encode = types.MethodType(encode, model)
    model.decode = types.MethodType(decode, model)
    return model


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def recall(records: list[dict], labels: np.ndarray, n: int) -> tuple[float, float]:
    """Share of the ``n`` objects with a record of IoU >= 0.5, and their mean best IoU; one
    decoded mask at a time (intersections from the label map's values under the mask)."""
    from samtune.infer.rle import decode_rle

    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    best = np.zeros(n)
    for r in records:
        x, y, w, h = (int(v) for v in r["bbox"])
        mask = decode_rle(r["segmentation"])[y : y + h + 1, x : x + w + 1]
        inter = np.bincount(labels[y : y + h + 1, x : x + w + 1][mask], minlength=n + 1)[1:]
        iou = inter / np.maximum(areas + int(mask.sum()) - inter, 1)
        best = np.maximum(best, iou)
    return float((best >= 0.5).mean()), float(best.mean())


def worker(args: argparse.Namespace) -> dict:
    from samtune import AutomaticMaskGenerator, load_model

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    flat = args.model == "oracle"
    model = oracle(load_model("sam_tiny")) if flat else load_model(args.model, checkpoint=args.checkpoint)
    image, labels = make_image(args.size, args.objects, args.seed, flat)
    per_side = args.points_per_side if args.case == "tiled" else args.whole_points_per_side
    options = dict(points_per_side=per_side, output_mode="coco_rle",
                   points_per_batch=args.points_per_batch, multimask_output=not args.single_mask)
    if args.pred_iou_thresh is not None:
        options["pred_iou_thresh"] = args.pred_iou_thresh
    if args.stability_score_thresh is not None:
        options["stability_score_thresh"] = args.stability_score_thresh
    if args.case == "tiled":
        options.update(tile_shape=tuple(args.tile_shape), halo=tuple(args.halo))
    generator = AutomaticMaskGenerator(model, **options)
    before = rss_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = time.perf_counter()
    records = generator.generate(image)
    seconds = time.perf_counter() - start
    peak = rss_mib("VmHWM")
    found, mean_iou = recall(records, labels, args.objects)
    return {"case": args.case, "size": args.size, "objects": args.objects, "seconds": round(seconds, 1),
            "rss_before_mib": round(before), "peak_rss_mib": round(peak),
            "peak_rise_mib": round(peak - before), "records": len(records),
            "recall_iou50": round(found, 3), "mean_best_iou": round(mean_iou, 3),
            "image_mib": round(image.nbytes / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--checkpoint", default="auto")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--tile-shape", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--halo", type=int, nargs=2, default=(64, 64))
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--whole-points-per-side", type=int, default=32,
                        help="points per side of the whole-image case (the official default)")
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--single-mask", action="store_true", help="one mask per point, not three")
    parser.add_argument("--pred-iou-thresh", type=float, default=None)
    parser.add_argument("--stability-score-thresh", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", choices=("whole", "tiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.checkpoint == "none" or args.model in ("oracle", "sam_tiny", "sam2_tiny", "mobile_sam_tiny"):
        args.checkpoint = None
    if args.case:
        print(json.dumps(worker(args)))
        return
    rows = []
    quarter = [("--size", str(args.size // 2)), ("--objects", str(args.objects // 4))]
    for case, extra in (("whole", []), ("tiled", []), ("tiled", quarter)):
        argv = [a for a in sys.argv[1:]]
        for flag, value in extra:
            argv += [flag, value]
        out = subprocess.run([sys.executable, __file__, *argv, "--case", case], check=True,
                             capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    whole, tiled = rows[0], rows[1]
    summary = {
        "model": args.model, "tile_shape": list(args.tile_shape), "halo": list(args.halo),
        "points_per_side_per_tile": args.points_per_side,
        "points_per_side_whole": args.whole_points_per_side, "single_mask": args.single_mask,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads, "rows": rows,
        "recall_ratio_tiled_over_whole": (round(tiled["recall_iou50"] / whole["recall_iou50"], 2)
                                          if whole["recall_iou50"] else None),
        "peak_rise_ratio_full_over_quarter_image": round(
            tiled["peak_rise_mib"] / max(rows[2]["peak_rise_mib"], 1), 2),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"tiling_{args.model}_{args.size}.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
