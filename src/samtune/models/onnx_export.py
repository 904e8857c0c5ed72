"""ONNX export: the image encoder and the prompt encoder + mask decoder as two graphs.

``decoder.onnx`` takes segment-anything's ONNX inputs (``scripts/export_onnx_model.py``), with
a leading object axis so that several objects of one image are decoded in one call:

==================  ====================  =============================================
input               shape                 meaning
==================  ====================  =============================================
image_embeddings    1 x C x h x w         ``encoder.onnx`` output
high_res_feats_0/1  1 x C0 x 4h x 4w ...  SAM 2 only: the encoder's finer levels
point_coords        B x N x 2 float       x, y in model input pixels (original pixels
                                          times the family's resize scale)
point_labels        B x N float           1 fg, 0 bg, 2 / 3 box top-left / bottom-right,
                                          -1 padding point
mask_input          B x 1 x 4h x 4w       a previous ``low_res_masks`` (logits)
has_mask_input      1                     1 when ``mask_input`` is used, else 0
orig_im_size        2 float               original (height, width)
==================  ====================  =============================================

``B`` (objects) and ``N`` (points) are dynamic. As in segment-anything's ONNX model, the
caller appends the padding point ``(0, 0)`` with label -1 when an object has no box (SAM,
MobileSAM); SAM 2's prompt encoder always pads, so for SAM 2 it is appended to every object.

Outputs: ``masks`` (B x 4 x H x W logits at the original size), ``iou_predictions`` (B x 4)
and ``low_res_masks`` (B x 4 x 4h x 4w). Index 0 is the single-mask output
(``multimask_output=False``; SAM 2's stability fallback included), 1-3 the three multimask
outputs, so one graph serves both modes.

``encoder.onnx`` takes the preprocessed image (``1 x 3 x S x S`` float32, see
:func:`onnx_manifest`) and returns ``image_embeddings`` (and SAM 2's ``high_res_feats_0/1``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from samtune.errors import SamtuneError
from samtune.files import atomic_path, write_json
from samtune.models.adapter import Adapter, Features

OPSET = 17
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
MANIFEST_FILE = "onnx.json"


class EncoderGraph(nn.Module):
    """Preprocessed image -> the adapter's features, as plain tensors."""

    def __init__(self, adapter: Adapter) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.adapter.encode(image)
        return (features.image_embed, *features.high_res)


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder for B objects of one image, all mask tokens out.

    The prompt embedding repeats the official ``_embed_points`` with labels as data (the
    official code indexes by label, which does not trace to a dynamic number of points); box
    corners are points with labels 2 and 3, as the official box embedding adds
    ``point_embeddings[2]`` / ``[3]`` to the corners' positional encodings. The decoding is
    the adapter's own (:meth:`~samtune.models.adapter.Adapter.decode_all_tokens`), the sizing
    to the original image its preprocessing's (crop the padding or not). A model with a class
    head gets a fourth output, ``category_probs`` (B, 4, n_classes), one row per mask token.
    """

    def __init__(self, adapter: Adapter, high_res_levels: int) -> None:
        super().__init__()
        self.adapter = adapter
        self.high_res_levels = high_res_levels
        self.pads = adapter.preprocessor.pads
        self.image_size = adapter.image_size

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.adapter.prompt_encoder
        coords = (coords + 0.5) / self.image_size
        embedding = pe.pe_layer._pe_encoding(coords)
        labels = labels[..., None]
        embedding = embedding * (labels != -1)
        embedding = embedding + pe.not_a_point_embed.weight * (labels == -1)
        for i, point in enumerate(pe.point_embeddings):
            embedding = embedding + point.weight * (labels == i)
        return embedding

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.adapter.prompt_encoder
        masked = pe.mask_downscaling(mask_input) * has_mask_input
        return masked + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def _upscale(self, low_res: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        size = orig_im_size.to(torch.int64)
        if self.pads:  # the content's corner of the padded input, as the adapter's postprocess
            s = self.image_size
            low_res = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
            prepadded = torch.floor(orig_im_size * (s / torch.max(orig_im_size)) + 0.5).to(torch.int64)
            low_res = low_res[..., : prepadded[0], : prepadded[1]]
        return F.interpolate(low_res, size=(size[0], size[1]), mode="bilinear", align_corners=False)

    def forward(self, image_embeddings, *inputs):
        high_res = inputs[: self.high_res_levels]
        point_coords, point_labels, mask_input, has_mask_input, orig_im_size = inputs[self.high_res_levels:]
        n = point_coords.shape[0]
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input).expand(n, -1, -1, -1)
        features = Features(image_embeddings.expand(n, -1, -1, -1),
                            tuple(t.expand(n, -1, -1, -1) for t in high_res))
        masks, iou, tokens = self.adapter.decode_all_tokens(features, sparse, dense)
        out = (self._upscale(masks, orig_im_size), iou, masks)
        head = self.adapter.class_head
        if head is None:
            return out
        return (*out, head(tokens, features.image_embed, masks).softmax(-1))


def example_inputs(adapter: Adapter, objects: int = 2, points: int = 3) -> dict[str, torch.Tensor]:
    """Zero-valued decoder inputs of the right shapes (for tracing and for tests)."""
    device = adapter.device
    with torch.no_grad():
        features = adapter.encode(torch.zeros(1, 3, adapter.image_size, adapter.image_size, device=device))
    inputs = {"image_embeddings": features.image_embed}
    for i, t in enumerate(features.high_res):
        inputs[f"high_res_feats_{i}"] = t
    h, w = adapter.mask_input_size
    inputs.update({
        "point_coords": torch.zeros(objects, points, 2, device=device),
        "point_labels": torch.ones(objects, points, device=device),
        "mask_input": torch.zeros(objects, 1, h, w, device=device),
        "has_mask_input": torch.zeros(1, device=device),
        "orig_im_size": torch.tensor([float(adapter.image_size)] * 2, device=device),
    })
    return inputs


def export_onnx(adapter: Adapter, output: str | Path) -> list[Path]:
    """Write ``encoder.onnx``, ``decoder.onnx`` and ``onnx.json`` for ``adapter`` (float32,
    CPU, eval mode; each file atomically)."""
    output = Path(output)
    adapter = adapter.to("cpu").float().eval()
    image = torch.zeros(1, 3, adapter.image_size, adapter.image_size)
    decoder_inputs = example_inputs(adapter)
    high_res = [name for name in decoder_inputs if name.startswith("high_res_feats_")]
    encoder_outputs = ["image_embeddings", *high_res]
    objects = {0: "objects"}
    dynamic = {"point_coords": {0: "objects", 1: "points"}, "point_labels": {0: "objects", 1: "points"},
               "mask_input": objects, "masks": {0: "objects", 2: "height", 3: "width"},
               "iou_predictions": objects, "low_res_masks": objects, "category_probs": objects}
    outputs = decoder_outputs(adapter)
    output.mkdir(parents=True, exist_ok=True)
    paths = [output / ENCODER_FILE, output / DECODER_FILE, output / MANIFEST_FILE]
    with torch.no_grad():
        # wrappers in eval mode: the exporter restores the wrapper's mode on the whole model
        _export(EncoderGraph(adapter).eval(), (image,), paths[0], ["image"], encoder_outputs, None)
        _export(DecoderGraph(adapter, len(high_res)).eval(), tuple(decoder_inputs.values()), paths[1],
                list(decoder_inputs), outputs, {k: v for k, v in dynamic.items()
                                                 if k in outputs or k in decoder_inputs})
    write_json(paths[2], onnx_manifest(adapter, encoder_outputs, list(decoder_inputs)))
    return paths


def decoder_outputs(adapter: Adapter) -> list[str]:
    """The decoder graph's output names (``category_probs`` with a class head)."""
    names = ["masks", "iou_predictions", "low_res_masks"]
    return names if adapter.class_head is None else [*names, "category_probs"]


def _export(module, args, path: Path, inputs, outputs, dynamic_axes) -> None:
    import warnings

    try:
        import onnx  # noqa: F401 - the exporter needs it; say so before tracing
    except ImportError as e:
        raise SamtuneError("ONNX export needs the onnx package: pip install 'samtune[onnx]'") from e
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True,
                          dynamo=False)


def onnx_manifest(adapter: Adapter, encoder_outputs: list[str], decoder_inputs: list[str]) -> dict:
    """What a runtime without samtune needs: sizes, names, and the preprocessing."""
    pre = adapter.preprocessor
    padding = "always" if adapter.always_pads_points else "when the object has no box"
    return {
        "format": "samtune-onnx/1",
        "model": adapter.spec.name,
        "family": adapter.spec.family,
        "image_size": adapter.image_size,
        "mask_input_size": list(adapter.mask_input_size),
        "files": {"encoder": ENCODER_FILE, "decoder": DECODER_FILE},
        "encoder": {"inputs": ["image"], "outputs": encoder_outputs},
        "decoder": {"inputs": decoder_inputs, "outputs": decoder_outputs(adapter),
                    "mask_outputs": "0: single mask (multimask_output=False); 1-3: multimask"},
        "preprocess": {"mean": list(pre.mean), "std": list(pre.std), **pre.recipe,
                       "padding_point": padding},
        **({"categories": [{"id": i, "name": n} for i, n in adapter.class_head.categories.items()]}
           if adapter.class_head is not None else {}),
    }
