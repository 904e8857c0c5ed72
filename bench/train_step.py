"""Training-step throughput: samtune's step against the reference projects' loop, side by side.

The reference loop is what R2 and R4 do: for each image, run the (frozen) image encoder, then
for each object call the prompt encoder and the official mask decoder on its own, compute the
loss, and step. samtune's step encodes the batch once, decodes every object of every image in
one call per prompt shape, and with the embedding cache skips the encoder entirely.

Same model, same data, same loss, same device, one process. Prints images/s, the ratios and
peak memory, and writes bench/results/train_step-<device>.json.

``compare_setup`` (what ``bench/table.py`` runs) compares samtune's step with the official
code's step (``official_loss``: the official encoder, then the official decoder once per
image with all its boxes) for decoder-only training on cached embeddings, LoRA on the
encoder, and the full fine-tune.

    .venv/bin/python bench/train_step.py                       # CPU: sam_tiny, ratios
    .venv/bin/python bench/train_step.py --model sam_vit_b --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import activation_mib, images_per_s, peak_gib, precision_autocast

from samtune.config import build_run_config
from samtune.config.prompts import parse_prompt_kind
from samtune.data.batch import Collator, Item
from samtune.data.sample import Sample
from samtune.data.synthetic import make_scenes
from samtune.prompts import ObjectPrompt
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
            one = group.prompts.select(torch.tensor([row], device=group.prompts.image_index.device))
            points = None if one.points is None else (one.points, one.point_labels)
            sparse, dense = model.prompt_encoder(points=points, boxes=one.boxes, masks=one.mask_inputs)
            low, iou = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=module.multimask(one))
            logits = module.upsample(low)
            valid = module.valid_mask(batch)[o : o + 1]
            total = total + module.loss(logits, batch.targets[o : o + 1], iou, valid=valid).total
    loss = total / batch.num_objects
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def official_loss(module: FineTuneModule, batch, embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """The official code's forward: the official encoder on the batch (or ``embeddings``
    computed before, as the precomputed-embedding scripts do), then per image the official
    prompt encoder and mask decoder with all of that image's boxes (the official decoder takes
    one image per call), and the same loss as samtune's on all objects at once."""
    model = module.adapter.model
    (objects, prompts), = batch.prompt_groups  # make_batch: box prompts only, one group
    if embeddings is None:
        with torch.set_grad_enabled(module.encoder_trainable):
            embeddings = model.image_encoder(batch.images)
    low, iou, order = [], [], []
    for b in range(len(batch)):
        rows = (prompts.image_index == b).nonzero().flatten()
        sparse, dense = model.prompt_encoder(points=None, boxes=prompts.boxes[rows], masks=None)
        image_low, image_iou = model.mask_decoder(
            image_embeddings=embeddings[b : b + 1], image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        low.append(image_low)
        iou.append(image_iou)
        order.append(objects[rows])
    index = torch.cat(order).argsort()  # back to batch order, where the targets are
    logits = module.upsample(torch.cat(low)[index])
    return module.loss(logits, batch.targets, torch.cat(iou)[index], valid=module.valid_mask(batch)).total


def samtune_loss(module: FineTuneModule, batch) -> torch.Tensor:
    return module._step(batch, "train")[0]


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def samtune_step(module: FineTuneModule, batch, optimizer) -> torch.Tensor:
    return optimizer_step(samtune_loss(module, batch), optimizer)


#: what each compared setup trains, as config overrides both sides share
SETUPS = {
    "decoder only, cached embeddings": ["model.freeze=[image_encoder, prompt_encoder]"],
    "LoRA on the encoder": ["model.freeze=[image_encoder, prompt_encoder]",
                            "model.lora={targets: [image_encoder], rank: 8, alpha: 16}"],
    "full fine-tune": ["model.freeze=[]"],
}


def compare_setup(setup: str, model: str, device: str, images: int, objects: int, size: tuple[int, int],
                  precision: str, steps: int, warmup: int, compile: bool = False) -> dict:
    """One setup's step, the official code's against samtune's, same model, batch, loss,
    optimizer and precision. samtune runs its defaults (fused attention, batched decoder, the
    embedding cache kept on the device) plus encoder gradient checkpointing for the full
    fine-tune, and ``torch.compile`` when asked. The sides run one after the other, each
    alone on the device, so CUDA peak memory is that side's alone (weights, gradients,
    optimizer state, cache and activations). The CPU has no peak counter: there memory is the
    activations the forward keeps for backward (:func:`common.activation_mib`)."""
    autocast = precision_autocast(device, precision)

    overrides = [f"model.name={model}", *SETUPS[setup]]
    ours_overrides = overrides + ["train.gradient_checkpointing=true"] * (setup == "full fine-tune")
    ours_overrides += ["train.compile=true"] * compile
    sides = {"official": overrides + ["train.fused_attention=false"], "samtune": ours_overrides}
    out: dict = {"setup": setup, "model": model, "images": images, "objects": objects,
                 "samtune_options": ours_overrides[len(overrides):]}
    for side, side_overrides in sides.items():
        module = FineTuneModule(build_run_config(None, side_overrides)).to(device).train()
        batch = make_batch(module, images, objects, size, seed=0).to(device)
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
        cached = setup.endswith("cached embeddings")
        with tempfile.TemporaryDirectory() as cache_dir:
            if side == "official":
                embeddings = None
                if cached:
                    with torch.no_grad(), autocast():
                        embeddings = module.adapter.model.image_encoder(batch.images).float()

                def loss(module=module, batch=batch, embeddings=embeddings):
                    return official_loss(module, batch, embeddings)
            else:
                if cached:
                    module.cache = EmbeddingCache(Path(cache_dir), model_key(module.adapter),
                                                  preprocess_key(module.adapter), memory_items=images,
                                                  memory_device=device)
                    with torch.no_grad(), autocast():  # filled before timing, as a run does
                        module.features(batch)

                def loss(module=module, batch=batch):
                    return samtune_loss(module, batch)

            def step(loss=loss, optimizer=optimizer):
                with autocast():
                    value = loss()
                return optimizer_step(value, optimizer)

            row = {"images_per_s": images_per_s({side: step}, images, steps, warmup, device)[side]}
            if device.startswith("cuda"):
                row["peak_gib"] = peak_gib(step, device)
            else:
                with autocast():
                    row["activation_mib"] = activation_mib(module.adapter, loss)
            module.cache = None
        out[side] = row
        del module, batch, optimizer
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    memory = "peak_gib" if device.startswith("cuda") else "activation_mib"
    out["speed_ratio"] = out["samtune"]["images_per_s"] / out["official"]["images_per_s"]
    out["memory_ratio"] = out["samtune"][memory] / out["official"][memory]
    return out


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
    autocast = precision_autocast(args.device, args.precision)

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
