"""The one interface behind which SAM families differ.

The trainer, the evaluator and the predictor use only :class:`Adapter`: ``preprocess`` ->
``encode`` -> ``decode`` -> ``postprocess``. Each step is batched: ``encode`` takes several
images and ``decode`` takes any number of objects from any of those images, each with its
prompts, in one call (no Python loop over objects).

Coordinates: prompts reach ``decode`` in *model input* pixels (after the family's resize), as
the official predictors pass them to the prompt encoder. :meth:`Adapter.transform_coords` maps
original-image pixels there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from samtune.errors import SamtuneError
from samtune.models.preprocess import Preprocessor
from samtune.models.spec import ModelSpec


@dataclass(frozen=True)
class SegmentEverything:
    """A family's official automatic mask generator defaults, where the families differ.

    ``pred_iou_thresh``: the default predicted-IoU filter (SAM 0.88, SAM 2 0.8).
    ``regions_at_low_res``: ``min_mask_region_area`` cleans every candidate's low-res logits
    (SAM 2: holes and sprinkles, as its predictor's ``max_hole_area``) instead of the final
    masks followed by a second box NMS (SAM).
    ``mask_to_mask``: the official generator has the ``use_m2m`` refinement (SAM 2).
    ``float_boxes``: the records' ``bbox`` and ``crop_box`` are floats (SAM 2), not integers.
    """

    pred_iou_thresh: float = 0.88
    regions_at_low_res: bool = False
    mask_to_mask: bool = False
    float_boxes: bool = False


@dataclass
class Features:
    """Per-image encoder output: what the embedding cache stores and ``decode`` reads.

    ``image_embed`` is (B, C, h, w). ``high_res`` holds SAM 2's finer feature maps, already
    projected by the decoder's ``conv_s0``/``conv_s1`` as SAM 2's ``forward_image`` does
    (empty for SAM and MobileSAM).
    """

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, ...] = ()

    def __len__(self) -> int:
        return self.image_embed.shape[0]

    def select(self, index: torch.Tensor) -> Features:
        """Rows ``index`` of every tensor: one row per object, for the decoder."""
        return Features(self.image_embed[index], tuple(t[index] for t in self.high_res))

    def to(self, *args, **kwargs) -> Features:
        return Features(
            self.image_embed.to(*args, **kwargs), tuple(t.to(*args, **kwargs) for t in self.high_res)
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"image_embed": self.image_embed}
        out.update({f"high_res_{i}": t for i, t in enumerate(self.high_res)})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Features:
        n = sum(1 for k in tensors if k.startswith("high_res_"))
        return cls(tensors["image_embed"], tuple(tensors[f"high_res_{i}"] for i in range(n)))

    @classmethod
    def cat(cls, items: Sequence[Features]) -> Features:
        return cls(
            torch.cat([f.image_embed for f in items]),
            tuple(torch.cat(ts) for ts in zip(*(f.high_res for f in items))),
        )


@dataclass
class Prompts:
    """Prompts for N objects, in model input pixels.

    All objects in one record share a structure (same prompt kinds, same number of points);
    ``image_index[i]`` says which image of the encoded batch object ``i`` belongs to.
    Point labels: 1 foreground, 0 background, -1 padding (ignored by the model).
    """

    image_index: torch.Tensor
    points: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    mask_inputs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.points is None) != (self.point_labels is None):
            raise ValueError("points and point_labels must be given together")

    def __len__(self) -> int:
        return self.image_index.shape[0]

    def select(self, index: torch.Tensor) -> Prompts:
        def pick(t):
            return None if t is None else t[index]

        return Prompts(
            self.image_index[index], pick(self.points), pick(self.point_labels),
            pick(self.boxes), pick(self.mask_inputs),
        )

    def with_mask_inputs(self, mask_inputs: torch.Tensor | None) -> Prompts:
        return replace(self, mask_inputs=mask_inputs)


@dataclass
class Preprocessed:
    """A batch of images ready for ``encode``, with the sizes ``postprocess`` needs."""

    images: torch.Tensor
    input_sizes: list[tuple[int, int]] = field(default_factory=list)
    original_sizes: list[tuple[int, int]] = field(default_factory=list)


class NotAModelError(SamtuneError, TypeError):
    """Something that is not a samtune model where one is needed (an official ``Sam``
    module, a path, a name): the message says how to make one."""


def require_adapter(model: object, who: str) -> None:
    """Refuse anything but an :class:`Adapter`, naming what was given and the fix."""
    if isinstance(model, Adapter):
        return
    what = type(model).__name__
    if isinstance(model, nn.Module):
        fix = ("wrap the official module's weights: samtune.load_model(NAME, checkpoint=FILE), "
               "or torch.save(module.state_dict(), FILE) first")
    elif isinstance(model, (str, Path)):
        fix = f"load it first: {who}(samtune.load_model({str(model)!r}))"
    else:
        fix = "make one with samtune.load_model(NAME_RUN_OR_FILE)"
    raise NotAModelError(f"{who} takes a samtune model (samtune.load_model), got {what}: {fix}")


def count_children(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered children (``blocks.0``, ``blocks.1``...) ``prefix`` has in a state
    dict's key names: how families describe a file's depth."""
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def check_rgb_uint8(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Refuse anything but HxWx3 uint8, the contract of the official predictors."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array (HxWx3 uint8 RGB), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what}: expected shape HxWx3 (RGB), got {tuple(image.shape)}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what}: expected dtype uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what}: empty image {tuple(image.shape)}")
    return image


class Adapter(nn.Module, ABC):
    """A SAM-family model behind samtune's interface; ``self.model`` is the official module.

    Subclasses set ``family`` and ``group_prefixes`` (parameter-name prefixes of the official
    module for ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``; anything else lands
    in ``other``) and implement the five steps.
    """

    family: str = ""
    group_prefixes: dict[str, tuple[str, ...]] = {}
    #: parameters of the official module that no samtune forward pass reaches (a classifier
    #: head, an object-score head): they land in ``other``, never train, and so never stall
    #: DDP's gradient reduction as parameters without a gradient.
    unreached_prefixes: tuple[str, ...] = ()
    #: the official predictor clamps the low-res logits it returns to this range (SAM 2)
    output_logit_clamp: float | None = None
    #: the prompt encoder appends a padding point to every object's points (SAM 2, which takes
    #: box corners as points), not only to objects without a box (SAM): what an ONNX caller
    #: must do
    always_pads_points: bool = False
    #: the transformers ``model_type`` whose layout holds this family's weights (``sam``:
    #: ``SamModel``, ``sam2``: ``Sam2Model``); ``None``: transformers has no such model
    hf_layout: str | None = None

    # --- the family: what samtune knows about its models, in one place --------------------
    #: the model names of the family, as the registry lists them
    specs: tuple[ModelSpec, ...] = ()
    #: the official automatic mask generator's defaults where families differ
    everything: SegmentEverything = SegmentEverything()

    @classmethod
    @abstractmethod
    def build(cls, spec: ModelSpec) -> nn.Module:
        """The official module for ``spec`` with random weights (the tiny variants: the
        official classes at small widths)."""

    @classmethod
    @abstractmethod
    def recognises(cls, state_dict: dict[str, torch.Tensor]) -> bool:
        """Whether a state dict's key names are this family's (for identifying files)."""

    @classmethod
    @abstractmethod
    def describe(cls, state_dict: dict[str, torch.Tensor]) -> str:
        """A short description of the architecture in a state dict this family recognises,
        for error messages ("a SAM ViT encoder with 32 encoder blocks of width 1280")."""

    @classmethod
    def official_checkpoint(cls, state_dict: dict[str, torch.Tensor]) -> object:
        """What the family's official ``.pth`` holds around the state dict (SAM 2 wraps it in
        ``{"model": ...}``; the others save it bare)."""
        return state_dict

    @classmethod
    def complete_state_dict(cls, expected: dict[str, torch.Tensor],
                            state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """A file's state dict before the strict load into a model whose own is ``expected``:
        where a family's files may lack modules samtune never runs, the model's values fill
        them in (SAM 2's memory modules in a transformers ``Sam2Model`` file); as it is
        otherwise."""
        return state_dict

    @classmethod
    @abstractmethod
    def official_loader(cls, spec: ModelSpec, path: str) -> str:
        """The line of official code that loads an exported ``model.pth`` of ``spec``."""

    @classmethod
    def fused_attention_classes(cls) -> dict[type, type]:
        """Official attention class -> its SDPA subclass (``samtune.models.fast``); empty
        when the official code already calls ``scaled_dot_product_attention``."""
        return {}

    @abstractmethod
    def encoder_blocks(self) -> list[nn.Module]:
        """The repeated blocks of the image encoder (gradient checkpointing's unit)."""

    def compiled_modules(self) -> dict[str, nn.Module]:
        """The submodules ``compile_model`` compiles: the image encoder and the part of the
        decoder ``decode`` calls as one module."""
        return {"image_encoder": self.model.image_encoder}

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        #: the optional category head on the mask tokens (:mod:`samtune.models.class_head`),
        #: beside the official module, never in it
        self.class_head: nn.Module | None = None

    # --- the five steps -------------------------------------------------------------------
    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side of the square model input (1024 for the official models)."""

    @property
    @abstractmethod
    def mask_input_size(self) -> tuple[int, int]:
        """Size of low-res logits: what ``decode`` returns and accepts as a mask prompt."""

    @property
    @abstractmethod
    def preprocessor(self) -> Preprocessor:
        """The family's image preprocessing and prompt coordinate mapping (picklable)."""

    def input_size_for(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image content inside the model input for an original (h, w)."""
        return self.preprocessor.input_size(original_size)

    def preprocess(self, images: Sequence[np.ndarray]) -> Preprocessed:
        """HxWx3 uint8 RGB images -> normalized model input, exactly as the official predictor."""
        pre, device = self.preprocessor, self.device
        tensors = [pre(check_rgb_uint8(image), device) for image in images]
        sizes = [image.shape[:2] for image in images]
        return Preprocessed(
            torch.stack(tensors), [pre.input_size(s) for s in sizes], [tuple(s) for s in sizes]
        )

    @abstractmethod
    def encode(self, images: torch.Tensor) -> Features:
        """(B, 3, S, S) preprocessed images -> per-image features."""

    @abstractmethod
    def embed_prompts(self, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T, C) sparse and (N, C, h, w) dense prompt embeddings, one row per object: the
        prompt encoder's part of ``decode``."""

    @abstractmethod
    def decode(
        self, features: Features, prompts: Prompts, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, K, h, w) low-res mask logits and (N, K) predicted IoU, K = 3 or 1.

        ``features`` holds the encoded batch (one row per image); ``prompts.image_index``
        picks each object's row.
        """

    def decode_tokens(
        self, features: Features, prompts: Prompts, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`decode` with the decoder's output token of each mask: (N, K, h, w) logits,
        (N, K) IoU and (N, K, D) tokens (what a class head reads), from
        :meth:`decode_all_tokens`."""
        sparse, dense = self.embed_prompts(prompts)
        selected = features.select(prompts.image_index)
        masks, iou, tokens = self.decode_all_tokens(selected, sparse, dense)
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, keep], iou[:, keep], tokens[:, keep]

    @property
    @abstractmethod
    def prompt_encoder(self) -> nn.Module:
        """The official prompt encoder module (SAM's ``PromptEncoder`` class in every family)."""

    @abstractmethod
    def decode_all_tokens(
        self, features: Features, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 4, h, w) logits, (N, 4) IoU and (N, 4, D) output tokens of every mask token for
        N objects, one ``features`` row and one row of prompt embeddings each: token 0 is what
        ``multimask_output=False`` returns (with the family's own fallback), 1-3 the
        multimask outputs. The ONNX decoder returns it whole, so one graph serves both modes.
        """

    @abstractmethod
    def postprocess(
        self, low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-res logits of one image's objects -> logits at the original size."""

    # --- coordinates ----------------------------------------------------------------------
    def transform_coords(self, coords, original_size: tuple[int, int]) -> torch.Tensor:
        """(..., 2) xy in original pixels -> model input pixels (float32)."""
        return self.preprocessor.transform_coords(coords, original_size)

    def transform_boxes(self, boxes, original_size: tuple[int, int]) -> torch.Tensor:
        """(..., 4) xyxy in original pixels -> model input pixels."""
        return self.preprocessor.transform_boxes(boxes, original_size)

    # --- parameter groups -----------------------------------------------------------------
    def parameter_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """Official parameter names grouped as ``image_encoder``, ``prompt_encoder``,
        ``mask_decoder`` and ``other``: the unit of freezing, LoRA targets and partial saving."""
        groups: dict[str, dict[str, nn.Parameter]] = {g: {} for g in self.group_prefixes}
        groups["other"] = {}
        for name, p in self.model.named_parameters():
            if name.startswith(self.unreached_prefixes):
                groups["other"][name] = p
                continue
            for group, prefixes in self.group_prefixes.items():
                if name.startswith(prefixes):
                    groups[group][name] = p
                    break
            else:
                groups["other"][name] = p
        return groups

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def extra_repr(self) -> str:
        return f"name={self.spec.name}, family={self.family}"
