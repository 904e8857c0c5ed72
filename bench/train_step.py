"""Training-step throughput: samtune's step against the reference projects' loop, side by side.

The reference loop is what R2 and R4 do: for each image, run the (frozen) image encoder, then
for each object call the prompt encoder and the official mask decoder on its own, compute the
loss, and step. samtune's step encodes the batch once, decodes every object of every image in
one call per prompt shape, and with the embedding cache skips the encoder entirely.

Same model, same data, same loss, same device, one process. Prints images/s, the ratios and
peak memory, and writes bench/results/train_step-<device>.json.

    .venv/bin/python bench/train_step.py                       # CPU: sam_tiny, ratios
    .venv/bin/python bench/train_step.py --model sam_vit_b --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from samtune.config import build_run_config
from samtune.data.batch import Collator, Item
from samtune.data.prompts import ObjectPrompt, parse_prompt_kind
from samtune.data.sample import Sample
from samtune.data.synthetic import make_scenes
from samtune.train.cache import EmbeddingCache, model_key, preprocess_key
from samtune.train.module import FineTuneModule

BOX = parse_prompt_kind("box", "bench")


def make_batch(module: FineTuneModule, images: int, objects: int, size: tuple[int, int], seed: int):
    """A Batch of ``images`` generated scenes with exactly ``objects`` box-prompted objects each."""
    items = []
    for i, scene in enumerate(make_scenes(images, seed=seed, size=size, n_objects=(objects, objects),
                                          kinds=("ellipse", "rectangle"), min_area=1)):
        masks = np.stack(scene.masks())
        while len(masks) < objects:  # an occluded shape was dropped: repeat one
            masks = np.concatenate([masks, masks[:1]])
        sample = Sample(image=scene.image, masks=masks[:objects])
        prompts = [ObjectPrompt(kind=BOX, box=b) for b in sample.boxes()]
        items.append(Item(sample, prompts, i))
    return Collator.for_model(module.adapter)(items)


def reference_step(module: FineTuneModule, batch, optimizer) -> torch.Tensor:
    """R2/R4: per image, encode; per object, prompt encoder + official decoder + loss."""
    model = module.adapter.model
    total = 0.0
    for b in range(len(batch)):
        with torch.no_grad():
            embedding = model.image_encoder(batch.images[b : b + 1])
        objects = (batch.object_image == b).nonzero().flatten()
        for o in objects:
            group = next(g for g in batch.prompt_groups if (g.objects == o).any())
            row = (group.objects == o).nonzero().item()
            sparse, dense = model.prompt_encoder(points=None, boxes=group.prompts.boxes[row : row + 1], masks=None)
            low, iou = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=False)
            logits = module.upsample(low)
            valid = module.valid_mask(batch)[o : o + 1]
            total = total + module.loss(logits, batch.targets[o : o + 1], iou, valid=valid).total
    loss = total / batch.num_objects
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def samtune_step(module: FineTuneModule, batch, optimizer) -> torch.Tensor:
    loss = module._step(batch, "train")[0]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def timed(step, module, batch, optimizer, steps: int, warmup: int, device: str, autocast) -> dict:
    for _ in range(warmup):
        with autocast():
            step(module, batch, optimizer)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        with autocast():
            step(module, batch, optimizer)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"images_per_s": len(batch) * steps / seconds, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam_tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=4, help="images per step")
    parser.add_argument("--objects", type=int, default=8, help="objects per image")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    overrides = [f"model.name={args.model}", "model.freeze=[image_encoder, prompt_encoder]"]
    module = FineTuneModule(build_run_config(None, overrides)).to(args.device).train()
    # the reference loop runs the official attention code, as the reference projects do
    official = FineTuneModule(build_run_config(None, overrides + ["train.fused_attention=false"]))
    official = official.to(args.device).train()
    batch = make_batch(module, args.images, args.objects, tuple(args.size), seed=0).to(args.device)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    official_optimizer = torch.optim.AdamW([p for p in official.parameters() if p.requires_grad], lr=1e-5)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def autocast():
        return torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype is not None)

    results = {
        "reference loop (per image, per object)": timed(reference_step, official, batch, official_optimizer,
                                                        args.steps, args.warmup, args.device, autocast),
        "samtune, encoder every step, official attention": timed(
            samtune_step, official, batch, official_optimizer, args.steps, args.warmup, args.device, autocast),
        "samtune, encoder every step": timed(samtune_step, module, batch, optimizer,
                                             args.steps, args.warmup, args.device, autocast),
    }
    with tempfile.TemporaryDirectory() as cache_dir:
        module.cache = EmbeddingCache(Path(cache_dir), model_key(module.adapter), preprocess_key(module.adapter),
                                      memory_items=args.images)
        results["samtune, cached embeddings"] = timed(samtune_step, module, batch, optimizer,
                                                      args.steps, args.warmup, args.device, autocast)
        # the same cached step with the loss on the raw 256x256 decoder logits
        module.config = module.config.model_copy(update={"train": module.config.train.model_copy(
            update={"loss_resolution": "low_res"})})
        results["samtune, cached, low-res loss"] = timed(samtune_step, module, batch, optimizer,
                                                         args.steps, args.warmup, args.device, autocast)
        module.cache = None

    base = results["reference loop (per image, per object)"]["images_per_s"]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"\ntrain step, {args.model}, {args.images} images x {args.objects} objects, "
          f"{args.size[0]}x{args.size[1]}, {args.precision}, {args.device} ({device_name})")
    print(f"{'step':48s} {'images/s':>10s} {'vs reference':>13s} {'peak GiB':>9s}")
    for name, r in results.items():
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{name:48s} {r['images_per_s']:10.2f} {r['images_per_s'] / base:12.1f}x {peak:>9s}")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "device": args.device, "device_name": device_name,
              "images": args.images, "objects": args.objects, "size": list(args.size),
              "precision": args.precision, "results": results}
    path = args.out / f"train_step-{args.model}-{args.device.split(':')[0]}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
