"""Automatic mask generation: samtune's generator against the official one, side by side.

Both run in one process on the same module (``model.model``), the same image and the same
parameters: ``segment_anything``'s ``SamAutomaticMaskGenerator`` for SAM/MedSAM, MobileSAM's
copy for MobileSAM, ``SAM2AutomaticMaskGenerator`` for SAM 2. Prints seconds per image for
both, the speed ratio, and how well the masks agree (the fraction of official masks that
samtune reproduces with IoU >= 0.95, and the mean IoU of each official mask with its best
samtune match); writes bench/results/amg_<model>_<device>.json.

Two settings run, each side by side:

- ``low thresholds``: random-init models score their masks poorly (predicted IoU near 0,
  stability near 0) and their masks are scattered over the whole image, so every box is the
  image and box NMS keeps one. Here the score filters are off (``--pred-iou-thresh 0
  --stability-score-thresh 0``) and box NMS too (``--box-nms-thresh 1.0``): every candidate
  with IoU > 0 is kept, hundreds of distinct masks, and the agreement covers all of them.
- ``official defaults``: the family's default thresholds (with the same points and crops);
  with random weights few or no masks survive, so this times the pipeline itself.

    .venv/bin/python bench/amg.py                                   # sam_tiny, CPU
    .venv/bin/python bench/amg.py --model mobile_sam --image-size 480 640
    .venv/bin/python bench/amg.py --model sam_vit_h --device cuda --points-per-side 32
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from samtune import AutomaticMaskGenerator, load_model
from samtune.data.synthetic import make_scene
from samtune.infer.rle import encode_coco_rles


def official_generator(model, **kwargs):
    """The family's official generator around the same module."""
    if model.family == "sam":
        from segment_anything import SamAutomaticMaskGenerator as Generator
    elif model.family == "mobile_sam":
        from mobile_sam import SamAutomaticMaskGenerator as Generator
    else:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Generator
    generator = Generator(model.model, **kwargs)
    if model.family == "sam2":  # the official predictor assumes a 1024 input's feature sizes
        generator.predictor._bb_feat_sizes = model.feature_sizes
    return generator


def timed(generator, image: np.ndarray, repeats: int, device: str) -> tuple[list[dict], dict]:
    """Records of the last run and {s_per_image, masks, peak_gib}, after one warm-up run."""
    records = generator.generate(image)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        records = generator.generate(image)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return records, {"s_per_image": seconds, "masks": len(records), "peak_gib": peak}


def agreement(official: list[dict], ours: list[dict], threshold: float = 0.95) -> dict:
    """For each official mask its best IoU with a samtune mask: the fraction at or above
    ``threshold`` and the mean."""
    if not official:
        return {"matched_fraction": 1.0 if not ours else 0.0, "mean_matched_iou": None}
    if not ours:
        return {"matched_fraction": 0.0, "mean_matched_iou": 0.0}
    rles = [encode_coco_rles(np.stack([r["segmentation"] for r in records]))
            for records in (official, ours)]
    for group in rles:
        for rle in group:
            rle["counts"] = rle["counts"].encode("ascii")
    best = np.asarray(mask_utils.iou(rles[0], rles[1], [0] * len(rles[1]))).max(axis=1)
    return {"matched_fraction": float((best >= threshold).mean()), "mean_matched_iou": float(best.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam_tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.0)
    parser.add_argument("--stability-score-thresh", type=float, default=0.0)
    parser.add_argument("--box-nms-thresh", type=float, default=1.0)
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--min-mask-region-area", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = load_model(args.model, device=args.device).eval()
    image = make_scene(args.seed, size=tuple(args.image_size), n_objects=(6, 10)).image
    common = {"points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch,
              "crop_n_layers": args.crop_n_layers, "min_mask_region_area": args.min_mask_region_area}
    settings = {
        "low thresholds": {**common, "pred_iou_thresh": args.pred_iou_thresh,
                           "stability_score_thresh": args.stability_score_thresh,
                           "box_nms_thresh": args.box_nms_thresh},
        "official defaults": common,
    }
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"\nautomatic masks, {args.model}, image {args.image_size[0]}x{args.image_size[1]}, "
          f"{args.device} ({device_name}), {args.repeats} repeats, {torch.get_num_threads()} threads")
    results = {}
    for label, params in settings.items():
        ours, ours_time = timed(AutomaticMaskGenerator(model, **params), image, args.repeats, args.device)
        official, official_time = timed(official_generator(model, **params), image, args.repeats,
                                        args.device)
        results[label] = {"parameters": params, "official": official_time, "samtune": ours_time,
                          "speed_ratio": official_time["s_per_image"] / ours_time["s_per_image"],
                          "agreement": agreement(official, ours)}
        print_setting(label, results[label])

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "device": args.device, "device_name": device_name,
              "image_size": list(args.image_size), "repeats": args.repeats,
              "threads": torch.get_num_threads(), "results": results}
    path = args.out / f"amg_{args.model}_{args.device.split(':')[0]}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


def print_setting(label: str, result: dict) -> None:
    print(f"\n{label}: " + ", ".join(f"{k}={v}" for k, v in result["parameters"].items()))
    print(f"  {'generator':10s} {'s/image':>9s} {'masks':>6s} {'peak GiB':>9s}")
    for name in ("official", "samtune"):
        r = result[name]
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"  {name:10s} {r['s_per_image']:9.3f} {r['masks']:6d} {peak:>9s}")
    agree = result["agreement"]
    mean_iou = "-" if agree["mean_matched_iou"] is None else f"{agree['mean_matched_iou']:.4f}"
    print(f"  samtune/official speed: {result['speed_ratio']:.2f}x; official masks matched with "
          f"IoU >= 0.95: {agree['matched_fraction']:.1%}; mean best IoU {mean_iou}")


if __name__ == "__main__":
    main()
