"""One table per device, in one run: samtune against the official code, side by side.

Three blocks, each timed in this one process on one device:

- **encoder**: per family, the official encoder (eager, as the official predictors run it)
  against samtune's (fused attention, plus ``torch.compile`` with ``--compile``); images/s,
  GFLOP per image and the share of the device's matmul rate measured here at the same
  precision (``bench/encoder.py`` has the options);
- **training step**: decoder only on cached embeddings, LoRA on the encoder, and the full
  fine-tune, each against the official code's step with the same model, batch, loss,
  optimizer and precision (``bench/train_step.py``: ``official_loss``, ``compare_setup``);
  images/s and peak memory (on CPU, which has no peak counter, the activations kept for
  backward);
- **automatic masks**: seconds per image against the official generator on the same weights
  and image, and the fraction of official masks samtune reproduces at IoU >= 0.95
  (``bench/amg.py``), with all candidates kept (``low thresholds``) and with the family's
  default thresholds.

Random-init weights throughout: speed does not depend on the values, and the agreement block
keeps every candidate so it compares hundreds of masks. A block that fails prints its error
and the run goes on. Writes bench/results/table_<device>.json and .md.

    .venv/bin/python bench/table.py --threads 1                       # CPU: tiny models, ratios
    .venv/bin/python bench/table.py --device cuda --precision bf16 --compile   # one GPU
"""

from __future__ import annotations

import argparse
import traceback
from pathlib import Path

import amg
import encoder
import torch
import train_step
from common import device_name, matmul_peak_tflops, precision_autocast

from samtune import AutomaticMaskGenerator, load_model
from samtune.data.synthetic import make_scene
from samtune.files import write_json, write_text

#: per device kind: models and sizes. CPU runs use the tiny variants and report ratios.
DEFAULTS = {
    "cpu": {"encoders": "sam_tiny,mobile_sam_tiny,sam2_tiny", "encoder_batch": 1,
            "train_model": "sam_tiny", "train_batch": 4, "cached_batch": 16,
            "amg_model": "sam_tiny", "points_per_side": 16},
    "cuda": {"encoders": "sam_vit_b,sam_vit_h,sam2.1_hiera_l,mobile_sam", "encoder_batch": 8,
             "train_model": "sam_vit_b", "train_batch": 4, "cached_batch": 64,
             "amg_model": "sam_vit_b", "points_per_side": 32},
}


def guarded(label: str, fn):
    """Run one block; a failure becomes ``{"error": ...}`` in the table instead of ending the run."""
    print(f"{label} ...", flush=True)
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - a bench on unseen hardware reports and goes on
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"}


def encoder_rows(args, peak: float) -> dict:
    settings = argparse.Namespace(device=args.device, batch=args.encoder_batch, compile=args.compile,
                                  compile_mode=args.compile_mode, repeats=args.repeats, warmup=args.warmup,
                                  peak_tflops=peak)
    autocast = precision_autocast(args.device, args.precision)
    return {name: guarded(f"encoder {name}", lambda name=name: encoder.inference_block(name, settings, autocast))
            for name in args.encoders.split(",")}


#: short names for ``--setups``
SETUP_NAMES = dict(zip(("cached", "lora", "full"), train_step.SETUPS, strict=True))


def train_rows(args) -> dict:
    rows = {}
    for setup in (SETUP_NAMES[name] for name in args.setups.split(",")):
        images = args.cached_batch if setup.endswith("cached embeddings") else args.train_batch
        rows[setup] = guarded(f"training step, {setup}", lambda setup=setup, images=images: train_step.compare_setup(
            setup, args.train_model, args.device, images, args.objects, (480, 640), args.precision,
            args.train_repeats, args.warmup, compile=args.compile))
    return rows


def amg_rows(args) -> dict:
    def run() -> dict:
        torch.manual_seed(0)
        model = load_model(args.amg_model, device=args.device).eval()
        image = make_scene(0, size=(480, 640), n_objects=(6, 10)).image
        common = {"points_per_side": args.points_per_side, "points_per_batch": 64}
        settings = {"low thresholds": {**common, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                                       "box_nms_thresh": 1.0},
                    "official defaults": common}
        out = {}
        for label, params in settings.items():
            ours, ours_time = amg.timed(AutomaticMaskGenerator(model, **params), image, args.amg_repeats,
                                        args.device)
            official, official_time = amg.timed(amg.official_generator(model, **params), image,
                                                args.amg_repeats, args.device)
            out[label] = {"parameters": params, "official": official_time, "samtune": ours_time,
                          "speed_ratio": official_time["s_per_image"] / ours_time["s_per_image"],
                          "agreement": amg.agreement(official, ours)}
        return out

    return guarded(f"automatic masks {args.amg_model}", run)


def encoder_table(record: dict) -> list[str]:
    compiled = ", samtune compiled" if record["compile"] else ""
    ours = "fused+compile" if record["compile"] else "fused"
    lines = [f"**Encoder**, batch {record['encoder_batch']}{compiled}:", "",
             ("| model | GFLOP/img | official img/s | samtune img/s | samtune / official | "
              "official % of peak | samtune % of peak |"), "|---|---|---|---|---|---|---|"]
    for name, row in record["encoder"].items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | | | |")
            continue
        lines.append(
            f"| {name} | {row['gflop_per_image']:.1f} | {row['official_images_per_s']:.2f} | "
            f"{row[f'{ours}_images_per_s']:.2f} | {row[f'{ours}_vs_official']:.2f}x | "
            f"{100 * row['official_share_of_peak']:.1f}% | {100 * row[f'{ours}_share_of_peak']:.1f}% |")
    return lines


def train_table(record: dict) -> list[str]:
    cuda = record["device"].startswith("cuda")
    memory = "peak GiB" if cuda else "activations MiB"
    memory_key = "peak_gib" if cuda else "activation_mib"
    lines = [(f"**Training step**, {record['train_model']}, {record['objects']} box-prompted objects "
              "per image, AdamW, same loss both sides:"), "",
             (f"| setup | images | official img/s | samtune img/s | speed | official {memory} | "
              f"samtune {memory} | memory | samtune options |"), "|---|---|---|---|---|---|---|---|---|"]
    for setup, row in record["train"].items():
        if "error" in row:
            lines.append(f"| {setup} | failed: {row['error']} | | | | | | | |")
            continue
        options = ", ".join(o.removeprefix("train.") for o in row["samtune_options"]) or "defaults"
        lines.append(
            f"| {setup} | {row['images']} | {row['official']['images_per_s']:.3f} | "
            f"{row['samtune']['images_per_s']:.3f} | {row['speed_ratio']:.2f}x | "
            f"{row['official'][memory_key]:.2f} | {row['samtune'][memory_key]:.2f} | "
            f"{row['memory_ratio']:.2f}x | {options} |")
    return lines


def amg_table(record: dict) -> list[str]:
    generator, points = record["amg"], record["points_per_side"]
    lines = [f"**Automatic masks**, {record['amg_model']}, {points}x{points} points, 480x640 image:", ""]
    if "error" in generator:
        return [*lines, f"failed: {generator['error']}"]
    lines += [("| setting | official s/image | samtune s/image | speed | masks (official / samtune) | "
               "official masks matched at IoU >= 0.95 |"), "|---|---|---|---|---|---|"]
    for label, row in generator.items():
        matched = (f"{100 * row['agreement']['matched_fraction']:.1f}%" if row["official"]["masks"]
                   else "- (none kept: random weights score below the defaults)")
        lines.append(
            f"| {label} | {row['official']['s_per_image']:.3f} | {row['samtune']['s_per_image']:.3f} | "
            f"{row['speed_ratio']:.2f}x | {row['official']['masks']} / {row['samtune']['masks']} | "
            f"{matched} |")
    return lines


def markdown(record: dict) -> str:
    """The blocks the run measured as Markdown tables, under a line naming the device."""
    lines = [(f"Device: {record['device_name']} ({record['device']}), {record['precision']}, torch "
              f"{record['torch']}, {record['threads']} CPU threads; measured matmul peak at this "
              f"precision {record['peak_tflops']:.1f} TFLOP/s.")]
    for block, table in (("encoder", encoder_table), ("train", train_table), ("amg", amg_table)):
        if block in record:
            lines += ["", *table(record)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="samtune's side also uses torch.compile")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--encoders", help="comma-separated models for the encoder block")
    parser.add_argument("--encoder-batch", type=int)
    parser.add_argument("--train-model")
    parser.add_argument("--train-batch", type=int, help="images per LoRA and full fine-tune step")
    parser.add_argument("--cached-batch", type=int, help="images per decoder-only step")
    parser.add_argument("--objects", type=int, default=4, help="objects per image in training steps")
    parser.add_argument("--amg-model")
    parser.add_argument("--points-per-side", type=int)
    parser.add_argument("--blocks", default="encoder,train,amg", help="which blocks to run")
    parser.add_argument("--setups", default="cached,lora,full", help="training setups: cached, lora, full")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train-repeats", type=int, default=5)
    parser.add_argument("--amg-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    for key, value in DEFAULTS["cuda" if args.device.startswith("cuda") else "cpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)

    peak_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak_tflops(args.device, peak_dtype)
    record = {"device": args.device, "device_name": device_name(args.device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "precision": args.precision, "compile": args.compile,
              "peak_tflops": peak, "encoder_batch": args.encoder_batch, "train_model": args.train_model,
              "objects": args.objects, "amg_model": args.amg_model, "points_per_side": args.points_per_side}
    blocks = {"encoder": lambda: encoder_rows(args, peak), "train": lambda: train_rows(args),
              "amg": lambda: amg_rows(args)}
    for name in args.blocks.split(","):
        record[name] = blocks[name]()
    table = markdown(record)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"table_{args.device.split(':')[0]}" + ("" if args.precision == "fp32" else f"_{args.precision}")
    write_json(args.out / f"{stem}.json", record)
    write_text(args.out / f"{stem}.md", table)
    print(f"wrote {args.out / stem}.json and .md")


if __name__ == "__main__":
    main()
