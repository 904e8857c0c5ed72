"""Hugging Face transformers layout <-> official SAM / SAM 2 names, both ways.

transformers publishes SAM (``SamModel``: facebook/sam-vit-base, wanglab/medsam-vit-base, ...)
and SAM 2 (``Sam2Model``: facebook/sam2.1-hiera-tiny, ...) as a folder with ``config.json`` and
``model.safetensors`` whose tensors are the official ones under other names. The facts this
module encodes (read from transformers' converters ``convert_sam_to_hf.py`` /
``convert_sam2_to_hf.py`` and checked against the installed ``SamModel`` / ``Sam2Model``):

- ``image_encoder`` is ``vision_encoder`` (SAM 2: ``vision_encoder.backbone`` for the Hiera
  trunk, ``vision_encoder.neck`` for the FPN, whose ``convs.N.conv`` loses its ``.conv``);
  SAM's ViT ``blocks`` are ``layers``; ``norm*`` are ``layer_norm*``; SAM's neck
  ``0/1/2/3`` is ``conv1/layer_norm1/conv2/layer_norm2``;
- the prompt encoder's random-Fourier matrix ``pe_layer.positional_encoding_gaussian_matrix``
  is stored twice (``prompt_encoder.shared_embedding.positional_embedding`` and the model's
  ``shared_image_embedding.positional_embedding``); official SAM has one, so the copies must
  agree; SAM 2 stacks the four ``point_embeddings.N`` into one ``point_embed.weight``;
- ``mask_downscaling.0/1/3/4/6`` is ``mask_embed.conv1/layer_norm1/conv2/layer_norm2/conv3``,
  ``output_upscaling.0/1/3`` is ``upscale_conv1/upscale_layer_norm/upscale_conv2``;
- every official ``MLP`` (``layers.0 .. layers.L-1``) is ``proj_in, layers.0 .. layers.L-3,
  proj_out`` (SAM 2 also for the Hiera and two-way-transformer MLPs); SAM 2's attention
  ``out_proj`` is ``o_proj``; ``no_mem_embed`` is ``no_memory_embedding``.

``Sam2Model`` holds only the image path; SAM 2's memory modules (video tracking) are not in its
files. Loading such a file keeps the memory modules of the freshly built model (samtune uses
only the image path) and says so; exporting writes only what ``Sam2Model`` loads.

Every key is accounted for in both directions: a key no rule maps is an error naming it.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from samtune.errors import CheckpointError

if TYPE_CHECKING:
    from samtune.models.adapter import Adapter

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
#: HF keys of the two copies of the prompt encoder's positional matrix.
_SHARED = ("shared_image_embedding.positional_embedding",
           "prompt_encoder.shared_embedding.positional_embedding")
#: Official SAM 2 keys outside the image path (absent from ``Sam2Model`` files).
SAM2_MEMORY_PREFIXES = (
    "memory_attention.", "memory_encoder.", "mask_downsample.", "obj_ptr_proj.",
    "obj_ptr_tpos_proj.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
    "no_obj_embed_spatial",
)


@dataclass(frozen=True)
class Rule:
    """One official name pattern and its HF counterpart.

    Placeholders: ``{i}`` (digits, the same in both), ``{x}`` (the rest of the key), ``{a}``
    (one name segment). ``mlp`` rules map an official ``MLP`` at the ``official`` prefix
    (``.layers.K.``) to HF's ``proj_in`` / ``layers.K-1`` / ``proj_out`` at the ``hf`` prefix.
    """

    official: str
    hf: str
    mlp: bool = False


def _sam_prompt_rules(prefix: str) -> list[Rule]:
    p = prefix
    return [
        Rule(f"{p}.pe_layer.positional_encoding_gaussian_matrix",
             "prompt_encoder.shared_embedding.positional_embedding"),
        Rule(f"{p}.mask_downscaling.0.{{x}}", "prompt_encoder.mask_embed.conv1.{x}"),
        Rule(f"{p}.mask_downscaling.1.{{x}}", "prompt_encoder.mask_embed.layer_norm1.{x}"),
        Rule(f"{p}.mask_downscaling.3.{{x}}", "prompt_encoder.mask_embed.conv2.{x}"),
        Rule(f"{p}.mask_downscaling.4.{{x}}", "prompt_encoder.mask_embed.layer_norm2.{x}"),
        Rule(f"{p}.mask_downscaling.6.{{x}}", "prompt_encoder.mask_embed.conv3.{x}"),
        Rule(f"{p}.not_a_point_embed.weight", "prompt_encoder.not_a_point_embed.weight"),
        Rule(f"{p}.no_mask_embed.weight", "prompt_encoder.no_mask_embed.weight"),
    ]


def _decoder_rules(prefix: str, sam2: bool) -> list[Rule]:
    p, t = prefix, f"{prefix}.transformer"
    out = "o_proj" if sam2 else "out_proj"
    rules = [
        Rule(f"{t}.layers.{{i}}.norm{{a}}.{{x}}", "mask_decoder.transformer.layers.{i}.layer_norm{a}.{x}"),
        Rule(f"{t}.layers.{{i}}.{{a}}.out_proj.{{x}}", f"mask_decoder.transformer.layers.{{i}}.{{a}}.{out}.{{x}}"),
        Rule(f"{t}.norm_final_attn.{{x}}", "mask_decoder.transformer.layer_norm_final_attn.{x}"),
        Rule(f"{t}.final_attn_token_to_image.out_proj.{{x}}",
             f"mask_decoder.transformer.final_attn_token_to_image.{out}.{{x}}"),
        Rule(f"{t}.final_attn_token_to_image.{{a}}.{{x}}",
             "mask_decoder.transformer.final_attn_token_to_image.{a}.{x}"),
        Rule(f"{p}.output_upscaling.0.{{x}}", "mask_decoder.upscale_conv1.{x}"),
        Rule(f"{p}.output_upscaling.1.{{x}}", "mask_decoder.upscale_layer_norm.{x}"),
        Rule(f"{p}.output_upscaling.3.{{x}}", "mask_decoder.upscale_conv2.{x}"),
        Rule(f"{p}.output_hypernetworks_mlps.{{i}}", "mask_decoder.output_hypernetworks_mlps.{i}", mlp=True),
        Rule(f"{p}.iou_prediction_head", "mask_decoder.iou_prediction_head", mlp=True),
        Rule(f"{p}.iou_token.weight", "mask_decoder.iou_token.weight"),
        Rule(f"{p}.mask_tokens.weight", "mask_decoder.mask_tokens.weight"),
    ]
    if sam2:  # the two-way transformer's MLP is an official MLP in SAM 2, MLPBlock in SAM
        rules.insert(1, Rule(f"{t}.layers.{{i}}.mlp", "mask_decoder.transformer.layers.{i}.mlp", mlp=True))
        rules += [
            Rule(f"{p}.pred_obj_score_head", "mask_decoder.pred_obj_score_head", mlp=True),
            Rule(f"{p}.obj_score_token.weight", "mask_decoder.obj_score_token.weight"),
            Rule(f"{p}.conv_s0.{{x}}", "mask_decoder.conv_s0.{x}"),
            Rule(f"{p}.conv_s1.{{x}}", "mask_decoder.conv_s1.{x}"),
        ]
    # the rest of each transformer layer (attention q/k/v, SAM's mlp.lin1/lin2) keeps its name
    rules.append(Rule(f"{t}.layers.{{i}}.{{x}}", "mask_decoder.transformer.layers.{i}.{x}"))
    return rules


SAM_RULES: list[Rule] = [
    Rule("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    Rule("image_encoder.patch_embed.proj.{x}", "vision_encoder.patch_embed.projection.{x}"),
    Rule("image_encoder.blocks.{i}.norm{a}.{x}", "vision_encoder.layers.{i}.layer_norm{a}.{x}"),
    Rule("image_encoder.blocks.{i}.{x}", "vision_encoder.layers.{i}.{x}"),
    Rule("image_encoder.neck.0.{x}", "vision_encoder.neck.conv1.{x}"),
    Rule("image_encoder.neck.1.{x}", "vision_encoder.neck.layer_norm1.{x}"),
    Rule("image_encoder.neck.2.{x}", "vision_encoder.neck.conv2.{x}"),
    Rule("image_encoder.neck.3.{x}", "vision_encoder.neck.layer_norm2.{x}"),
    Rule("prompt_encoder.point_embeddings.{i}.weight", "prompt_encoder.point_embed.{i}.weight"),
    *_sam_prompt_rules("prompt_encoder"),
    *_decoder_rules("mask_decoder", sam2=False),
]

SAM2_RULES: list[Rule] = [
    Rule("image_encoder.trunk.pos_embed", "vision_encoder.backbone.pos_embed"),
    Rule("image_encoder.trunk.pos_embed_window", "vision_encoder.backbone.pos_embed_window"),
    Rule("image_encoder.trunk.patch_embed.proj.{x}", "vision_encoder.backbone.patch_embed.projection.{x}"),
    Rule("image_encoder.trunk.blocks.{i}.norm{a}.{x}", "vision_encoder.backbone.blocks.{i}.layer_norm{a}.{x}"),
    Rule("image_encoder.trunk.blocks.{i}.mlp", "vision_encoder.backbone.blocks.{i}.mlp", mlp=True),
    Rule("image_encoder.trunk.blocks.{i}.{x}", "vision_encoder.backbone.blocks.{i}.{x}"),
    Rule("image_encoder.neck.convs.{i}.conv.{x}", "vision_encoder.neck.convs.{i}.{x}"),
    *_sam_prompt_rules("sam_prompt_encoder"),
    *_decoder_rules("sam_mask_decoder", sam2=True),
    Rule("no_mem_embed", "no_memory_embedding"),
]
#: SAM 2's memory modules (video): in transformers' hub checkpoints, which ``Sam2VideoModel``
#: reads and ``Sam2Model`` skips.
SAM2_MEMORY_RULES: list[Rule] = [
    Rule("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    Rule("no_mem_pos_enc", "no_memory_positional_encoding"),
    Rule("no_obj_ptr", "no_object_pointer"),
    Rule("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
    Rule("obj_ptr_tpos_proj.{x}", "temporal_positional_encoding_projection_layer.{x}"),
    Rule("obj_ptr_proj", "object_pointer_proj", mlp=True),
    Rule("mask_downsample.{x}", "mask_downsample.{x}"),
    Rule("memory_attention.layers.{i}.norm{a}.{x}", "memory_attention.layers.{i}.layer_norm{a}.{x}"),
    Rule("memory_attention.layers.{i}.{a}.out_proj.{x}", "memory_attention.layers.{i}.{a}.o_proj.{x}"),
    Rule("memory_attention.layers.{i}.{x}", "memory_attention.layers.{i}.{x}"),
    Rule("memory_attention.norm.{x}", "memory_attention.layer_norm.{x}"),
    Rule("memory_encoder.pix_feat_proj.{x}", "memory_encoder.feature_projection.{x}"),
    Rule("memory_encoder.out_proj.{x}", "memory_encoder.projection.{x}"),
    Rule("memory_encoder.fuser.layers.{i}.gamma", "memory_encoder.memory_fuser.layers.{i}.scale"),
    Rule("memory_encoder.fuser.layers.{i}.dwconv.{x}", "memory_encoder.memory_fuser.layers.{i}.depthwise_conv.{x}"),
    Rule("memory_encoder.fuser.layers.{i}.norm.{x}", "memory_encoder.memory_fuser.layers.{i}.layer_norm.{x}"),
    Rule("memory_encoder.fuser.layers.{i}.pwconv{a}.{x}",
         "memory_encoder.memory_fuser.layers.{i}.pointwise_conv{a}.{x}"),
]
#: The memory encoder's mask downsampler: official ``encoder.N`` (conv, LayerNorm2d, GELU,
#: repeated, then a 1x1 conv) is HF ``layers.J.conv`` / ``layers.J.layer_norm`` / ``final_conv``.
_DOWNSAMPLER = "memory_encoder.mask_downsampler."
_POINT_EMBED_SAM2 = "prompt_encoder.point_embed.weight"


def _regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{[iax]\})", template)
    groups = {"{i}": r"(?P<i>\d+)", "{a}": r"(?P<a>[^.]+)", "{x}": r"(?P<x>.+)"}
    return re.compile("".join(groups.get(p, re.escape(p)) for p in parts) + "$")


def _fill(template: str, match: re.Match) -> str:
    return re.sub(r"\{([iax])\}", lambda m: match.group(m.group(1)), template)


_MLP_HF = re.compile(r"(?:proj_in|proj_out|layers\.(?P<k>\d+))\.(?P<x>[^.]+)$")
_MLP_OFFICIAL = re.compile(r"layers\.(?P<k>\d+)\.(?P<x>[^.]+)$")


def _rename(keys: list[str], rules: list[Rule], to_hf: bool, source: str) -> dict[str, str]:
    """old key -> new key for every key, first matching rule; error naming unmatched keys."""
    plain = [(_regex(r.official if to_hf else r.hf), r.hf if to_hf else r.official)
             for r in rules if not r.mlp]
    mlps = [(_regex((r.official if to_hf else r.hf) + ".{x}"), r) for r in rules if r.mlp]
    out: dict[str, str] = {}
    mlp_keys: dict[tuple[str, str], list[tuple[str, re.Match]]] = {}
    unmatched = []
    for key in keys:
        for pattern, rule in mlps:  # MLPs first: their prefixes are more specific
            m = pattern.match(key)
            if m and (_MLP_OFFICIAL if to_hf else _MLP_HF).match(m.group("x")):
                prefix = key[: len(key) - len(m.group("x")) - 1]
                mlp_keys.setdefault((prefix, _fill(rule.hf if to_hf else rule.official, m)), []).append(
                    (key, (_MLP_OFFICIAL if to_hf else _MLP_HF).match(m.group("x"))))
                break
        else:
            for pattern, template in plain:
                m = pattern.match(key)
                if m:
                    out[key] = _fill(template, m)
                    break
            else:
                unmatched.append(key)
    if unmatched:
        more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
        layout = "official" if to_hf else "transformers"
        raise CheckpointError(f"{source}: {len(unmatched)} keys that are not in the {layout} SAM "
                              f"layout samtune maps: {', '.join(unmatched[:5])}{more}")
    for (_, new_prefix), items in mlp_keys.items():
        out.update(_rename_mlp(items, new_prefix, to_hf))
    return out


def _rename_mlp(items: list[tuple[str, re.Match]], new_prefix: str, to_hf: bool) -> dict[str, str]:
    """One MLP's keys: official ``layers.0..L-1`` <-> HF ``proj_in, layers.0..L-3, proj_out``."""
    out = {}
    if to_hf:
        last = max(int(m.group("k")) for _, m in items)
        for key, m in items:
            k = int(m.group("k"))
            name = "proj_in" if k == 0 else "proj_out" if k == last else f"layers.{k - 1}"
            out[key] = f"{new_prefix}.{name}.{m.group('x')}"
    else:
        middle = {int(m.group("k")) for _, m in items if m.group("k") is not None}
        last = len(middle) + 1
        for key, m in items:
            name = m.group(0).split(".")[0]
            k = 0 if name == "proj_in" else last if name == "proj_out" else int(m.group("k")) + 1
            out[key] = f"{new_prefix}.layers.{k}.{m.group('x')}"
    return out


def _names(keys: list[str], layout: str, to_hf: bool, source: str) -> dict[str, str]:
    """old key -> new key for a whole state dict of ``layout``."""
    if layout == "sam":
        return _rename(keys, SAM_RULES, to_hf, source)
    down = [k for k in keys if k.startswith(_DOWNSAMPLER)]  # same prefix in both layouts
    rest = [k for k in keys if not k.startswith(_DOWNSAMPLER)]
    out = _rename(rest, SAM2_RULES + SAM2_MEMORY_RULES, to_hf, source)
    out.update(_downsampler_names(down, to_hf, source))
    return out


def _downsampler_names(keys: list[str], to_hf: bool, source: str) -> dict[str, str]:
    if not keys:  # a Sam2Model file: no memory modules
        return {}
    pattern = (re.compile(r"encoder\.(?P<n>\d+)\.(?P<x>[^.]+)$") if to_hf else
               re.compile(r"(?:layers\.(?P<j>\d+)\.(?P<kind>conv|layer_norm)|final_conv)\.(?P<x>[^.]+)$"))
    matches = {k: pattern.match(k[len(_DOWNSAMPLER):]) for k in keys}
    bad = [k for k, m in matches.items() if m is None]
    if bad:
        raise CheckpointError(f"{source}: mask downsampler keys samtune cannot map: {', '.join(bad[:5])}")
    out = {}
    if to_hf:
        final = max(int(m.group("n")) for m in matches.values())
        for k, m in matches.items():
            n = int(m.group("n"))
            name = ("final_conv" if n == final else
                    f"layers.{n // 3}.conv" if n % 3 == 0 else f"layers.{n // 3}.layer_norm")
            out[k] = f"{_DOWNSAMPLER}{name}.{m.group('x')}"
    else:
        final = 3 * (1 + max(int(m.group("j")) for m in matches.values() if m.group("j") is not None))
        for k, m in matches.items():
            n = (final if m.group("j") is None else
                 3 * int(m.group("j")) + (0 if m.group("kind") == "conv" else 1))
            out[k] = f"{_DOWNSAMPLER}encoder.{n}.{m.group('x')}"
    return out


# --- state dicts ------------------------------------------------------------------------------
def is_hf_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    """True for the transformers layout (``vision_encoder.*``), not the official one."""
    return any(k.startswith("vision_encoder.") for k in sd)


def hf_family(sd: dict[str, torch.Tensor]) -> str:
    """``sam`` or ``sam2`` from an HF state dict's encoder keys."""
    if any(k.startswith("vision_encoder.backbone.") for k in sd):
        return "sam2"
    if "vision_encoder.pos_embed" in sd:
        return "sam"
    raise CheckpointError("not a transformers SamModel / Sam2Model state dict (no "
                          "vision_encoder.pos_embed or vision_encoder.backbone.*)")


def hf_to_official(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """An HF ``SamModel`` / ``Sam2Model`` state dict under the official names.

    Strict: every key is mapped or the error names it; the two copies of the positional
    matrix must agree (official SAM has one). SAM 2's memory modules are not in such a file.
    """
    sd = dict(sd)
    layout = hf_family(sd)
    copies = [sd.pop(k) for k in _SHARED if k in sd]
    if not copies:
        raise CheckpointError(f"{source}: no {_SHARED[0]} (the prompt encoder's positional matrix)")
    if len(copies) == 2 and not torch.equal(copies[0], copies[1]):
        raise CheckpointError(f"{source}: {_SHARED[0]} and {_SHARED[1]} differ; official SAM "
                              "has one positional matrix for both, so this model has no "
                              "official form")
    sd[_SHARED[1]] = copies[0]
    if layout == "sam2":
        stacked = sd.pop(_POINT_EMBED_SAM2, None)
        if stacked is None:
            raise CheckpointError(f"{source}: no {_POINT_EMBED_SAM2}")
        points = {f"sam_prompt_encoder.point_embeddings.{i}.weight": row[None].clone()
                  for i, row in enumerate(stacked)}
    else:
        points = {}
    names = _names(list(sd), layout, False, source)
    out = {names[k]: v for k, v in sd.items()}
    out.update(points)
    return out


def official_to_hf(sd: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """An official SAM / SAM 2 state dict under transformers' names (SAM 2 with its memory
    modules, as transformers' hub checkpoints hold them: ``Sam2Model`` skips those). Both
    copies of the positional matrix are written."""
    if layout not in ("sam", "sam2"):
        raise ValueError(f"unknown transformers layout {layout!r}: sam or sam2")
    sd = dict(sd)
    if layout == "sam2":
        rows = sorted((int(k.split(".")[2]), k) for k in sd
                      if k.startswith("sam_prompt_encoder.point_embeddings."))
        points = torch.cat([sd.pop(k) for _, k in rows], dim=0)
    names = _names(list(sd), layout, True, layout)
    out = {names[k]: v for k, v in sd.items()}
    if layout == "sam2":
        out[_POINT_EMBED_SAM2] = points
    out[_SHARED[0]] = out[_SHARED[1]].clone()
    return out


def complete_sam2_memory(expected: dict[str, torch.Tensor], sd: dict[str, torch.Tensor],
                         source: str) -> dict[str, torch.Tensor]:
    """``sd`` plus the memory-module tensors of ``expected`` (a freshly built SAM 2) when the
    file has none of them (a ``Sam2Model`` file); a warning says so. Any other file as it is."""
    if not image_path_only(sd):
        return sd
    missing = [k for k in expected if k not in sd and k.startswith(SAM2_MEMORY_PREFIXES)]
    warnings.warn(f"{source}: a transformers Sam2Model file holds the image path only; SAM 2's "
                  f"memory modules ({len(missing)} tensors, for video tracking, unused by "
                  "samtune) keep the values of a freshly built model", stacklevel=3)
    return {**sd, **{k: expected[k] for k in missing}}


# --- files ------------------------------------------------------------------------------------
#: ``model_type`` values of the transformers models this module maps.
MODEL_TYPES = ("sam", "sam2", "sam2_video")


def is_hf_folder(path: Path) -> bool:
    """A folder in the transformers layout (``config.json``; a samtune run has config.yaml)."""
    return path.is_dir() and (path / CONFIG_FILE).is_file() and not (path / "config.yaml").is_file()


def hf_weights_file(path: Path) -> Path:
    """The weights file of an HF folder (``model.safetensors``, else ``pytorch_model.bin``),
    after checking that ``config.json`` names a SAM / SAM 2 model."""
    config = path / CONFIG_FILE
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{config}: not a transformers config ({e})") from e
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{config}: a transformers {model_type!r} model; samtune reads "
                              f"{', '.join(MODEL_TYPES)}")
    for name in (WEIGHTS_FILE, "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    if (path / "model.safetensors.index.json").is_file():
        raise CheckpointError(f"{path}: sharded weights (model.safetensors.index.json) are not "
                              "supported; SAM checkpoints fit in one model.safetensors")
    raise CheckpointError(f"{path}: has {CONFIG_FILE} but no {WEIGHTS_FILE}")


def image_path_only(sd: dict[str, torch.Tensor]) -> bool:
    """An official SAM 2 state dict without the memory modules (from a ``Sam2Model`` file)."""
    return (any(k.startswith("image_encoder.trunk.") for k in sd)
            and not any(k.startswith(SAM2_MEMORY_PREFIXES) for k in sd))


def save_hf(adapter: Adapter, output: Path) -> tuple[Path, Path, Path]:
    """Write ``config.json`` and ``model.safetensors`` for ``SamModel.from_pretrained`` /
    ``Sam2Model.from_pretrained`` (the adapter's ``hf_layout``), and
    ``preprocessor_config.json`` for the matching processor (each file atomically; float32,
    contiguous copies)."""
    from safetensors.torch import save_file

    from samtune.files import atomic_path, write_json

    layout, model = adapter.hf_layout, adapter.model
    if layout is None:
        raise CheckpointError(f"transformers has SAM (ViT) and SAM 2 (Hiera) models only; a "
                              f"{adapter.family} model has no transformers layout")
    config = hf_config(model, layout)
    processor = hf_preprocessor_config(model, layout)
    tensors = {k: v.detach().to("cpu").float().contiguous().clone() if v.is_floating_point()
               else v.detach().to("cpu").contiguous().clone()
               for k, v in official_to_hf(model.state_dict(), layout).items()}
    output.mkdir(parents=True, exist_ok=True)
    weights = output / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(output / PREPROCESSOR_FILE, processor)
    write_json(output / CONFIG_FILE, config)
    return output / CONFIG_FILE, weights, output / PREPROCESSOR_FILE


def hf_preprocessor_config(model: nn.Module, layout: str) -> dict:
    """``preprocessor_config.json`` for ``SamProcessor`` / ``Sam2Processor.from_pretrained``:
    the layout's resize, 0..1 rescale and mean/std at the model's own input size."""
    common = {"do_convert_rgb": True, "do_resize": True, "resample": 2, "do_rescale": True,
              "rescale_factor": 1 / 255, "do_normalize": True}
    if layout == "sam":
        size = model.image_encoder.img_size
        mask = model.prompt_encoder.mask_input_size[0]
        return {
            "image_processor_type": "SamImageProcessor", "processor_class": "SamProcessor", **common,
            "image_mean": [v / 255 for v in model.pixel_mean.flatten().tolist()],
            "image_std": [v / 255 for v in model.pixel_std.flatten().tolist()],
            "size": {"longest_edge": size}, "do_pad": True, "pad_size": {"height": size, "width": size},
            "mask_size": {"longest_edge": mask}, "mask_pad_size": {"height": mask, "width": mask},
        }
    from samtune.models.sam2 import IMAGE_MEAN, IMAGE_STD

    size, mask = model.image_size, model.sam_prompt_encoder.mask_input_size[0]
    return {
        "image_processor_type": "Sam2ImageProcessor", "processor_class": "Sam2Processor", **common,
        "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD),
        "size": {"height": size, "width": size}, "mask_size": {"height": mask, "width": mask},
    }


# --- config.json ------------------------------------------------------------------------------
def hf_config(model: nn.Module, layout: str) -> dict:
    """The ``config.json`` of ``SamConfig`` / ``Sam2Config`` that rebuilds ``model``'s
    architecture in transformers (read from the official module's own sizes)."""
    if layout == "sam":
        return _sam_config(model)
    if layout == "sam2":
        return _sam2_config(model)
    raise ValueError(f"unknown transformers layout {layout!r}: sam or sam2")


def _prompt_config(pe: nn.Module) -> dict:
    return {
        "hidden_size": pe.embed_dim,
        "image_size": pe.input_image_size[0],
        "patch_size": pe.input_image_size[0] // pe.image_embedding_size[0],
        "mask_input_channels": pe.mask_downscaling[3].out_channels,
        "num_point_embeddings": len(pe.point_embeddings),
    }


def _decoder_config(dec: nn.Module, mlp_dim: int) -> dict:
    layer = dec.transformer.layers[0]
    return {
        "hidden_size": dec.transformer_dim,
        "mlp_dim": mlp_dim,
        "num_hidden_layers": dec.transformer.depth,
        "num_attention_heads": layer.self_attn.num_heads,
        "attention_downsample_rate": dec.transformer_dim // layer.cross_attn_token_to_image.internal_dim,
        "num_multimask_outputs": dec.num_multimask_outputs,
        "iou_head_depth": dec.iou_prediction_head.num_layers,
        "iou_head_hidden_dim": dec.iou_prediction_head.layers[0].out_features,
    }


def _sam_config(model: nn.Module) -> dict:
    enc, pe, dec = model.image_encoder, model.prompt_encoder, model.mask_decoder
    block = enc.blocks[0]
    decoder = _decoder_config(dec, dec.transformer.layers[0].mlp.lin1.out_features)
    # the official two-way transformer's LayerNorms use PyTorch's default eps (1e-5);
    # transformers' default is 1e-6, so it is written out for the same numbers
    decoder["layer_norm_eps"] = dec.transformer.layers[0].norm1.eps
    return {
        "architectures": ["SamModel"],
        "model_type": "sam",
        "vision_config": {
            "model_type": "sam_vision_model",
            "hidden_size": enc.patch_embed.proj.out_channels,
            "output_channels": enc.neck[0].out_channels,
            "num_hidden_layers": len(enc.blocks),
            "num_attention_heads": block.attn.num_heads,
            "image_size": enc.img_size,
            "patch_size": enc.patch_embed.proj.kernel_size[0],
            "mlp_dim": block.mlp.lin1.out_features,
            "qkv_bias": block.attn.qkv.bias is not None,
            "use_abs_pos": enc.pos_embed is not None,
            "use_rel_pos": block.attn.use_rel_pos,
            "window_size": max(b.window_size for b in enc.blocks),
            "global_attn_indexes": [i for i, b in enumerate(enc.blocks) if b.window_size == 0],
            "num_pos_feats": pe.pe_layer.positional_encoding_gaussian_matrix.shape[1],
            "layer_norm_eps": block.norm1.eps,
        },
        "prompt_encoder_config": {"model_type": "sam_prompt_encoder", **_prompt_config(pe)},
        "mask_decoder_config": {"model_type": "sam_mask_decoder", **decoder},
    }


def _sam2_config(model: nn.Module) -> dict:
    trunk, neck = model.image_encoder.trunk, model.image_encoder.neck
    pe, dec = model.sam_prompt_encoder, model.sam_mask_decoder
    ends = [-1, *trunk.stage_ends]
    blocks = [trunk.blocks[e] for e in trunk.stage_ends]
    proj = trunk.patch_embed.proj
    size = model.image_size
    decoder = _decoder_config(dec, dec.transformer.layers[0].mlp.layers[0].out_features)
    decoder.update({
        "dynamic_multimask_via_stability": dec.dynamic_multimask_via_stability,
        "dynamic_multimask_stability_delta": dec.dynamic_multimask_stability_delta,
        "dynamic_multimask_stability_thresh": dec.dynamic_multimask_stability_thresh,
    })
    return {
        "architectures": ["Sam2Model"],
        "model_type": "sam2",
        "vision_config": {
            "model_type": "sam2_vision_model",
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": proj.out_channels,
                "num_attention_heads": trunk.blocks[0].attn.num_heads,
                "image_size": [size, size],
                "patch_kernel_size": list(proj.kernel_size),
                "patch_stride": list(proj.stride),
                "patch_padding": list(proj.padding),
                "query_stride": list(trunk.q_stride),
                "window_positional_embedding_background_size": list(trunk.pos_embed.shape[-2:]),
                "num_query_pool_stages": len(trunk.q_pool_blocks),
                "blocks_per_stage": [b - a for a, b in zip(ends, ends[1:])],
                "embed_dim_per_stage": [b.dim_out for b in blocks],
                "num_attention_heads_per_stage": [b.attn.num_heads for b in blocks],
                "window_size_per_stage": list(trunk.window_spec),
                "global_attention_blocks": list(trunk.global_att_blocks),
                "mlp_ratio": trunk.blocks[0].mlp.layers[0].out_features / trunk.blocks[0].dim_out,
            },
            "backbone_channel_list": list(neck.backbone_channel_list),
            "backbone_feature_sizes": [[size // s, size // s] for s in (4, 8, 16)],
            "fpn_hidden_size": neck.d_model,
            "fpn_kernel_size": neck.convs[0].conv.kernel_size[0],
            "fpn_stride": neck.convs[0].conv.stride[0],
            "fpn_padding": neck.convs[0].conv.padding[0],
            "fpn_top_down_levels": list(neck.fpn_top_down_levels),
            "num_feature_levels": model.num_feature_levels,
        },
        "prompt_encoder_config": {"model_type": "sam2_prompt_encoder", **_prompt_config(pe)},
        "mask_decoder_config": {"model_type": "sam2_mask_decoder", **decoder},
    }
