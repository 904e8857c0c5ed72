"""Which prompt-encoder parameters the prompt kinds of a run reach, found by asking the model.

The prompt encoder has one embedding per kind of input: point labels (and SAM's "not a
point"), box corners, the mask-input convolutions and the "no mask" embedding. A step whose
objects drew only boxes leaves the point embeddings without a gradient, and no step of a run
without mask prompts ever reaches the mask convolutions. A single process does not mind;
DDP stops with "parameters that were not used in producing the loss". So a run whose prompt
encoder trains:

- freezes what none of its prompt kinds can reach (it could never learn anything), and
- knows which parameters only *some* of its kinds reach: those may miss a gradient in any one
  step, and DDP must look for unused parameters (see :func:`samtune.train.run.build_trainer`).

The answer comes from one prompt-encoder call per kind on a dummy object, so it follows each
family's own code (SAM 2 feeds box corners as labelled points, SAM embeds them apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samtune.config.prompts import PromptConfig, PromptKind, parse_prompt_kind
from samtune.models.adapter import Adapter, Prompts


def kinds_drawn(prompts: PromptConfig, correction_rounds: int = 0,
                negatives: bool = False) -> list[PromptKind]:
    """Every prompt structure a training step of this config can hand the prompt encoder: the
    mix's kinds, what a ``logits`` kind falls back to, the correction rounds' prompts (the
    kind's box, the points so far plus a click, and the previous logits as mask input), and
    with ``negatives`` no prompt at all (an image without objects trains as a negative)."""
    kinds = [kind for kind, weight in prompts.kinds() if weight > 0]
    if negatives:
        kinds.append(PromptKind())
    if any(kind.mask == "logits" for kind in kinds):
        kinds.append(parse_prompt_kind(prompts.mask.logits_fallback))
        kinds += [PromptKind(box=k.box, points=k.points) for k in kinds
                  if k.mask == "logits" and (k.box or k.points)]
    if correction_rounds:
        kinds += [PromptKind(box=k.box, points=True, mask="logits") for k in kinds]
    unique: list[PromptKind] = []
    for kind in kinds:
        if kind not in unique:
            unique.append(kind)
    return unique


def probe_prompts(adapter: Adapter, kind: PromptKind) -> Prompts:
    """One object prompted as ``kind``, in model input pixels."""
    device, s = adapter.device, float(adapter.image_size)
    points = labels = boxes = masks = None
    if kind.points:
        points = torch.tensor([[[s / 2, s / 2]]], device=device)
        labels = torch.ones(1, 1, dtype=torch.int, device=device)
    if kind.box is not None:
        boxes = torch.tensor([[s / 4, s / 4, 3 * s / 4, 3 * s / 4]], device=device)
    if kind.mask is not None:
        masks = torch.zeros(1, 1, *adapter.mask_input_size, device=device)
    return Prompts(torch.zeros(1, dtype=torch.long, device=device), points, labels, boxes, masks)


def reached_by(adapter: Adapter, kind: PromptKind, names: list[str]) -> set[str]:
    """Which of the trainable parameters ``names`` (official names) one ``kind`` reaches."""
    params = dict(adapter.model.named_parameters())
    wanted = [params[n] for n in names]
    with torch.enable_grad():
        sparse, dense = adapter.embed_prompts(probe_prompts(adapter, kind))
        grads = torch.autograd.grad(sparse.sum() + dense.sum(), wanted, allow_unused=True)
    return {n for n, g in zip(names, grads) if g is not None}


@dataclass(frozen=True)
class PromptReach:
    """Trainable prompt-encoder parameters no kind reaches, and those only some kinds reach."""

    unreached: tuple[str, ...]
    varying: tuple[str, ...]


def prompt_reach(adapter: Adapter, kinds: list[PromptKind]) -> PromptReach:
    """:class:`PromptReach` of the adapter's trainable prompt-encoder parameters for ``kinds``."""
    names = [n for n, p in adapter.parameter_groups()["prompt_encoder"].items() if p.requires_grad]
    if not names or not kinds:
        return PromptReach((), ())
    per_kind = [reached_by(adapter, kind, names) for kind in kinds]
    union, common = set().union(*per_kind), set.intersection(*per_kind)
    return PromptReach(tuple(n for n in names if n not in union),
                       tuple(n for n in names if n in union and n not in common))
