"""Reading images as HxWx3 uint8 RGB, whatever form the file takes.

Users bring EXIF-rotated phone JPEGs, grey, RGBA, palette, CMYK and 16-bit microscopy files.
Each is turned into what the SAM predictors expect, and a file that cannot be read raises a
:class:`~samtune.errors.SamtuneError` naming it (``cv2.imread`` would return None silently).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from samtune.errors import SamtuneError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
#: The largest image samtune decodes: 100 megapixels (10000x10000), about 300 MB as RGB and
#: several GB in the working copies of prediction; ``SAMTUNE_MAX_IMAGE_PIXELS`` changes it.
#: Larger images are refused from their header, before any decoding.
DEFAULT_MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = None  # samtune's own limit, checked first, replaces Pillow's


def max_image_pixels() -> int:
    value = os.environ.get("SAMTUNE_MAX_IMAGE_PIXELS", "")
    try:
        return int(value) if value else DEFAULT_MAX_PIXELS
    except ValueError:
        raise SamtuneError(f"SAMTUNE_MAX_IMAGE_PIXELS={value!r}: expected a whole number of "
                           "pixels") from None


def check_pixels(path: Path, h: int, w: int) -> None:
    limit = max_image_pixels()
    if h * w > limit:
        raise SamtuneError(f"{path}: {w}x{h} pixels is above samtune's limit of {limit:,} "
                           "pixels; downscale or tile the image, or raise "
                           "SAMTUNE_MAX_IMAGE_PIXELS")


def read_image_rgb(path: str | Path) -> np.ndarray:
    """The image at ``path`` as HxWx3 uint8 RGB, with its EXIF orientation applied.

    Integer images deeper than 8 bits and float images are scaled to 0..255 by their own
    min..max range (a 12-bit camera image in a 16-bit file would otherwise be nearly black if
    cast, or white if clipped).
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        array = _read_tiff(path)
    else:
        array = _read_pil(path)
    return to_rgb_uint8(array, path)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the image :func:`read_image_rgb` would return, from the file header only:
    checking prompts against a folder of images must not decode them all twice."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_image_rgb(path).shape[:2]
    try:
        with Image.open(path) as im:
            w, h = im.size
            check_pixels(path, h, w)
            # EXIF orientations 5-8 rotate by 90 degrees, which read_image_rgb applies
            rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except FileNotFoundError:
        raise SamtuneError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SamtuneError(f"{path}: not a readable image ({e})") from e
    return (w, h) if rotated else (h, w)


def _read_pil(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            check_pixels(path, im.height, im.width)
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
            elif im.mode == "CMYK" or im.mode == "YCbCr" or im.mode == "LAB" or im.mode == "HSV":
                im = im.convert("RGB")
            elif im.mode == "1":
                im = im.convert("L")
            return np.array(im)
    except FileNotFoundError:
        raise SamtuneError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SamtuneError(f"{path}: not a readable image ({e})") from e


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    if not path.is_file():
        raise SamtuneError(f"{path}: no such file")
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tif.series[0].shape
        if len(shape) >= 2:
            dims = sorted(shape)[-2:]  # the two largest axes are the image plane
            check_pixels(path, dims[0], dims[1])
        array = tifffile.imread(path)
    except SamtuneError:
        raise
    except Exception as e:  # tifffile raises a variety of types for bad files
        raise SamtuneError(f"{path}: not a readable TIFF ({e})") from e
    array = np.squeeze(array)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) -> (H, W, C)
    return array


def to_rgb_uint8(array: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """Grey, grey+alpha, RGB or RGBA of any numeric dtype -> HxWx3 uint8 RGB."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise SamtuneError(f"{path}: unsupported image shape {array.shape}; expected HxW or HxWxC "
                           "with 1-4 channels")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise SamtuneError(f"{path}: the image is empty ({array.shape[1]}x{array.shape[0]})")
    channels = array.shape[2]
    if channels in (2, 4):  # drop alpha
        array = array[..., : channels - 1]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return scale_to_uint8(array)


def scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as is; bool to 0/255; anything else scaled by its real min..max range."""
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    a = array.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = a[finite].min(), a[finite].max()
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    a = np.where(finite, a, lo)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
