"""``Predictor``: the ``SamPredictor`` contract over any samtune model.

Code written for ``segment_anything.SamPredictor`` (or SAM 2's image predictor) works with a
fine-tuned samtune model by swapping the class: ``set_image`` once, then ``predict`` with
points, a box and/or a low-res mask. A batch dimension on the prompts (``box`` of shape (N, 4),
``point_coords`` of shape (N, P, 2)) predicts N objects in one decoder call, as SAM 2's
predictor does; outputs then gain a leading N.

With ``tile_shape`` (and ``halo``), a large image is not shrunk to the model's input: each
tile is encoded on its tile plus halo (:mod:`samtune.infer.tiling`, micro-sam's convention)
when a prompt first needs it, every object is decoded on the tile that contains its prompts'
centre, and its mask is pasted back at the tile's place in the full image.
"""

from __future__ import annotations

import numpy as np
import torch

from samtune.infer.tiling import Tile, check_tiling, make_tiles, prompt_centres, tile_index
from samtune.models.adapter import Adapter, Features, Prompts, check_rgb_uint8


class Predictor:
    """Prompted prediction on one image at a time.

    Arguments:
      model: a samtune model (from :func:`samtune.load_model`).
      mask_threshold: logits above it are foreground (0.0, i.e. probability 0.5, as SAM).
      tile_shape: (rows, columns) of the tiles a large image is cut into; None (default)
        encodes the whole image at once, as the official predictors.
      halo: (rows, columns) added on every side of a tile for its encoding.

    In tiled mode the low-res logits (and ``mask_input``) are in the frame of the object's
    tile, and :meth:`get_image_embedding` is not available (there is one per tile).
    """

    def __init__(self, model: Adapter, mask_threshold: float = 0.0,
                 tile_shape: tuple[int, int] | None = None, halo: tuple[int, int] | None = None) -> None:
        self.model = model
        self.mask_threshold = mask_threshold
        self.tiling = check_tiling(tile_shape, halo)
        self.reset_image()

    def reset_image(self) -> None:
        self.features: Features | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.image: np.ndarray | None = None
        self.tiles: list[Tile] = []
        self._tile_features: dict[int, tuple[Features, tuple[int, int]]] = {}

    @property
    def is_image_set(self) -> bool:
        return self.features is not None or self.image is not None

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an HxWx3 uint8 image (RGB, or BGR with ``image_format="BGR"``)."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        check_rgb_uint8(image)
        if image_format == "BGR":
            image = np.ascontiguousarray(image[..., ::-1])
        self.reset_image()
        if self.tiling is not None:
            self.image, self.original_size = image, image.shape[:2]
            self.tiles = make_tiles(self.original_size, *self.tiling)
            return
        batch = self.model.preprocess([image])
        self.features = self.model.encode(batch.images)
        self.original_size = batch.original_sizes[0]
        self.input_size = batch.input_sizes[0]

    def get_image_embedding(self) -> torch.Tensor:
        """(1, C, h, w) embedding of the current image (untiled mode)."""
        self._require_image()
        if self.features is None:
            raise RuntimeError("a tiled predictor has one embedding per tile: use tile_features(i)")
        return self.features.image_embed

    @torch.no_grad()
    def tile_features(self, index: int) -> tuple[Features, tuple[int, int]]:
        """(features, model input size) of tile ``index``, encoded on its outer block the
        first time it is asked for and kept for the image's later prompts."""
        self._require_image()
        if index not in self._tile_features:
            batch = self.model.preprocess([self.tiles[index].crop(self.image)])
            self._tile_features[index] = (self.model.encode(batch.images), batch.input_sizes[0])
        return self._tile_features[index]

    @torch.no_grad()
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for the prompts, in original image pixels.

        Arguments (as ``SamPredictor.predict``):
          point_coords: (P, 2) xy pixels, or (N, P, 2) for N objects.
          point_labels: (P,) or (N, P): 1 foreground, 0 background.
          box: (4,) xyxy pixels, or (N, 4).
          mask_input: (1, h, w) low-res logits from a previous call, or (N, 1, h, w).
          multimask_output: three candidate masks instead of one.
          return_logits: logits instead of boolean masks.

        Returns (masks (C, H, W), scores (C,), low-res logits (C, h, w)), each with a leading N
        when the prompts carry one.
        """
        self._require_image()
        arrays, batched = self._arrays(point_coords, point_labels, box, mask_input)
        if self.tiling is None:
            out = self._decode(self.features, self.input_size, self.original_size, arrays,
                               multimask_output, return_logits)
        else:
            out = self._decode_tiled(arrays, multimask_output, return_logits)
        return out if batched else tuple(t[0] for t in out)

    def _decode(self, features: Features, input_size: tuple[int, int], size: tuple[int, int],
                arrays: tuple, multimask_output: bool, return_logits: bool) -> tuple[np.ndarray, ...]:
        """(masks, scores, low-res logits) as numpy, for prompts in pixels of an image of
        ``size`` whose encoding is ``features``."""
        low_res, scores = self.model.decode(features, self._prompts(*arrays, size), multimask_output)
        masks = self.model.postprocess(low_res, input_size, size)
        if not return_logits:
            masks = masks > self.mask_threshold
        clamp = self.model.output_logit_clamp
        if clamp is not None:
            low_res = low_res.clamp(-clamp, clamp)
        return tuple(t.float().cpu().numpy() if t.dtype != torch.bool else t.cpu().numpy()
                     for t in (masks, scores, low_res))

    def _decode_tiled(self, arrays: tuple, multimask_output: bool, return_logits: bool
                      ) -> tuple[np.ndarray, ...]:
        """Each object decoded on the tile of its prompts' centre, pasted into the image.

        In the tile's frame a box is clipped to the outer block, and a point outside the
        outer block becomes padding (label -1), as micro-sam drops it.
        """
        pc, pl, b, m = arrays
        if pc is None and b is None:
            if m is not None:
                raise ValueError("a tiled predictor routes objects by their points or box; a "
                                 "mask_input alone does not say which tile it belongs to")
            return self._decode_unprompted(multimask_output, return_logits)
        n = max(len(a) for a in arrays if a is not None)
        which = tile_index(prompt_centres(pc, pl, b), self.original_size, self.tiling[0])
        which = np.broadcast_to(which, (n,)) if len(which) == 1 else which
        k = 3 if multimask_output else 1
        masks = np.zeros((n, k, *self.original_size), dtype=np.float32 if return_logits else bool)
        if return_logits:
            masks[:] = -np.inf  # no evidence outside the tile: the logits of "background"
        scores = np.zeros((n, k), dtype=np.float32)
        low_res = np.zeros((n, k, *self.model.mask_input_size), dtype=np.float32)
        for index in np.unique(which):
            rows = np.flatnonzero(which == index)
            tile = self.tiles[int(index)]
            features, input_size = self.tile_features(int(index))
            local = self._to_tile(arrays, rows, tile)
            t_masks, t_scores, t_low = self._decode(features, input_size, tile.outer_size, local,
                                                    multimask_output, return_logits)
            x0, y0, x1, y1 = tile.outer
            masks[rows, :, y0:y1, x0:x1] = t_masks
            scores[rows], low_res[rows] = t_scores, t_low
        return masks, scores, low_res

    def _decode_unprompted(self, multimask_output: bool, return_logits: bool) -> tuple[np.ndarray, ...]:
        """No prompt at all (the prompt-free use of a fine-tuned decoder): every tile decoded
        without one, each pixel taken from the tile whose inner block holds it; the scores and
        low-res logits are those of the first tile."""
        k = 3 if multimask_output else 1
        masks = np.zeros((1, k, *self.original_size), dtype=np.float32 if return_logits else bool)
        first = None
        for tile in self.tiles:
            features, input_size = self.tile_features(tile.index)
            out = self._decode(features, input_size, tile.outer_size, (None,) * 4,
                               multimask_output, return_logits)
            first = first or out
            x0, y0, x1, y1 = tile.inner
            ox, oy = tile.outer[:2]
            masks[:, :, y0:y1, x0:x1] = out[0][:, :, y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        return masks, first[1], first[2]

    @staticmethod
    def _to_tile(arrays: tuple, rows: np.ndarray, tile: Tile) -> tuple:
        """Objects ``rows`` of the prompt arrays, in the pixels of ``tile``'s outer block."""
        pc, pl, b, m = (None if a is None else (a if len(a) == 1 else a[rows]) for a in arrays)
        h, w = tile.outer_size
        if pc is not None:
            pc = pc - tile.offset
            inside = (pc[..., 0] >= 0) & (pc[..., 1] >= 0) & (pc[..., 0] < w) & (pc[..., 1] < h)
            pl = np.where(inside, pl, -1)
        if b is not None:
            b = b - np.tile(tile.offset, 2)
            b = np.clip(b, 0, [w, h, w, h])
        return pc, pl, b, m

    def _arrays(self, point_coords, point_labels, box, mask_input) -> tuple[tuple, bool]:
        """The prompts as batched numpy arrays ((N, P, 2), (N, P), (N, 4), (N, 1, h, w)),
        checked, and whether the caller gave a batch dimension."""
        batched = False
        pc = pl = b = m = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            pc = np.asarray(point_coords, dtype=np.float64)
            pl = np.asarray(point_labels)
            if pc.ndim == 2:
                pc, pl = pc[None], pl[None]
            else:
                batched = True
            if pc.ndim != 3 or pc.shape[-1] != 2 or pl.shape != pc.shape[:2]:
                raise ValueError(
                    f"point_coords must be (P, 2) or (N, P, 2) with point_labels (P,) or (N, P); "
                    f"got {np.shape(point_coords)} and {np.shape(point_labels)}"
                )
        if box is not None:
            b = np.asarray(box, dtype=np.float64)
            if b.ndim == 1:
                b = b[None]
            else:
                batched = True
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"box must be (4,) or (N, 4) xyxy, got {np.shape(box)}")
        if mask_input is not None:
            m = np.asarray(mask_input, dtype=np.float32)
            if m.ndim == 3:
                m = m[None]
            elif m.ndim == 4 and m.shape[0] > 1:
                batched = True
            if m.ndim != 4 or tuple(m.shape[-2:]) != self.model.mask_input_size:
                raise ValueError(
                    f"mask_input must be (1, h, w) or (N, 1, h, w) with (h, w) = "
                    f"{self.model.mask_input_size}, got {tuple(np.shape(mask_input))}"
                )
        counts = [len(a) for a in (pc, b, m) if a is not None]
        if any(c not in (1, max(counts, default=1)) for c in counts):
            raise ValueError(f"prompts disagree on the number of objects: {counts}")
        return (pc, pl, b, m), batched

    def _prompts(self, pc, pl, b, m, size: tuple[int, int]) -> Prompts:
        """Model-input prompts from the batched arrays, for an image of ``size``."""
        device = self.model.device
        points = labels = boxes = masks = None
        if pc is not None:
            points = self.model.transform_coords(pc, size).to(device)
            labels = torch.as_tensor(pl, dtype=torch.int, device=device)
        if b is not None:
            boxes = self.model.transform_boxes(b, size).to(device)
        if m is not None:
            masks = torch.as_tensor(m, dtype=torch.float, device=device)
        n = max((len(t) for t in (points, boxes, masks) if t is not None), default=1)
        points, labels, boxes, masks = (
            None if t is None else (t.expand(n, *t.shape[1:]) if t.shape[0] == 1 else t)
            for t in (points, labels, boxes, masks)
        )
        index = torch.zeros(n, dtype=torch.long, device=device)
        return Prompts(index, points, labels, boxes, masks)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
