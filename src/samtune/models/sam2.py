"""SAM 2 and 2.1 (Hiera): builder and adapter.

Models come from ``sam2.build_sam.build_sam2`` with the package's own Hydra configs; the tiny
variant is the 2.1 tiny config with Hydra overrides (narrow trunk, 256 input). Only the image
path of SAM 2 is used (encoder, prompt encoder, mask decoder): the memory modules stay in the
state dict, untouched, so exports load back into ``build_sam2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from samtune.models.adapter import (
    Adapter,
    Features,
    Prompts,
    SegmentEverything,
    count_children,
)
from samtune.models.preprocess import SquareResize
from samtune.models.spec import ModelSpec

SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/{}"
SAM21_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/{}"


def _sam2(version: str, size: str, long: str, params: int) -> ModelSpec:
    prefix = "sam2" if version == "2" else "sam2.1"
    filename = f"{prefix}_hiera_{long}.pt"
    url = (SAM2_URL if version == "2" else SAM21_URL).format(filename)
    return ModelSpec(
        f"{prefix}_hiera_{size}", "sam2", f"hiera_{size}", 1024, params, filename, url,
        sam2_config=f"configs/{prefix}/{prefix}_hiera_{size}.yaml",
        description=f"SAM {version} Hiera-{size.upper()}",
    )


SAM2_SPECS: tuple[ModelSpec, ...] = (
    _sam2("2", "t", "tiny", 38_945_986),
    _sam2("2", "s", "small", 46_043_842),
    _sam2("2", "b+", "base_plus", 80_833_666),
    _sam2("2", "l", "large", 224_430_130),
    _sam2("2.1", "t", "tiny", 38_962_498),
    _sam2("2.1", "s", "small", 46_060_354),
    _sam2("2.1", "b+", "base_plus", 80_850_178),
    _sam2("2.1", "l", "large", 224_446_642),
    ModelSpec("sam2_tiny", "sam2", "hiera_tiny", 256, 1_367_554, tiny=True,
              sam2_config="configs/sam2.1/sam2.1_hiera_t.yaml",
              description="SAM 2.1 code, tiny widths, 256 input, random init (tests, demo)"),
)

#: Hydra overrides that turn the SAM 2.1 tiny config into ``sam2_tiny``.
TINY_OVERRIDES = [
    "++model.image_size=256",
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_spec=[8,4,8,4]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.image_encoder.neck.d_model=64",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=64",
    "++model.memory_attention.d_model=64",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.d_model=64",
    "++model.memory_attention.layer.dim_feedforward=128",
    "++model.memory_attention.layer.self_attention.embedding_dim=64",
    "++model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
    "++model.memory_attention.layer.cross_attention.embedding_dim=64",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=32",
    "++model.memory_encoder.out_dim=32",
    "++model.memory_encoder.in_dim=64",
    "++model.memory_encoder.position_encoding.num_pos_feats=32",
    "++model.memory_encoder.mask_downsampler.embed_dim=64",
    "++model.memory_encoder.fuser.layer.dim=64",
]

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def hydra_overrides(spec: ModelSpec) -> list[str]:
    return list(TINY_OVERRIDES) if spec.tiny else []


class Sam2Adapter(Adapter):
    """SAM 2 / 2.1: square resize (no padding), ImageNet normalization in [0, 1], and three
    feature levels per image.

    ``encode`` applies the decoder's ``conv_s0``/``conv_s1`` to the high-resolution levels, as
    SAM 2's ``forward_image`` does, so those two convolutions count as ``image_encoder``
    parameters here: cached features stay valid while the rest of the decoder trains.
    """

    family = "sam2"
    specs = SAM2_SPECS
    everything = SegmentEverything(pred_iou_thresh=0.8, regions_at_low_res=True,
                                   mask_to_mask=True, float_boxes=True)
    group_prefixes = {
        "image_encoder": (
            "image_encoder.", "no_mem_embed", "sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.",
        ),
        "prompt_encoder": ("sam_prompt_encoder.",),
        "mask_decoder": ("sam_mask_decoder.",),
    }
    output_logit_clamp = 32.0
    always_pads_points = True
    hf_layout = "sam2"
    #: the object-score head: the image predictor discards its output, and so does ``decode``
    unreached_prefixes = ("sam_mask_decoder.pred_obj_score_head.",)

    # --- the family ---------------------------------------------------------------------
    @classmethod
    def build(cls, spec: ModelSpec) -> nn.Module:
        """Through the official builder (post-processing flags on, as ``build_sam2`` sets
        them for the image predictor)."""
        from sam2.build_sam import build_sam2

        return build_sam2(spec.sam2_config, None, device="cpu",
                          hydra_overrides_extra=hydra_overrides(spec))

    @classmethod
    def recognises(cls, state_dict) -> bool:
        return "image_encoder.trunk.patch_embed.proj.weight" in state_dict

    @classmethod
    def describe(cls, state_dict) -> str:
        width = state_dict["image_encoder.trunk.patch_embed.proj.weight"].shape[0]
        version = "2.1" if "no_obj_embed_spatial" in state_dict else "2"
        blocks = count_children(state_dict, "image_encoder.trunk.blocks.")
        return f"a SAM {version} Hiera trunk with {blocks} blocks of width {width}"

    @classmethod
    def official_checkpoint(cls, state_dict) -> object:
        return {"model": state_dict}

    @classmethod
    def complete_state_dict(cls, expected, state_dict, source: str):
        """A transformers ``Sam2Model`` file holds the image path only: the memory modules
        keep the freshly built model's values (with a warning)."""
        from samtune.models.hf import complete_sam2_memory

        return complete_sam2_memory(expected, state_dict, source)

    @classmethod
    def official_loader(cls, spec: ModelSpec, path: str) -> str:
        return f'sam2.build_sam.build_sam2("{spec.sam2_config}", "{path}")'

    def encoder_blocks(self) -> list[nn.Module]:
        """Hiera's ``trunk.blocks`` (already on SDPA: nothing to fuse)."""
        return list(self.model.image_encoder.trunk.blocks)

    def compiled_modules(self) -> dict[str, nn.Module]:
        return {"image_encoder": self.model.image_encoder,
                "sam_mask_decoder": self.model.sam_mask_decoder}

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return tuple(self.model.sam_prompt_encoder.mask_input_size)

    @property
    def feature_sizes(self) -> list[tuple[int, int]]:
        s = self.image_size
        return [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]

    @property
    def preprocessor(self) -> SquareResize:
        return SquareResize(self.image_size, IMAGE_MEAN, IMAGE_STD)

    def encode(self, images: torch.Tensor) -> Features:
        model = self.model
        backbone_out = model.forward_image(images)
        _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        b = images.shape[0]
        feats = [
            f.permute(1, 2, 0).reshape(b, -1, *size)
            for f, size in zip(vision_feats, self.feature_sizes)
        ]
        return Features(feats[-1], tuple(feats[:-1]))

    def embed_prompts(self, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """Box corners (labels 2, 3) first, then points, as ``SAM2ImagePredictor`` orders them."""
        n = len(prompts)
        coords, labels = prompts.points, prompts.point_labels
        if prompts.boxes is not None:
            box_coords = prompts.boxes.reshape(-1, 2, 2)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=box_coords.device).expand(n, 2)
            if coords is None:
                coords, labels = box_coords, box_labels
            else:
                coords = torch.cat([box_coords, coords], dim=1)
                labels = torch.cat([box_labels, labels.to(torch.int)], dim=1)
        points = None if coords is None else (coords, labels)
        sparse, dense = self.model.sam_prompt_encoder(
            points=points, boxes=None, masks=prompts.mask_inputs
        )
        if sparse.shape[0] != n:
            sparse, dense = sparse.expand(n, -1, -1), dense.expand(n, -1, -1, -1)
        return sparse, dense

    def decode(
        self, features: Features, prompts: Prompts, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.embed_prompts(prompts)
        selected = features.select(prompts.image_index)
        masks, iou_pred, _, _ = self.model.sam_mask_decoder(
            image_embeddings=selected.image_embed,
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=list(selected.high_res),
        )
        return masks, iou_pred

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.model.sam_prompt_encoder

    def decode_all_tokens(self, features, sparse, dense):
        """``predict_masks`` returns every token; the single-mask token is then replaced by
        the stability fallback, as ``SAM2MaskDecoder.forward`` does for one mask."""
        dec = self.model.sam_mask_decoder
        masks, iou, tokens, _ = dec.predict_masks(
            image_embeddings=features.image_embed, image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, repeat_image=False,
            high_res_features=list(features.high_res))
        if dec.dynamic_multimask_via_stability and not dec.training:  # as forward: at inference
            single, single_iou = dec._dynamic_multimask_via_stability(masks, iou)
            # the token of the mask the fallback kept: token 0 where it was stable, else the
            # multimask token of highest IoU (the same rule, read off the chosen logits)
            best = iou[:, 1:].argmax(dim=1) + 1
            rows = torch.arange(len(best), device=best.device)
            kept_first = (single[:, 0] == masks[:, 0]).flatten(1).all(dim=1)
            first = torch.where(kept_first[:, None], tokens[:, 0], tokens[rows, best])
            masks = torch.cat([single, masks[:, 1:]], dim=1)
            iou = torch.cat([single_iou, iou[:, 1:]], dim=1)
            tokens = torch.cat([first[:, None], tokens[:, 1:]], dim=1)
        return masks, iou, tokens

    def postprocess(
        self, low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        return F.interpolate(low_res.float(), original_size, mode="bilinear", align_corners=False)
