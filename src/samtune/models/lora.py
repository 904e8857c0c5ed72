"""LoRA adapters on the official modules, through ``peft``, and merging them back out.

``peft.inject_adapter_in_model`` wraps the chosen ``nn.Linear`` layers in place, so the
adapter keeps calling the official forward code. :func:`merge_lora` folds the low-rank
product into the base weights and puts plain ``nn.Linear`` layers back, which restores the
official state-dict names: that is what export writes.
"""

from __future__ import annotations

from torch import nn

from samtune.models.adapter import Adapter

#: Linear layers LoRA wraps, per target, as regexes over module names inside that component.
#: SAM ViT / TinyViT / Hiera attention all name their projections ``attn.qkv`` and ``attn.proj``;
#: SAM's and SAM 2's two-way transformer attentions name theirs ``{q,k,v,out}_proj``.
TARGET_PATTERNS = {
    "image_encoder": r".*attn\.(qkv|proj)",
    "mask_decoder": r".*transformer\..*(q_proj|k_proj|v_proj|out_proj)",
}


def component(adapter: Adapter, group: str) -> nn.Module:
    """The official submodule that holds parameter group ``group``."""
    prefix = adapter.group_prefixes[group][0].rstrip(".")
    return adapter.model.get_submodule(prefix)


def add_lora(adapter: Adapter, targets: list[str], rank: int, alpha: float, dropout: float) -> int:
    """Wrap the target components' linear layers with LoRA; returns how many were wrapped.

    Afterwards only the LoRA tensors of those components require gradients (peft freezes the
    rest of each component it touches); other components keep their own setting.
    """
    from peft import LoraConfig, inject_adapter_in_model

    wrapped = 0
    for target in targets:
        module = component(adapter, target)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                            target_modules=TARGET_PATTERNS[target], bias="none")
        inject_adapter_in_model(config, module)
        wrapped += sum(1 for name, _ in module.named_modules() if name.endswith(".lora_A"))
    if wrapped == 0:
        raise ValueError(f"LoRA found no linear layers to wrap in {targets} of {adapter.spec.name}")
    return wrapped


def has_lora(module: nn.Module) -> bool:
    return any("lora_" in name for name, _ in module.named_parameters())


def is_lora_tensor(name: str) -> bool:
    """True for a LoRA adapter tensor (``...qkv.lora_A.default.weight``), which has no
    official counterpart."""
    return ".lora_" in name


def official_name(name: str) -> str:
    """The official state-dict name of a tensor of a LoRA-wrapped module: peft keeps the
    wrapped layer's own tensors under ``base_layer`` (``attn.qkv.base_layer.weight`` ->
    ``attn.qkv.weight``); other names are already official."""
    return name.replace(".base_layer.", ".")


def merge_lora(module: nn.Module) -> None:
    """Fold every LoRA layer into its base layer and unwrap it, in place."""
    from peft.tuners.lora import LoraLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, child.get_base_layer())
