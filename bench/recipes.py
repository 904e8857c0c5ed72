"""Fine-tuning recipes on real weights: held-out quality gained per minute of training.

LiteMedSAM from its bundled checkpoint, on the demo's generated dataset (train / val / test
folders; the test images are seen by no run). Each recipe trains the same number of steps with
the same batch size, learning rate and schedule through ``samtune train``'s own code, once per
prompt mix (box, points, both), and is then scored on the test images with box and one-point
prompts as ``samtune eval`` scores them:

- ``decoder``: the mask decoder on cached image embeddings (encoder and prompt encoder frozen);
- ``lora``: LoRA (rank 8) in the image encoder, the mask decoder trained too;
- ``full``: every weight, with encoder gradient checkpointing, the image encoder at lr 3e-5;
- ``seed_loop``: what the fine-tuning scripts users copy today do: per image, run the frozen
  encoder, then per object the prompt encoder, the decoder and the loss (``reference_step`` of
  ``bench/train_step.py``), same data, prompts, loss, optimizer, schedule and steps as
  ``decoder``.

Every run happens in its own child process, so its peak memory (RSS on the CPU, allocated
memory on a GPU) is its own, and its wall time includes everything it does before its first
step (loading, filling its own embedding cache). The table reports held-out IoU per prompt,
the gain over the base per minute of training, and memory;
``bench/results/recipes_<device>.json`` and ``.md`` keep it.

    .venv/bin/python bench/recipes.py                                  # CPU, the README's table
    .venv/bin/python bench/recipes.py --device cuda --steps 400 --train 200
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

RECIPES = {
    "decoder": ["model.freeze=[image_encoder, prompt_encoder]"],
    "lora": ["model.freeze=[image_encoder, prompt_encoder]",
             "model.lora={targets: [image_encoder], rank: 8, alpha: 16}"],
    # The image encoder at lr 3e-5 (a tenth of the README run's lr): at the shared lr a full fine-tune on a few
    # images forgets boxes (measured: box IoU 0.74 -> 0.49 after 30 click steps).
    "full": ["model.freeze=[]", "train.gradient_checkpointing=true",
             "train.optimizer.group_lr={image_encoder: 0.00003}"],
    "seed_loop": ["model.freeze=[image_encoder, prompt_encoder]", "train.cache_embeddings=off"],
}
#: Every recipe's loss: Dice + BCE + the IoU head's MSE, the loss LiteMedSAM's authors trained
#: it with. (SAM's focal x20 + Dice first drives a click's mask to empty, the base model's
#: answer, before Dice pulls it out: measured on one batch, 20 steps before the IoU rose.)
LOSS = "train.loss.weights={dice: 1.0, bce: 1.0, iou_head: 1.0}"
PROMPT_MIXES = {"box": "{box: 1.0}", "points": "{points: 1.0}", "mixed": "{box: 0.5, points: 0.5}"}
SCORED_MODES = ("box", "point")


def make_data(root: Path, counts: dict[str, int], seed: int) -> Path:
    from samtune.demo import demo_scenes
    from samtune.data.synthetic import write_folder, write_splits

    if not (root / "train").is_dir():
        write_splits(write_folder, root, demo_scenes(counts, seed), masks="label_png16")
    return root


def run_config(data: Path, out: Path, name: str, recipe: str, prompts: str, args):
    from samtune.config import build_run_config

    return build_run_config(None, [
        f"data.train=[{{path: {data}}}]", f"output_dir={out}", f"name={name}", f"seed={args.seed}",
        "model.name=litemedsam", "model.checkpoint=auto", f"prompts.mix={PROMPT_MIXES[prompts]}",
        f"train.batch_size={args.batch}", f"train.max_steps={args.steps}",
        f"train.val_every_n_steps={args.steps}", "train.validate_before_training=false",
        f"train.optimizer.lr={args.lr}", "train.schedule.warmup_steps=10",
        "train.progress_bar=false", f"train.accelerator={args.device}", "train.devices=1",
        LOSS, *RECIPES[recipe],
    ])


def held_out_iou(model, data: Path, device: str) -> dict[str, float]:
    """Mean mask IoU on the test images per scored mode, as ``samtune eval`` scores it."""
    from samtune.infer.evaluate import EvalSettings, evaluate_models, resolve_data
    from samtune.infer.scoring import summarize

    test, _, _ = resolve_data(str(data), "test")
    results, _ = evaluate_models({"m": model.to(device)}, test, EvalSettings(modes=SCORED_MODES),
                                 progress=False)
    return {mode: summarize(results["m"][mode])["mask"]["iou"] for mode in SCORED_MODES}


def seed_loop_train(config, device: str):
    """The per-image, per-object loop on samtune's batches, optimizer and schedule."""
    from train_step import reference_step

    from samtune.data.batch import Collator
    from samtune.data.datamodule import SamDataModule
    from samtune.data.mixing import open_dataset
    from samtune.train.module import FineTuneModule

    module = FineTuneModule(config).to(device).train()
    data = SamDataModule(open_dataset(config.data, "train"), Collator.for_model(module.adapter),
                         prompts=config.prompts, augment=config.augment,
                         batch_size=config.train.batch_size, seed=config.seed)
    configured = module.optimizer_and_schedule(config.train.max_steps)
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    step, epoch = 0, 0
    while step < config.train.max_steps:
        data.train_sampler.set_epoch(epoch)  # new order and prompts each epoch, as Lightning's
        epoch += 1
        for batch in data.train_dataloader():
            reference_step(module, batch.to(device), optimizer)
            scheduler.step()
            step += 1
            if step == config.train.max_steps:
                break
    return module.adapter.eval()


def child(recipe: str, prompts: str, args, data: Path, out: Path, queue) -> None:
    """One recipe in its own process: train, time it, score it on the held-out images."""
    import os

    # its own SAMTUNE_HOME: the cached recipe pays for filling its embedding cache, as a first
    # run on new data does (a later run on the same data reuses it)
    os.environ["SAMTUNE_HOME"] = str(out / f"home-{recipe}-{prompts}")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    from samtune import load_model
    from samtune.train.run import train

    config = run_config(data, out, f"{recipe}-{prompts}", recipe, prompts, args)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if recipe == "seed_loop":
        model = seed_loop_train(config, args.device)
    else:
        train(config)
        model = load_model(config.run_dir / "checkpoints" / "last.ckpt")
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    queue.put({"recipe": recipe, "prompts": prompts, "train_s": seconds, "peak_gib": peak,
               "iou": held_out_iou(model, data, args.device)})


def base_child(args, data: Path, queue) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    from samtune import load_model

    queue.put({"recipe": "base", "iou": held_out_iou(load_model("litemedsam", "auto"), data,
                                                     args.device)})


def in_child(target, *target_args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*target_args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def table(base: dict, rows: list[dict], device: str) -> str:
    lines = [f"| recipe | trained with | box IoU | point IoU | train time | gain per minute (box, point) | peak memory ({'GPU' if device.startswith('cuda') else 'RSS'}) |",
             "| --- | --- | --- | --- | --- | --- | --- |",
             f"| base (no training) | - | {base['iou']['box']:.3f} | {base['iou']['point']:.3f} | - | - | - |"]
    for r in rows:
        minutes = r["train_s"] / 60
        gains = [(r["iou"][m] - base["iou"][m]) / minutes for m in SCORED_MODES]
        lines.append(f"| {r['recipe']} | {r['prompts']} | {r['iou']['box']:.3f} | {r['iou']['point']:.3f} "
                     f"| {r['train_s']:.0f} s | {gains[0]:+.3f}, {gains[1]:+.3f} /min | {r['peak_gib']:.2f} GiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--prompts", default=",".join(PROMPT_MIXES))
    parser.add_argument("--train", type=int, default=24, help="training images")
    parser.add_argument("--test", type=int, default=16, help="held-out test images")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp / "data", {"train": args.train, "val": 4, "test": args.test}, args.seed)
        base = in_child(base_child, args, data)
        print(f"base: {base['iou']}", flush=True)
        rows = []
        for recipe in args.recipes.split(","):
            for prompts in args.prompts.split(","):
                row = in_child(child, recipe, prompts, args, data, tmp / "runs")
                print(f"{recipe:10s} {prompts:7s} box {row['iou']['box']:.3f} point "
                      f"{row['iou']['point']:.3f} {row['train_s']:7.1f} s {row['peak_gib']:.2f} GiB",
                      flush=True)
                rows.append(row)
    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else platform.processor() or "cpu")
    header = (f"litemedsam, {args.train} training / {args.test} held-out images, {args.steps} steps "
              f"of {args.batch} images, lr {args.lr}, seed {args.seed}, {args.device} ({device_name}), "
              f"torch {torch.__version__}")
    text = header + "\n\n" + table(base, rows, args.device)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"recipes_{args.device.split(':')[0]}"
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(json.dumps(
        {"settings": vars(args) | {"out": str(args.out)}, "device_name": device_name,
         "base": base, "runs": rows}, indent=2) + "\n")
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
