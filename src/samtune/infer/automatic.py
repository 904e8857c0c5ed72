"""``AutomaticMaskGenerator``: "segment everything" for any samtune model.

The same records as ``segment_anything.SamAutomaticMaskGenerator`` (SAM, MedSAM, MobileSAM's
copy of it) and ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator``, from the same
parameters, through the :class:`~samtune.models.adapter.Adapter` interface only. What differs
is where the work happens:

- each crop is encoded once; its grid points go through the decoder ``points_per_batch`` at a
  time (one call per batch, and one more for SAM 2's ``use_m2m`` refinement);
- the predicted-IoU and stability filters, mask boxes, the crop-edge filter and both NMS
  passes run on the model's device; the surviving candidates keep only their low-res logits,
  so memory does not grow with the image size;
- masks are upsampled to their crop's size only for the masks that are kept in the end, and
  held cut to their boxes; a full-size mask exists one at a time, while its record is made
  (``binary_mask`` records are full-size by contract; the RLE modes keep memory bounded by
  the objects, not the image).

With ``tile_shape`` (and ``halo``) a large image is processed tile by tile
(:mod:`samtune.infer.tiling`, micro-sam's convention) instead of being shrunk to the model's
input: each tile is encoded on its tile plus halo, its point grid covers its inner tile only
(``points_per_side`` points a side per tile), a mask cut by the outer block's edge is dropped
(the crop-edge filter), so an object that crosses a tile border survives only from a tile in
whose outer block it is whole, and the duplicates that neighbouring tiles find of the same
object are merged by NMS over all tiles (``crop_nms_thresh``, higher predicted IoU wins).
Masks are pasted at their tile's place, so the result has no seams as long as an object
fits in the halo beyond its tile's border. Only one tile's features exist at a time.

The two official generators differ in two places, and so does this one, by the adapter's
``everything`` defaults (``SegmentEverything``, on each family's adapter class):
SAM 2's default ``pred_iou_thresh`` is 0.8 (SAM's 0.88), and SAM 2 applies
``min_mask_region_area`` to the low-res logits of every candidate (holes and sprinkles, as its
image predictor's ``max_hole_area``/``max_sprinkle_area``) where SAM cleans holes and islands
in the final masks and runs box NMS again. (SAM 2's own predictor needs its CUDA extension for
that step and silently skips it without one; here OpenCV does it on any device, so on a machine
without the extension samtune's SAM 2 masks are the cleaned ones the official would give with it.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from segment_anything.utils.amg import (
    build_all_layer_point_grids,
    generate_crop_boxes,
    remove_small_regions,
)
from torchvision.ops import batched_nms

from samtune.errors import SamtuneError
from samtune.infer.mask_ops import (
    fill_holes_and_sprinkles,
    mask_boxes,
    near_crop_edge,
    stability_scores,
    xyxy_to_xywh,
)
from samtune.infer.rle import encode_coco_rle, masks_to_uncompressed_rles
from samtune.infer.tiling import check_tiling, make_tiles
from samtune.models.adapter import Adapter, Features, Prompts, check_rgb_uint8, require_adapter
from samtune.metrics import mask_areas

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

#: full-size logits computed at once when scoring masks (8M pixels, 32 MiB of float32)
_CHUNK_PIXELS = 1 << 23

#: settings of the reference projects, as keyword arguments of :class:`AutomaticMaskGenerator`
PRESETS: dict[str, dict[str, Any]] = {
    # ``labpics_sam2`` (SAM 2 on LabPics), seg_all.py: denser recall with crops and the m2m refinement
    "labpics_sam2": {"points_per_side": 32, "points_per_batch": 128, "pred_iou_thresh": 0.7,
           "stability_score_thresh": 0.92, "stability_score_offset": 0.7, "crop_n_layers": 1,
           "box_nms_thresh": 0.7, "crop_n_points_downscale_factor": 2,
           "min_mask_region_area": 25, "use_m2m": True},
    # ``finestsam_points`` (finestSAM): SAM's defaults plus removal of regions under 300 pixels
    "finestsam_points": {"points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
           "stability_score_offset": 1.0, "box_nms_thresh": 0.7, "min_mask_region_area": 300},
}


@dataclass
class _Candidates:
    """Masks that passed the per-batch filters, on the model's device.

    ``low_res`` (N, h, w) are the decoder's logits (after SAM 2's low-res clean-up);
    ``boxes`` are XYXY in the full image; ``point`` indexes the crop's point grid;
    ``classes`` (N, n_classes) the class head's probabilities (n_classes 0 without a head).
    """

    low_res: torch.Tensor
    iou: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    point: torch.Tensor
    crop: torch.Tensor
    classes: torch.Tensor

    def select(self, keep: torch.Tensor) -> _Candidates:
        return _Candidates(*(getattr(self, f.name)[keep] for f in fields(self)))

    def __len__(self) -> int:
        return self.iou.shape[0]

    @classmethod
    def cat(cls, items: Sequence[_Candidates]) -> _Candidates:
        return cls(*(torch.cat([getattr(c, f.name) for c in items]) for f in fields(cls)))


@dataclass
class _Crop:
    """One crop of the image: its XYXY box, grid points (crop pixels) and model input size."""

    box: list[int]
    points: np.ndarray
    input_size: tuple[int, int] = (0, 0)

    @property
    def size(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return y1 - y0, x1 - x0


class AutomaticMaskGenerator:
    """Masks for everything in an image, from a grid of single-point prompts.

    Arguments (the official generators' names and defaults):
      model: a samtune model (:func:`samtune.load_model`), any family.
      points_per_side: grid points along each side (``points_per_side**2`` in all); None when
        ``point_grids`` is given.
      points_per_batch: points decoded together (times 3 masks with ``multimask_output``).
      pred_iou_thresh: keep masks whose predicted IoU is above it; None = the family's
        official default (0.88 SAM/MobileSAM, 0.8 SAM 2). 0 disables the filter.
      stability_score_thresh: keep masks whose stability score (IoU of the mask at
        ``mask_threshold +- stability_score_offset``) is at least this. 0 disables it.
      stability_score_offset: the logit shift for the stability score.
      mask_threshold: logits above it are foreground (0.0).
      box_nms_thresh: box IoU above which the lower-scored of two masks of a crop is dropped.
      crop_n_layers: also run on ``(2^i)^2`` crops for i = 1..n (0: the whole image only).
      crop_nms_thresh: box IoU for removing duplicates between crops (smaller crops win).
      crop_overlap_ratio: overlap of neighbouring crops, as a fraction of the short side.
      crop_n_points_downscale_factor: layer i uses ``points_per_side / factor**i`` points.
      point_grids: explicit (P, 2) grids in [0, 1], one per crop layer.
      min_mask_region_area: remove holes and islands (SAM 2: holes and sprinkles in the
        low-res logits) smaller than this many pixels; 0 disables it.
      output_mode: ``"binary_mask"`` (HxW bool arrays), ``"uncompressed_rle"`` or
        ``"coco_rle"`` (pycocotools RLE with ``str`` counts).
      use_m2m: refine every mask once, feeding its low-res logits back with its point: SAM 2's
        option, refused for SAM and MobileSAM, whose official generators have no such step.
      multimask_output: three masks per point (True) or one.
      tile_shape: (rows, columns) of the tiles a large image is processed in; None (default)
        processes the whole image at once, as the official generators.
      halo: (rows, columns) added on every side of a tile for its encoding.

    Reference settings: :data:`PRESETS` holds ``labpics_sam2``'s (SAM 2 LabPics: 32 points, batch 128,
    IoU 0.7, stability 0.92 at offset 0.7, one crop layer with half the points, min area 25,
    m2m) and ``finestsam_points``'s (finestSAM: SAM's defaults with min area 300), e.g.
    ``AutomaticMaskGenerator(model, **PRESETS["labpics_sam2"])``.
    """

    def __init__(
        self,
        model: Adapter,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        tile_shape: tuple[int, int] | None = None,
        halo: tuple[int, int] | None = None,
    ) -> None:
        require_adapter(model, "AutomaticMaskGenerator")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {output_mode!r}")
        _check_int("points_per_batch", points_per_batch, 1)
        _check_int("crop_n_layers", crop_n_layers, 0)
        _check_int("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1)
        if min_mask_region_area < 0:
            raise ValueError(f"min_mask_region_area must be >= 0, got {min_mask_region_area}")
        if stability_score_offset < 0:
            raise ValueError(f"stability_score_offset must be >= 0, got {stability_score_offset}")
        for name, value in (("box_nms_thresh", box_nms_thresh), ("crop_nms_thresh", crop_nms_thresh),
                            ("crop_overlap_ratio", crop_overlap_ratio)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        if use_m2m and not model.everything.mask_to_mask:
            raise SamtuneError(f"use_m2m is SAM 2's mask-to-mask refinement; {model.spec.name} "
                               f"({model.family}) has no such step in its official generator: "
                               "leave use_m2m off")
        self.model = model
        self.point_grids = _point_grids(points_per_side, point_grids, crop_n_layers,
                                        crop_n_points_downscale_factor)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = (model.everything.pred_iou_thresh
                                if pred_iou_thresh is None else float(pred_iou_thresh))
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.mask_threshold = mask_threshold
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.use_m2m = use_m2m
        self.multimask_output = multimask_output
        self.tiling = check_tiling(tile_shape, halo)

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Mask records for an HxWx3 uint8 RGB image, in the official generators' order.

        Each record: ``segmentation`` (per ``output_mode``), ``area`` (pixels), ``bbox``
        (XYWH), ``predicted_iou``, ``point_coords`` ([[x, y]] the prompt, image pixels),
        ``stability_score`` and ``crop_box`` (XYWH), as the official generators; with a class
        head (``model.class_head`` runs), ``category_id`` and its probability
        ``category_score`` too.
        """
        check_rgb_uint8(image)
        h, w = image.shape[:2]
        crops, found = [], []
        for index, crop in enumerate(self._crops((h, w))):
            found.append(self._process_crop(image, crop, index))
            crops.append(crop)
        kept = _Candidates.cat(found)
        if len(crops) > 1 and len(kept):
            if self.tiling is not None and self.crop_n_layers == 0:
                scores = kept.iou  # tiles are peers: the better mask of a duplicate wins
            else:
                areas = torch.tensor([(c.box[2] - c.box[0]) * (c.box[3] - c.box[1]) for c in crops],
                                     device=kept.crop.device)
                scores = 1 / areas[kept.crop]  # prefer masks from smaller crops
            kept = kept.select(batched_nms(kept.boxes.float(), scores,
                                           torch.zeros_like(scores), self.crop_nms_thresh))
        masks = self._box_masks(kept, crops, (h, w))
        if self.min_mask_region_area > 0 and not self.model.everything.regions_at_low_res:
            masks, kept = self._remove_small_regions(masks, kept)
        return self._records(masks, kept, crops)

    def _crops(self, size: tuple[int, int]) -> list[_Crop]:
        """The crops to process, their grid points in crop pixels: the official crop layers
        over the whole image, or over each tile's outer block with the tile's layer-0 grid
        laid over its inner block only."""
        if self.tiling is None:
            regions = [([0, 0, size[1], size[0]], None)]
        else:
            regions = [(list(t.outer), t.inner) for t in make_tiles(size, *self.tiling)]
        crops = []
        for (rx0, ry0, rx1, ry1), inner in regions:
            for (x0, y0, x1, y1), layer in zip(*generate_crop_boxes(
                    (ry1 - ry0, rx1 - rx0), self.crop_n_layers, self.crop_overlap_ratio)):
                box = [x0 + rx0, y0 + ry0, x1 + rx0, y1 + ry0]
                if layer == 0 and inner is not None:
                    ix0, iy0, ix1, iy1 = inner
                    points = (self.point_grids[0] * np.array([[ix1 - ix0, iy1 - iy0]])
                              + np.array([[ix0 - box[0], iy0 - box[1]]]))
                else:
                    points = self.point_grids[layer] * np.array([[x1 - x0, y1 - y0]])
                crops.append(_Crop(box, points))
        return crops

    # --- per crop ---------------------------------------------------------------------------
    def _process_crop(self, image: np.ndarray, crop: _Crop, index: int) -> _Candidates:
        x0, y0, x1, y1 = crop.box
        pixels = np.ascontiguousarray(image[y0:y1, x0:x1])
        batch = self.model.preprocess([pixels])
        features = self.model.encode(batch.images)
        size = batch.original_sizes[0]
        crop.input_size = batch.input_sizes[0]
        coords = self.model.transform_coords(crop.points, size).to(self.model.device)
        found = [self._process_batch(features, coords, start, crop, index, image.shape[:2])
                 for start in range(0, len(coords), self.points_per_batch)]
        candidates = _Candidates.cat(found)
        keep = batched_nms(candidates.boxes.float(), candidates.iou,
                           torch.zeros_like(candidates.iou), self.box_nms_thresh)
        return candidates.select(keep)

    def _process_batch(
        self, features: Features, coords: torch.Tensor, start: int, crop: _Crop, index: int,
        image_size: tuple[int, int],
    ) -> _Candidates:
        """Decode points ``start : start + points_per_batch`` of a crop in one call, filter."""
        device = coords.device
        points = coords[start : start + self.points_per_batch, None, :]
        n = points.shape[0]
        labels = torch.ones(n, 1, dtype=torch.int, device=device)
        prompts = Prompts(torch.zeros(n, dtype=torch.long, device=device), points, labels)
        head = self.model.class_head
        if head is None:
            low_res, iou = self.model.decode(features, prompts, self.multimask_output)
            classes = iou.new_zeros((*iou.shape, 0))
        else:
            low_res, iou, tokens = self.model.decode_tokens(features, prompts,
                                                            self.multimask_output)
            classes = head(tokens, features.image_embed, low_res, prompts.image_index)
            classes = classes.float().softmax(-1)
        k = low_res.shape[1]
        low_res, iou, classes = low_res.flatten(0, 1), iou.flatten(0, 1), classes.flatten(0, 1)
        point = torch.arange(start, start + n, device=device).repeat_interleave(k)
        if self.use_m2m:
            low_res, iou = self._refine(features, points.repeat_interleave(k, dim=0), low_res)
        if self.pred_iou_thresh > 0.0:
            keep = iou > self.pred_iou_thresh
            low_res, iou, point, classes = low_res[keep], iou[keep], point[keep], classes[keep]
        if self.min_mask_region_area > 0 and self.model.everything.regions_at_low_res:
            # at logit 0 whatever mask_threshold is: SAM 2's generator leaves its predictor's
            # threshold (which this step uses) at the default
            low_res = fill_holes_and_sprinkles(low_res[:, None], 0.0, self.min_mask_region_area)[:, 0]
        stability, boxes = self._stability_and_boxes(low_res, crop)
        keep = torch.ones_like(iou, dtype=torch.bool)
        if self.stability_score_thresh > 0.0:
            keep = stability >= self.stability_score_thresh
        x0, y0 = crop.box[:2]
        boxes = boxes + torch.tensor([x0, y0, x0, y0], device=device)
        keep &= ~near_crop_edge(boxes, crop.box, [0, 0, image_size[1], image_size[0]])
        crop_index = torch.full_like(point, index)
        return _Candidates(low_res, iou, stability, boxes, point, crop_index, classes).select(keep)

    def _stability_and_boxes(self, low_res: torch.Tensor, crop: _Crop) -> tuple[torch.Tensor, torch.Tensor]:
        """Stability scores and XYXY boxes (crop frame) of the masks at the crop's size.

        The full-size logits exist only a few masks at a time (about ``_CHUNK_PIXELS``), which
        bounds memory and, on a CPU, keeps them in cache; boxes are only computed for masks
        that pass the stability filter (the others get zeros and are dropped).
        """
        h, w = crop.size
        step = max(1, _CHUNK_PIXELS // (h * w))
        stability = low_res.new_zeros(len(low_res))
        boxes = torch.zeros(len(low_res), 4, dtype=torch.long, device=low_res.device)
        for start in range(0, len(low_res), step):
            logits = self._upsample(low_res[start : start + step], crop)
            scores = stability_scores(logits, self.mask_threshold, self.stability_score_offset)
            stability[start : start + step] = scores
            if self.stability_score_thresh > 0.0:
                passed = (scores >= self.stability_score_thresh).nonzero().flatten()
                boxes[start + passed] = mask_boxes(logits[passed] > self.mask_threshold)
            else:
                boxes[start : start + step] = mask_boxes(logits > self.mask_threshold)
        return stability, boxes

    def _refine(self, features: Features, points: torch.Tensor, low_res: torch.Tensor):
        """SAM 2's m2m: each mask again from its point and its own (clamped) low-res logits,
        one mask per prompt."""
        n = points.shape[0]
        clamp = self.model.output_logit_clamp
        mask_inputs = low_res if clamp is None else low_res.clamp(-clamp, clamp)
        prompts = Prompts(torch.zeros(n, dtype=torch.long, device=points.device), points,
                          torch.ones(n, 1, dtype=torch.int, device=points.device),
                          mask_inputs=mask_inputs[:, None])
        refined, iou = self.model.decode(features, prompts, multimask_output=False)
        return refined[:, 0], iou[:, 0]

    def _upsample(self, low_res: torch.Tensor, crop: _Crop) -> torch.Tensor:
        """(N, h, w) low-res logits -> (N, H, W) logits at the crop's size."""
        if low_res.shape[0] == 0:
            return low_res.new_zeros(0, *crop.size)
        return self.model.postprocess(low_res[:, None], crop.input_size, crop.size)[:, 0]

    # --- whole image ------------------------------------------------------------------------
    def _box_masks(self, kept: _Candidates, crops: list[_Crop], size: tuple[int, int]) -> _BoxMasks:
        """The kept candidates' masks at full resolution, each cut to its box."""
        pieces: list[torch.Tensor] = [kept.iou.new_zeros(0, 0, dtype=torch.bool)] * len(kept)
        boxes = kept.boxes.tolist()
        for index, crop in enumerate(crops):
            x0, y0 = crop.box[:2]
            rows = (kept.crop == index).nonzero().flatten()
            h, w = crop.size
            for chunk in rows.split(max(1, _CHUNK_PIXELS // (h * w))):
                masks = self._upsample(kept.low_res[chunk], crop) > self.mask_threshold
                for row, mask in zip(chunk.tolist(), masks):
                    bx0, by0, bx1, by1 = boxes[row]
                    # (an empty mask has box 0s: the clamped slice is empty or one unset pixel)
                    pieces[row] = mask[max(by0 - y0, 0) : max(by1 - y0 + 1, 0),
                                       max(bx0 - x0, 0) : max(bx1 - x0 + 1, 0)].clone()
        return _BoxMasks(pieces, [(b[0], b[1]) for b in boxes], size)

    def _remove_small_regions(self, masks: _BoxMasks, kept: _Candidates):
        """SAM's clean-up: fill small holes, drop small islands, then box NMS preferring the
        masks that did not change (at the larger of the two NMS thresholds).

        Each mask is cleaned in its box, grown by a background margin wherever the box is not
        at the image border: the margin (>= ``min_mask_region_area`` pixels) joins every
        background region that reaches past the box, as the full image's outside does, so
        the same regions are filled and dropped as on the full-size mask."""
        if len(kept) == 0:
            return masks, kept
        h, w = masks.size
        margin = math.ceil(math.sqrt(self.min_mask_region_area))
        pieces, origins, unchanged = [], [], []
        for piece, (x0, y0) in zip(masks.pieces, masks.origins):
            ph, pw = piece.shape
            left, top = min(margin, x0), min(margin, y0)
            right, bottom = min(margin, w - x0 - pw), min(margin, h - y0 - ph)
            padded = np.pad(piece.cpu().numpy(), ((top, bottom), (left, right)))
            padded, holes = remove_small_regions(padded, self.min_mask_region_area, "holes")
            padded, islands = remove_small_regions(padded, self.min_mask_region_area, "islands")
            piece, (dx, dy) = _trim(padded)
            pieces.append(torch.as_tensor(piece, device=kept.iou.device))
            origins.append((x0 - left + dx, y0 - top + dy))
            unchanged.append(not (holes or islands))
        masks = _BoxMasks(pieces, origins, masks.size)
        kept.boxes = masks.boxes().to(kept.boxes.device)
        scores = torch.tensor(unchanged, dtype=torch.float, device=kept.iou.device)
        keep = batched_nms(kept.boxes.float(), scores, torch.zeros_like(scores),
                           max(self.box_nms_thresh, self.crop_nms_thresh))
        return masks.select(keep.tolist()), kept.select(keep)

    def _records(self, masks: _BoxMasks, kept: _Candidates, crops: list[_Crop]) -> list[dict]:
        if len(kept) == 0:
            return []
        areas = masks.areas()
        # the official types: SAM 2's generator gives float boxes, SAM's integer ones
        number = float if self.model.everything.float_boxes else int
        boxes = [[number(v) for v in b] for b in xyxy_to_xywh(kept.boxes).tolist()]
        crop_xywh = [[number(v) for v in xyxy_to_xywh(torch.tensor(c.box)).tolist()] for c in crops]
        crop_index, point = kept.crop.tolist(), kept.point.tolist()
        iou, stability = kept.iou.float().tolist(), kept.stability.float().tolist()
        head = self.model.class_head
        labels = head.label(kept.classes) if head is not None else None
        records = []
        for i in range(len(kept)):
            full = masks.full(i)  # one full-size mask at a time
            if self.output_mode == "uncompressed_rle":
                segmentation = masks_to_uncompressed_rles(full[None])[0]
            elif self.output_mode == "coco_rle":
                segmentation = encode_coco_rle(full.cpu().numpy())
            else:
                segmentation = full.cpu().numpy()
            crop = crops[crop_index[i]]
            x, y = crop.points[point[i]] + np.array(crop.box[:2])
            records.append({
                "segmentation": segmentation, "area": int(areas[i]), "bbox": boxes[i],
                "predicted_iou": iou[i], "point_coords": [[float(x), float(y)]],
                "stability_score": stability[i], "crop_box": crop_xywh[crop_index[i]],
            })
            if labels is not None:
                records[-1].update(category_id=labels[0][i], category_score=labels[1][i])
        return records


@dataclass
class _BoxMasks:
    """Masks held cut to their boxes: ``pieces[i]`` (h, w) bool with its top-left pixel at
    ``origins[i]`` (x, y) of an image of ``size`` (H, W). Hundreds of small objects on a large
    image cost their boxes' pixels, not hundreds of full planes."""

    pieces: list[torch.Tensor]
    origins: list[tuple[int, int]]
    size: tuple[int, int]

    def full(self, i: int) -> torch.Tensor:
        """(H, W) bool: mask ``i`` pasted into the whole image."""
        piece = self.pieces[i]
        out = torch.zeros(self.size, dtype=torch.bool, device=piece.device)
        x0, y0 = self.origins[i]
        out[y0 : y0 + piece.shape[0], x0 : x0 + piece.shape[1]] = piece
        return out

    def areas(self) -> list[int]:
        return [int(p.sum()) for p in self.pieces]

    def boxes(self) -> torch.Tensor:
        """(N, 4) int64 XYXY boxes, inclusive max indices (zeros for an empty mask)."""
        out = torch.zeros(len(self.pieces), 4, dtype=torch.long)
        for i, (piece, (x0, y0)) in enumerate(zip(self.pieces, self.origins)):
            if piece.numel() and piece.any():
                out[i] = mask_boxes(piece[None]).cpu()[0] + torch.tensor([x0, y0, x0, y0])
        return out

    def select(self, keep: list[int]) -> _BoxMasks:
        return _BoxMasks([self.pieces[i] for i in keep], [self.origins[i] for i in keep], self.size)


def _trim(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """``mask`` cut to the box of its pixels, and that box's (x, y) in ``mask``."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return mask[:0, :0], (0, 0)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], (int(xs.min()), int(ys.min()))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _point_grids(
    points_per_side: int | None,
    point_grids: Sequence[np.ndarray] | None,
    crop_n_layers: int,
    downscale: int,
) -> list[np.ndarray]:
    """The grid of each crop layer, from ``points_per_side`` or checked ``point_grids``."""
    if (points_per_side is None) == (point_grids is None):
        raise ValueError("give exactly one of points_per_side and point_grids "
                         "(pass points_per_side=None with point_grids)")
    if points_per_side is not None:
        _check_int("points_per_side", points_per_side, 1)
        for layer in range(crop_n_layers + 1):  # the official helper divides by zero there
            if int(points_per_side / downscale**layer) == 0:
                raise ValueError(
                    f"crop layer {layer} gets no points: points_per_side={points_per_side} / "
                    f"crop_n_points_downscale_factor={downscale}**{layer} < 1; lower one of them")
        return build_all_layer_point_grids(points_per_side, crop_n_layers, downscale)
    grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
    if len(grids) < crop_n_layers + 1:
        raise ValueError(f"point_grids has {len(grids)} grid(s); crop_n_layers={crop_n_layers} "
                         f"needs {crop_n_layers + 1} (one per layer)")
    for layer, grid in enumerate(grids):
        if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0:
            raise ValueError(f"point_grids[{layer}] must be (P, 2) xy in [0, 1], got shape {grid.shape}")
        if grid.min() < 0 or grid.max() > 1:
            raise ValueError(f"point_grids[{layer}] must lie in [0, 1] (fractions of the crop)")
    return grids
