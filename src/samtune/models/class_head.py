"""An optional class head: the data's categories for every mask the decoder makes.

What it reads: the decoder's output token of a mask (the one its hypernetwork turns into the
mask) and the image embedding averaged under the mask (its low-res probabilities, at the
embedding's size), the two side by side into a 3-layer MLP. Neither sends a gradient back:
the head only reads what the decoder made, so a run with a head trains exactly the masks of
the same run without one. (Measured with the gradient flowing into the decoder: LiteMedSAM's
held-out one-point IoU fell from 0.486 to 0.417 while the head learned little.)

Why a head and not per-class prompt embeddings: one decoder pass labels every mask it makes,
the point-grid masks of ``predict --auto`` included, at a cost that does not grow with the
number of classes. Per-class prompt embeddings would ask "where is class c?": one decoder
pass per class for each prompt, and ``C`` passes per grid point for automatic masks, whose
answers then have to be compared across classes.

The head lives beside the official module (``adapter.class_head``), never inside it: the
exported ``model.pth`` stays loadable by the official code, and the head travels as its own
``class_head.safetensors`` with the category ids and names in its metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from samtune.errors import CheckpointError
from samtune.models.adapter import Adapter

CLASS_HEAD_FILE = "class_head.safetensors"
#: the target of an object the class loss ignores (no category, or one the head lacks)
IGNORE = -100


class ClassHead(nn.Module):
    """Category logits (N, K, C) of the decoder's N x K masks.

    ``dim``: the width of the decoder's tokens and of the image embedding (equal in every
    family). ``categories``: category id -> name, in the order of the logits (the data's ids,
    not 0..C-1: COCO ids are often sparse).
    """

    def __init__(self, dim: int, categories: Mapping[int, str], hidden: int = 256) -> None:
        super().__init__()
        if len(categories) < 2:
            raise ValueError(f"a class head needs at least two categories, got {dict(categories)}")
        self.ids = [int(c) for c in categories]
        self.names = [str(categories[c]) for c in categories]
        # the norm puts the token and the pooled embedding, of their own scales, on one
        self.mlp = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, len(self.ids)))

    @property
    def categories(self) -> dict[int, str]:
        return dict(zip(self.ids, self.names))

    def forward(self, tokens: torch.Tensor, image_embed: torch.Tensor, low_res: torch.Tensor,
                image_index: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` (N, K, D) and ``low_res`` (N, K, h, w) logits from the decoder;
        ``image_embed`` (B, D, h', w') with ``image_index`` (N,) the image of each object, or
        one row per object when ``image_index`` is None."""
        pooled = mask_pooled(image_embed.detach(), low_res.detach(), image_index)
        return self.mlp(torch.cat([tokens.detach(), pooled.to(tokens.dtype)], dim=-1))

    def targets(self, category_ids: torch.Tensor) -> torch.Tensor:
        """(N,) class indices of category ids; :data:`IGNORE` for any id the head lacks."""
        lookup = {c: i for i, c in enumerate(self.ids)}
        return torch.tensor([lookup.get(int(c), IGNORE) for c in category_ids.tolist()],
                            dtype=torch.long, device=category_ids.device)

    def label(self, logits: torch.Tensor) -> tuple[list[int], list[float]]:
        """(category id, probability) of the most likely class of each row of (..., C) logits,
        flattened."""
        probs = logits.float().softmax(-1).reshape(-1, len(self.ids))
        score, index = probs.max(-1)
        return [self.ids[i] for i in index.tolist()], score.tolist()


def mask_pooled(image_embed: torch.Tensor, low_res: torch.Tensor,
                image_index: torch.Tensor | None) -> torch.Tensor:
    """(N, K, D): the image embedding averaged under each mask's probabilities, sized to the
    embedding by area. Grouped by image, so an embedding is never copied per object."""
    n, k = low_res.shape[:2]
    # sizes as plain ints: constants to the ONNX tracer, which cannot export a pooling of a
    # traced size (the masks are 4x the embedding in every family)
    size = (int(image_embed.shape[-2]), int(image_embed.shape[-1]))
    probs = low_res.float().sigmoid().flatten(0, 1)[:, None]
    factor = int(low_res.shape[-1]) // size[1]
    if tuple(int(s) for s in low_res.shape[-2:]) == (size[0] * factor, size[1] * factor):
        weights = F.avg_pool2d(probs, factor)
    else:
        weights = F.interpolate(probs, size, mode="area")
    weights = weights.reshape(n, k, -1)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-6)
    embed = image_embed.float().flatten(2)  # (B, D, P)
    if image_index is None:
        return torch.einsum("nkp,ndp->nkd", weights, embed)
    out = weights.new_empty(n, k, embed.shape[1])
    for b in image_index.unique().tolist():
        rows = (image_index == b).nonzero().flatten()
        out[rows] = torch.einsum("nkp,dp->nkd", weights[rows], embed[b])
    return out


def mask_token_dim(adapter: Adapter) -> int:
    """Width of the decoder's tokens: the prompt encoder's embedding width in every family."""
    return int(adapter.prompt_encoder.embed_dim)


def attach_class_head(adapter: Adapter, categories: Mapping[int, str]) -> ClassHead:
    """Give ``adapter`` a fresh class head over ``categories`` (on its device)."""
    head = ClassHead(mask_token_dim(adapter), categories).to(adapter.device)
    adapter.class_head = head
    return head


def class_head_tensors(head: ClassHead) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").float().contiguous().clone()
            for k, v in head.state_dict().items()}


def save_class_head(head: ClassHead, path: str | Path) -> Path:
    """Write the head's tensors with its categories in the file's metadata."""
    from safetensors.torch import save_file

    meta = {"format": "samtune-class-head/1",
            "categories": json.dumps([{"id": i, "name": n} for i, n in zip(head.ids, head.names)])}
    save_file(class_head_tensors(head), str(path), metadata=meta)
    return Path(path)


def load_class_head(adapter: Adapter, path: str | Path) -> ClassHead:
    """Attach the head of a ``class_head.safetensors`` to ``adapter``, strictly."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        categories = {int(c["id"]): str(c["name"]) for c in json.loads(meta["categories"])}
        tensors = load_file(str(path))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a samtune class head ({e}); export the run "
                              "again") from e
    head = attach_class_head(adapter, categories)
    try:
        head.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: does not fit {adapter.spec.name}'s decoder tokens: "
                              f"{str(e).splitlines()[0]}") from e
    return head


def restore_categories(saved: object) -> dict[int, str] | None:
    """The categories a training checkpoint's hyper-parameters record (JSON keys are strings)."""
    if not saved:
        return None
    return {int(c["id"]): str(c["name"]) for c in saved}


def categories_json(categories: Mapping[int, str]) -> list[dict]:
    return [{"id": int(i), "name": str(n)} for i, n in categories.items()]
