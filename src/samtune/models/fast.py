"""Fast paths behind the adapter: fused attention, bf16 autocast, ``torch.compile`` and
gradient checkpointing of the encoder blocks.

Each one leaves the official modules' parameters, buffers and state-dict names untouched, so
checkpoints, exports and the official predictors see the same model:

- fused attention swaps the class of each attention module for a subclass whose ``forward``
  calls ``torch.nn.functional.scaled_dot_product_attention`` (same projections, same scale,
  the positional terms passed as an additive bias). It still calls ``self.qkv``/``self.proj``
  (``q_proj``... in the decoder), so LoRA layers that ``peft`` put there keep working. SAM 2's
  Hiera and two-way transformer already call SDPA: nothing to switch there;
- gradient checkpointing swaps each encoder block's class for a subclass that recomputes the
  block in the backward pass while training;
- ``compile_model`` uses ``nn.Module.compile`` (in place), not ``torch.compile(module)``,
  whose wrapper would prefix every state-dict key with ``_orig_mod.``;
- :func:`autocast_inference` runs ``encode``/``decode`` under ``torch.autocast`` and returns
  float32, so callers (the predictor, evaluation) need not know.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from types import MethodType

import torch
import torch.nn.functional as F
from segment_anything.modeling import image_encoder as sam_vit
from segment_anything.modeling import transformer as sam_transformer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from samtune.models.adapter import Adapter

# --- fused attention --------------------------------------------------------------------


def rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """SAM ViT's decomposed relative-position terms as one additive attention bias.

    ``q`` is (B, heads, h*w, C), unscaled, as SAM adds ``q @ R`` to the scaled logits. The
    official code adds ``rel_h`` (B*heads, h, w, kh) and ``rel_w`` (B*heads, h, w, kw) to the
    attention map; summing them with broadcasting gives the same terms as a (B, heads, h*w,
    h*w) bias for SDPA.
    """
    h, w = size
    b, heads, n, c = q.shape
    r_h = sam_vit.get_rel_pos(h, h, rel_pos_h)
    r_w = sam_vit.get_rel_pos(w, w, rel_pos_w)
    grid = q.reshape(b, heads, h, w, c)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid, r_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid, r_w)
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, n, n)


class FusedViTAttention(sam_vit.Attention):
    """SAM ViT attention (windowed or global, with relative positions) through SDPA."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, h*w, C)
        bias = None
        if self.use_rel_pos:
            bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


class FusedTwoWayAttention(sam_transformer.Attention):
    """The SAM/MobileSAM two-way transformer attention (decoder) through SDPA."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


def _tiny_vit_forward(self, x: torch.Tensor) -> torch.Tensor:
    """TinyViT window attention through SDPA, its learned offset biases as the additive mask.

    The bias is gathered from ``attention_biases`` on every call, in train and eval mode
    alike: the official eval-mode ``ab`` buffer is a copy taken when ``eval()`` was last
    called, stale after a ``load_state_dict`` in eval mode, and a gather of a few thousand
    values costs nothing next to the attention.
    """
    b, n, _ = x.shape
    qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
    q, k, v = (t.transpose(1, 2) for t in qkv.split([self.key_dim, self.key_dim, self.d], dim=3))
    bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    return self.proj(out.transpose(1, 2).reshape(b, n, self.dh))


@functools.lru_cache(maxsize=None)
def tiny_vit_fused_classes(tiny_vit_module: str, transformer_module: str, prefix: str
                           ) -> dict[type, type]:
    """A TinyViT package's attention classes (its TinyViT's and its two-way transformer's,
    named by module) -> their SDPA subclasses, made on first use: importing MobileSAM or
    LiteMedSAM pulls in ``timm`` (seconds). Each package has its own copies of the classes.

    Switched modules deep-copy; save them as state dicts (as samtune does), not pickled whole.
    """
    import importlib

    tiny_vit = importlib.import_module(tiny_vit_module)
    transformer = importlib.import_module(transformer_module)
    fused_tiny_vit = type(f"Fused{prefix}TinyViTAttention", (tiny_vit.Attention,),
                          {"forward": _tiny_vit_forward, "__module__": __name__})
    fused_two_way = type(f"Fused{prefix}TwoWayAttention", (transformer.Attention,),
                         {"forward": FusedTwoWayAttention.forward, "__module__": __name__})
    for cls in (fused_tiny_vit, fused_two_way):
        cls.__qualname__ = cls.__name__
    return {tiny_vit.Attention: fused_tiny_vit, transformer.Attention: fused_two_way}


def enable_fused_attention(adapter: Adapter) -> int:
    """Route every attention module the family fuses (``Adapter.fused_attention_classes``)
    through SDPA; returns how many switched.

    Idempotent: modules already switched are skipped (a second call returns 0). SAM 2 returns
    0: its Hiera blocks and two-way transformer already call SDPA. Parameters, buffers and
    state-dict names are unchanged; only each module's class (hence ``forward``) changes.
    """
    classes = type(adapter).fused_attention_classes()
    switched = 0
    for module in adapter.model.modules():
        fused = classes.get(type(module))
        if fused is not None:
            module.__class__ = fused
            switched += 1
    return switched


def fused_attention_count(adapter: Adapter) -> int:
    """How many attention modules of ``adapter`` run the fused forward."""
    fused = tuple(type(adapter).fused_attention_classes().values())
    return sum(isinstance(m, fused) for m in adapter.model.modules())


# --- bf16 autocast ----------------------------------------------------------------------


@contextlib.contextmanager
def autocast_inference(
    adapter: Adapter, dtype: torch.dtype = torch.bfloat16, enabled: bool = True
) -> Iterator[Adapter]:
    """Inside the block, ``adapter.encode`` and ``adapter.decode`` (``decode_tokens`` too) run under
    ``torch.autocast(device_type, dtype)`` and return float32 tensors.

    Everything built on the adapter (``Predictor``, evaluation) picks it up unchanged, and
    features or logits it keeps stay float32. ``enabled=False`` makes the block a no-op, so
    callers can pass a config flag straight through.
    """
    if not enabled:
        yield adapter
        return
    device_type = adapter.device.type
    saved = {name: adapter.__dict__.get(name) for name in ("encode", "decode", "decode_tokens")}

    def encode(self, images: torch.Tensor):
        with torch.autocast(device_type, dtype=dtype):
            features = type(self).encode(self, images)
        return features.to(torch.float32)

    def decode(self, features, prompts, multimask_output: bool):
        with torch.autocast(device_type, dtype=dtype):
            low, iou = type(self).decode(self, features, prompts, multimask_output)
        return low.float(), iou.float()

    def decode_tokens(self, features, prompts, multimask_output: bool):
        with torch.autocast(device_type, dtype=dtype):
            low, iou, tokens = type(self).decode_tokens(self, features, prompts, multimask_output)
        return low.float(), iou.float(), tokens.float()

    adapter.encode = MethodType(encode, adapter)
    adapter.decode = MethodType(decode, adapter)
    adapter.decode_tokens = MethodType(decode_tokens, adapter)
    try:
        yield adapter
    finally:
        for name, value in saved.items():
            if value is None:
                adapter.__dict__.pop(name, None)
            else:
                adapter.__dict__[name] = value


@contextlib.contextmanager
def inference_options(adapter: Adapter, precision: str = "fp32") -> Iterator[Adapter]:
    """What ``samtune predict`` and ``samtune eval`` run inference with: fused attention
    (the official fp32 output within 1e-6, so always on, and left on after the block) and,
    for ``precision="bf16"``, :func:`autocast_inference` inside the block (masks IoU >= 0.99
    of fp32 in the parity tests)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    enable_fused_attention(adapter)
    with autocast_inference(adapter, enabled=precision == "bf16"):
        yield adapter


# --- torch.compile ----------------------------------------------------------------------


def compile_model(adapter: Adapter, mode: str | None = None, dynamic: bool | None = None) -> int:
    """``nn.Module.compile`` the encoder and decoder in place; returns how many were compiled.

    In place, so state-dict names stay the official ones. Compilation happens on the first
    call; the decoder sees a different number of objects per call, which ``dynamic=None``
    (torch's default) turns into a dynamic-shape graph after the first recompile. Idempotent.
    """
    compiled = 0
    for module in adapter.compiled_modules().values():
        if getattr(module, "_compiled_call_impl", None) is None:
            module.compile(mode=mode, dynamic=dynamic)
            compiled += 1
    return compiled


# --- gradient checkpointing -------------------------------------------------------------


class _Checkpointed(nn.Module):
    """Mixin: recompute the block's forward in the backward pass while training with grad."""

    def forward(self, *args, **kwargs):
        parent = super().forward
        if not (self.training and torch.is_grad_enabled()):
            return parent(*args, **kwargs)
        return checkpoint(parent, *args, use_reentrant=False,
                          context_fn=functools.partial(_checkpoint_contexts, self), **kwargs)


def _checkpoint_contexts(block: nn.Module):
    return contextlib.nullcontext(), _batch_norm_stats_kept(block)


@contextlib.contextmanager
def _batch_norm_stats_kept(block: nn.Module) -> Iterator[None]:
    """The recomputation must not update batch-norm running statistics a second time
    (TinyViT's MBConv and local convolutions): restore them after it."""
    norms = [m for m in block.modules() if isinstance(m, _BatchNorm) and m.training
             and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms]
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


@functools.lru_cache(maxsize=None)
def _checkpointed_class(cls: type) -> type:
    return type(cls.__name__, (_Checkpointed, cls), {"__module__": cls.__module__})


def enable_gradient_checkpointing(adapter: Adapter) -> int:
    """Checkpoint each encoder block (``use_reentrant=False``) while training; returns how
    many blocks switched. Idempotent; state-dict names unchanged. In eval mode or under
    ``no_grad`` the blocks run as before."""
    switched = 0
    for block in adapter.encoder_blocks():
        if not isinstance(block, _Checkpointed):
            block.__class__ = _checkpointed_class(type(block))
            switched += 1
    return switched


def checkpointed_blocks(adapter: Adapter) -> list[nn.Module]:
    """The encoder blocks :func:`enable_gradient_checkpointing` switched."""
    return [block for block in adapter.encoder_blocks() if isinstance(block, _Checkpointed)]


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes of distinct tensors autograd saves for backward while ``fn`` runs.

    A device-independent proxy for activation memory (on CPU there is no peak-memory
    counter). Storages saved by several ops count once. Tensors a checkpointed block keeps
    (its inputs) are held by the checkpoint, not saved through these hooks: add them when
    comparing (``bench/encoder.py`` does).
    """
    seen: dict[tuple[int, str], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), str(t.device))] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def apply_fast_options(
    adapter: Adapter, fused_attention: bool = True, gradient_checkpointing: bool = False,
    compile: bool = False,
) -> dict[str, int]:
    """Apply the ``train`` config's speed options, in the order they compose (compile last,
    so it traces the fused and checkpointed forwards); returns counts per option."""
    done = {}
    if fused_attention:
        done["fused_attention"] = enable_fused_attention(adapter)
    if gradient_checkpointing:
        done["gradient_checkpointing"] = enable_gradient_checkpointing(adapter)
    if compile:
        done["compile"] = compile_model(adapter)
    return done
