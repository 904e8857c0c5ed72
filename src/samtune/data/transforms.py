"""Augmentation of a :class:`Sample`: image, masks and boxes moved together.

Built from ``torchvision.transforms.v2`` so that one transform call sees the image as a
``tv_tensors.Image``, the objects as a ``tv_tensors.Mask`` (a stack of masks, or one label
map plane, which survives nearest resampling with its ids intact) and optional boxes as
``tv_tensors.BoundingBoxes``, and moves all of them with the same random parameters. Two
transforms torchvision lacks in the form needed here are small ``v2.Transform`` subclasses:
exact quarter turns (``RandomRotation`` resamples) and a resized crop that returns the
image's own size (``RandomResizedCrop`` takes one fixed output size for all images).

torchvision draws its parameters from torch's global RNG; :class:`Augmenter` seeds a forked
copy of it from the numpy Generator it is given, so the result depends only on that Generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from samtune.config.prompts import AugmentConfig, ResizedCropConfig
from samtune.data.sample import Sample


def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for x in flat_inputs:
        if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)):
            return int(x.shape[-2]), int(x.shape[-1])
    raise ValueError("transform needs a tv_tensors.Image or tv_tensors.Mask among its inputs")


def rotate_boxes90(boxes: torch.Tensor, canvas: tuple[int, int], k: int) -> torch.Tensor:
    """(N, 4) xyxy boxes (pixel edges) on an (H, W) canvas after ``torch.rot90(k)`` of the
    image, i.e. k counter-clockwise quarter turns; the canvas becomes (W, H) for odd k."""
    h, w = canvas
    b = boxes.clone()
    for _ in range(k % 4):
        x1, y1, x2, y2 = b.unbind(-1)
        b = torch.stack([y1, w - x2, y2, w - x1], dim=-1)
        h, w = w, h
    return b


class RandomRotate90(v2.Transform):
    """With probability ``p``, rotate by 90, 180 or 270 degrees (uniformly), exactly."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(1).item() >= self.p:
            return {"k": 0}
        return {"k": int(torch.randint(1, 4, (1,)).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        k = params["k"]
        if k == 0:
            return inpt
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            h, w = inpt.canvas_size
            if inpt.format != tv_tensors.BoundingBoxFormat.XYXY:
                raise ValueError("RandomRotate90 supports XYXY boxes only")
            canvas = (w, h) if k % 2 else (h, w)
            return tv_tensors.wrap(rotate_boxes90(inpt.as_subclass(torch.Tensor), (h, w), k),
                                   like=inpt, canvas_size=canvas)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return tv_tensors.wrap(torch.rot90(inpt.as_subclass(torch.Tensor), k, dims=(-2, -1)),
                                   like=inpt)
        return inpt


class RandomScaleCrop(v2.Transform):
    """With probability ``p``, crop a random region and resize it back to the input's size.

    The region's area is a fraction ``scale`` of the image and its aspect ``ratio`` times the
    image's own (log-uniform); image bilinear, masks nearest, boxes scaled and clamped.
    """

    def __init__(self, p: float, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        super().__init__()
        self.p, self.scale, self.ratio = p, scale, ratio

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _image_size(flat_inputs)
        if torch.rand(1).item() >= self.p:
            return {"crop": None}
        area = h * w * torch.empty(1).uniform_(*self.scale).item()
        log_r = torch.empty(1).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1])).item()
        aspect = math.exp(log_r) * w / h
        cw = min(w, max(1, round(math.sqrt(area * aspect))))
        ch = min(h, max(1, round(math.sqrt(area / aspect))))
        top = int(torch.randint(0, h - ch + 1, (1,)).item())
        left = int(torch.randint(0, w - cw + 1, (1,)).item())
        return {"crop": (top, left, ch, cw), "size": [h, w]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["crop"] is None:
            return inpt
        top, left, ch, cw = params["crop"]
        if isinstance(inpt, tv_tensors.Mask):
            # nearest-exact samples pixel centres as the image's bilinear does; the nearest
            # that ``resized_crop`` uses for masks shifts them by up to a pixel
            fn = v2.functional
            m = fn.crop_mask(inpt.as_subclass(torch.Tensor), top, left, ch, cw)
            m = fn.resize_mask(m, params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
            return tv_tensors.wrap(m, like=inpt)
        return v2.functional.resized_crop(inpt, top, left, ch, cw, params["size"], antialias=True)


def build_transform(config: AugmentConfig) -> v2.Compose | v2.Identity:
    """The configured transforms in a fixed order: flips, quarter turns, crop, colour
    (``Identity`` when none is configured)."""
    steps: list[v2.Transform] = []
    if config.hflip:
        steps.append(v2.RandomHorizontalFlip(config.hflip))
    if config.vflip:
        steps.append(v2.RandomVerticalFlip(config.vflip))
    if config.rotate90:
        steps.append(RandomRotate90(config.rotate90))
    if config.resized_crop is not None:
        c: ResizedCropConfig = config.resized_crop
        steps.append(RandomScaleCrop(c.p, c.scale, c.ratio))
    if config.color_jitter is not None:
        j = config.color_jitter
        jitter = v2.ColorJitter(j.brightness, j.contrast, j.saturation, j.hue)
        steps.append(v2.RandomApply([jitter], p=j.p))
    return v2.Compose(steps) if steps else v2.Identity()


class Augmenter:
    """Sample -> augmented Sample, deterministic given the numpy Generator passed in.

    Objects whose mask has fewer than ``config.min_area`` pixels afterwards (cropped away, or
    empty in the source) are dropped, with their ids, category ids and annotation ids. A
    label-map Sample stays a label-map Sample. Picklable, for data-loader workers.
    """

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config
        self.transform = build_transform(config)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not self.config.enabled:
            return self.drop_small(sample)
        seed = int(rng.integers(2**63 - 1))
        objects = sample.label_map[None] if sample.label_map is not None else sample.masks
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, objects, _ = self.apply(sample.image, objects)
        if sample.label_map is not None:
            return self._label_map_sample(sample, image, objects[0])
        return self._masks_sample(sample, image, objects)

    def apply(
        self, image: np.ndarray, objects: np.ndarray, boxes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Transform HxWx3 ``image``, (N, H, W) ``objects`` (bool masks or an integer label
        map plane) and optional (N, 4) xyxy ``boxes`` with one draw of torch's RNG."""
        h, w = image.shape[:2]
        n = objects.shape[0]
        dtype = objects.dtype
        # Bool masks travel as uint8, label maps as int64; an empty stack as one blank plane
        # (interpolation needs a channel).
        obj = torch.from_numpy(np.ascontiguousarray(objects)).to(
            torch.uint8 if dtype == bool else torch.int64)
        if n == 0:
            obj = torch.zeros(1, h, w, dtype=torch.uint8)
        inputs: list[Any] = [tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                             tv_tensors.Mask(obj)]
        if boxes is not None:
            inputs.append(tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32),
                                                   format="XYXY", canvas_size=(h, w)))
        out = self.transform(*inputs)
        image_out = out[0].permute(1, 2, 0).contiguous().numpy()
        objects_out = out[1].numpy()[:n].astype(dtype, copy=False)
        boxes_out = out[2].numpy() if boxes is not None else None
        return image_out, objects_out, boxes_out

    def drop_small(self, sample: Sample) -> Sample:
        """``sample`` without objects under ``min_area`` pixels (itself when none is): a
        source's empty masks would otherwise become prompts for nothing."""
        if sample.label_map is not None:
            areas = _label_areas(sample.label_map, sample.object_ids)
        else:
            areas = sample.masks.sum(axis=(1, 2))
        if (areas >= self.config.min_area).all():
            return sample
        return select_objects(sample, np.flatnonzero(areas >= self.config.min_area))

    def _masks_sample(self, sample: Sample, image: np.ndarray, masks: np.ndarray) -> Sample:
        keep = np.flatnonzero(masks.sum(axis=(1, 2)) >= self.config.min_area)
        return select_objects(sample, keep, image, masks=masks[keep])

    def _label_map_sample(self, sample: Sample, image: np.ndarray, label_map: np.ndarray) -> Sample:
        areas = _label_areas(label_map, sample.object_ids)
        keep = np.flatnonzero(areas >= self.config.min_area)
        dropped = np.setdiff1d(np.asarray(sample.object_ids), np.asarray(sample.object_ids)[keep])
        if len(dropped):  # specks of dropped objects become background
            label_map = np.where(np.isin(label_map, dropped), 0, label_map)
        return select_objects(sample, keep, image, label_map=label_map)


def _label_areas(label_map: np.ndarray, object_ids: list[int]) -> np.ndarray:
    """Pixel count of each object id in a label map (0 for id 0, the background)."""
    ids, counts = np.unique(label_map, return_counts=True)
    area = dict(zip(ids.tolist(), counts.tolist()))
    return np.asarray([area.get(oid, 0) if oid != 0 else 0 for oid in object_ids], dtype=np.int64)


def select_objects(
    sample: Sample,
    keep: Sequence[int] | np.ndarray,
    image: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    label_map: np.ndarray | None = None,
) -> Sample:
    """A copy of ``sample`` keeping only the objects at positions ``keep`` (with their ids,
    category ids and annotation ids), optionally with a new image and new object planes
    (``masks`` already reduced to ``keep``, or a whole ``label_map``). Without new planes, a
    mask Sample's masks are subset and a label-map Sample keeps its map: unkept labels are
    simply no longer objects."""
    keep = [int(i) for i in keep]

    def pick(values: list[int] | None) -> list[int] | None:
        return None if values is None else [values[i] for i in keep]

    if masks is None and label_map is None:
        if sample.masks is not None:
            masks = sample.masks[keep]
        else:
            label_map = sample.label_map
    return Sample(
        image=sample.image if image is None else image, masks=masks, label_map=label_map,
        object_ids=pick(sample.object_ids), category_ids=pick(sample.category_ids),
        annotation_ids=pick(sample.annotation_ids), path=sample.path, source=sample.source,
    )


def random_window(sample: Sample, size: int, rng: np.random.Generator) -> Sample:
    """A ``size`` x ``size`` window of ``sample`` at full resolution (clipped to the image),
    holding the centre of one object drawn at random (anywhere without objects), with the
    objects it cuts (an object left empty here is dropped later by the ``min_area`` rule).
    The sample itself when it is no larger than the window."""
    h, w = sample.size
    if h <= size and w <= size:
        return sample
    wh, ww = min(size, h), min(size, w)
    boxes = sample.boxes()
    present = np.flatnonzero(boxes[:, 2] > boxes[:, 0])
    if len(present):
        x0, y0, x1, y1 = boxes[int(rng.choice(present))]
        cx, cy = int((x0 + x1) // 2), int((y0 + y1) // 2)
        left = int(rng.integers(max(0, cx - ww + 1), min(cx, w - ww) + 1))
        top = int(rng.integers(max(0, cy - wh + 1), min(cy, h - wh) + 1))
    else:
        left, top = int(rng.integers(0, w - ww + 1)), int(rng.integers(0, h - wh + 1))
    rows, cols = slice(top, top + wh), slice(left, left + ww)
    image = np.ascontiguousarray(sample.image[rows, cols])
    if sample.label_map is not None:
        return select_objects(sample, range(len(sample)), image,
                              label_map=np.ascontiguousarray(sample.label_map[rows, cols]))
    return select_objects(sample, range(len(sample)), image,
                          masks=np.ascontiguousarray(sample.masks[:, rows, cols]))
