"""Image-encoder throughput: the official encoder against samtune's fast paths, side by side.

For each model, in one process on one device: the official encoder (eager, as the official
predictors run it) against the same weights with fused attention (``samtune.models.fast``), and
with fused attention plus ``torch.compile`` when ``--compile`` is given. Reports images/s, the
ratios, GFLOP per image (counted with ``torch.utils.flop_counter.FlopCounterMode`` on the
official encoder) and, with ``--peak-tflops``, the share of that peak the fastest path reaches.

A training block follows: forward + backward of the encoder (fused attention) with and without
gradient checkpointing, images/s and memory: peak allocated memory on CUDA; on CPU, which has no
peak counter, the bytes of activations kept for backward (tensors saved through autograd's
``saved_tensors_hooks``, plus the block inputs a checkpoint holds).

Prints a table and writes bench/results/encoder_<device>[_bf16].json.

    .venv/bin/python bench/encoder.py --threads 1 --compile            # CPU, tiny models
    .venv/bin/python bench/encoder.py --models mobile_sam,sam_vit_b --repeats 3 --threads 1
    .venv/bin/python bench/encoder.py --models sam_vit_b,sam_vit_h --device cuda \\
        --precision bf16 --batch 8 --compile --peak-tflops 753        # H100 dense bf16
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from common import activation_mib, device_name, images_per_s, precision_autocast
from torch.utils.flop_counter import FlopCounterMode

from samtune.files import write_json
from samtune import load_model
from samtune.models.fast import (
    compile_model,
    enable_fused_attention,
    enable_gradient_checkpointing,
    fused_attention_count,
)


def gflop_per_image(adapter, images: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        adapter.encode(images)
    return counter.get_total_flops() / images.shape[0] / 1e9


def inference_block(name: str, args, autocast) -> dict:
    official = load_model(name, device=args.device).eval()
    fused = copy.deepcopy(official)
    enable_fused_attention(fused)
    images = torch.randn(args.batch, 3, official.image_size, official.image_size, device=args.device)
    paths = {"official": official, "fused": fused}
    if args.compile:
        compiled = copy.deepcopy(fused)
        compile_model(compiled, mode=args.compile_mode)
        paths["fused+compile"] = compiled
    row = {"gflop_per_image": gflop_per_image(official, images),
           "attention_modules_fused": fused_attention_count(fused)}
    encoders = {}
    for label, adapter in paths.items():
        def encode(adapter=adapter):
            with torch.no_grad(), autocast():
                adapter.encode(images)

        encoders[label] = encode
    if args.compile:  # compilation happens on the first calls
        for _ in range(2):
            encoders["fused+compile"]()
    speeds = images_per_s(encoders, args.batch, args.repeats, args.warmup, args.device)
    for label, speed in speeds.items():
        row[f"{label}_images_per_s"] = speed
    base = row["official_images_per_s"]
    for label in paths:
        if label != "official":
            row[f"{label}_vs_official"] = row[f"{label}_images_per_s"] / base
    if args.peak_tflops:
        for label in paths:
            achieved = row["gflop_per_image"] * row[f"{label}_images_per_s"] / 1e3  # TFLOP/s
            row[f"{label}_share_of_peak"] = achieved / args.peak_tflops
    return row


def training_block(name: str, args, autocast) -> dict:
    """Encoder forward + backward (all encoder parameters trained), fused attention, with and
    without gradient checkpointing."""
    plain = load_model(name, device=args.device)
    enable_fused_attention(plain)
    plain.train().requires_grad_(True)
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed)
    images = torch.randn(args.batch, 3, plain.image_size, plain.image_size, device=args.device)
    adapters = {"plain": plain, "checkpointed": checkpointed}
    forwards, steps = {}, {}
    for label, adapter in adapters.items():
        def forward(adapter=adapter):
            with autocast():
                return adapter.encode(images).image_embed.float().square().mean()

        def step(adapter=adapter, forward=forward):
            adapter.zero_grad(set_to_none=True)
            forward().backward()

        forwards[label], steps[label] = forward, step
    speeds = images_per_s(steps, args.batch, args.train_repeats, 1, args.device)
    out = {}
    for label, adapter in adapters.items():
        row = {"images_per_s": speeds[label]}
        if args.device.startswith("cuda"):
            adapter.zero_grad(set_to_none=True)
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            steps[label]()
            torch.cuda.synchronize()
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            row["peak_above_weights_gib"] = (torch.cuda.max_memory_allocated() - before) / 2**30
        else:
            row["activation_mib"] = activation_mib(adapter, forwards[label])
        out[label] = row
    memory = "peak_above_weights_gib" if args.device.startswith("cuda") else "activation_mib"
    out["checkpointed_memory_vs_plain"] = out["checkpointed"][memory] / out["plain"][memory]
    out["checkpointed_speed_vs_plain"] = out["checkpointed"]["images_per_s"] / out["plain"]["images_per_s"]
    return out


def print_tables(record: dict) -> None:
    results, compiled = record["results"], record["compile"]
    print(f"\nimage encoder, batch {record['batch']}, {record['precision']}, {record['device']} "
          f"({record['device_name']}, {record['threads']} threads), torch {record['torch']}")
    head = f"{'model':16s} {'GFLOP/img':>10s} {'official img/s':>15s} {'fused img/s':>12s} {'fused/off':>10s}"
    if compiled:
        head += f" {'compiled img/s':>15s} {'comp/off':>9s}"
    if record["peak_tflops"]:
        head += f" {'best % peak':>12s}"
    print(head)
    for name, r in results.items():
        i = r["inference"]
        line = (f"{name:16s} {i['gflop_per_image']:10.1f} {i['official_images_per_s']:15.3f} "
                f"{i['fused_images_per_s']:12.3f} {i['fused_vs_official']:9.2f}x")
        if compiled:
            line += f" {i['fused+compile_images_per_s']:15.3f} {i['fused+compile_vs_official']:8.2f}x"
        if record["peak_tflops"]:
            best = max(v for k, v in i.items() if k.endswith("_share_of_peak"))
            line += f" {100 * best:11.1f}%"
        print(line)
    trained = {n: r["train"] for n, r in results.items() if "train" in r}
    if not trained:
        return
    unit = "peak GiB" if record["device"].startswith("cuda") else "act. MiB"
    key = "peak_above_weights_gib" if record["device"].startswith("cuda") else "activation_mib"
    print(f"\nencoder forward+backward (fused attention), memory = "
          f"{'peak allocated above weights' if unit == 'peak GiB' else 'activations kept for backward'}")
    print(f"{'model':16s} {'img/s':>8s} {unit:>10s} {'ckpt img/s':>11s} {'ckpt ' + unit:>14s} "
          f"{'memory':>8s} {'speed':>7s}")
    for name, t in trained.items():
        p, c = t["plain"], t["checkpointed"]
        print(f"{name:16s} {p['images_per_s']:8.3f} {p[key]:10.1f} {c['images_per_s']:11.3f} "
              f"{c[key]:14.1f} {t['checkpointed_memory_vs_plain']:7.2f}x "
              f"{t['checkpointed_speed_vs_plain']:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sam_tiny,mobile_sam_tiny,sam2_tiny",
                        help="comma-separated names from `samtune models`")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="also time fused attention + torch.compile")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--no-train", action="store_true", help="skip the forward+backward block")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak at this precision (H100 SXM dense bf16: 753)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (torch.set_num_threads); 1 gives steady figures on a "
                             "machine other jobs share, where spinning OpenMP threads wait on each other")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    autocast = precision_autocast(args.device, args.precision)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    record = {"device": args.device, "device_name": device_name(args.device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "batch": args.batch, "precision": args.precision,
              "compile": args.compile, "compile_mode": args.compile_mode, "repeats": args.repeats,
              "peak_tflops": args.peak_tflops, "results": {}}
    for name in args.models.split(","):
        print(f"{name} ...", flush=True)
        row = {"inference": inference_block(name, args, autocast)}
        if not args.no_train:
            row["train"] = training_block(name, args, autocast)
        record["results"][name] = row
    print_tables(record)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.precision == "fp32" else f"_{args.precision}"
    path = args.out / f"encoder_{args.device.split(':')[0]}{suffix}.json"
    write_json(path, record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
