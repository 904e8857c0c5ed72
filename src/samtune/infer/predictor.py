"""``Predictor``: the ``SamPredictor`` contract (and SAM 2's additions) over any samtune model.

Code written for ``segment_anything.SamPredictor`` or SAM 2's ``SAM2ImagePredictor`` works
with a fine-tuned samtune model by swapping the class: ``set_image`` once, then ``predict``
with points, a box and/or a low-res mask. A batch dimension on the prompts (``box`` of shape
(N, 4), ``point_coords`` of shape (N, P, 2)) predicts N objects in one decoder call, as SAM 2's
predictor does; outputs then gain a leading N. SAM 2's ``set_image_batch`` / ``predict_batch``
and ``normalize_coords``, and SamPredictor's ``set_torch_image`` / ``predict_torch`` (prompts
already in the model input frame), work for every family.

With ``tile_shape`` (and ``halo``), a large image is not shrunk to the model's input: each
tile is encoded on its tile plus halo (:mod:`samtune.infer.tiling`, micro-sam's convention)
when a prompt first needs it, every object is decoded on the tile that contains its prompts'
centre, and its mask is pasted back at the tile's place in the full image.

With a class head (``model.class_head`` runs), every ``predict`` also leaves the category
probabilities of the masks it returned in :attr:`Predictor.class_probs` ((C, n_classes), with
a leading N as the masks; the ids in ``model.class_head.ids``): the return values stay the
official predictors'.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from samtune.infer.tiling import Tile, check_tiling, make_tiles, prompt_centres, tile_index
from samtune.models.adapter import Adapter, Features, Prompts, check_rgb_uint8, require_adapter

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]
#: with the class probabilities (N, K, n_classes; n_classes 0 without a class head)
Decoded = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _numpy(tensors: Sequence[torch.Tensor]) -> tuple[np.ndarray, ...]:
    return tuple(t.float().cpu().numpy() if t.dtype != torch.bool else t.cpu().numpy()
                 for t in tensors)


class Predictor:
    """Prompted prediction on one image (or, after ``set_image_batch``, several).

    Arguments:
      model: a samtune model (from :func:`samtune.load_model`); anything else is refused.
      mask_threshold: logits above it are foreground (0.0, i.e. probability 0.5, as SAM).
      tile_shape: (rows, columns) of the tiles a large image is cut into; None (default)
        encodes the whole image at once, as the official predictors.
      halo: (rows, columns) added on every side of a tile for its encoding.

    In tiled mode the low-res logits (and ``mask_input``) are in the frame of the object's
    tile, :meth:`get_image_embedding` is not available (there is one per tile), and images
    are set one at a time with :meth:`set_image`.
    """

    def __init__(self, model: Adapter, mask_threshold: float = 0.0,
                 tile_shape: tuple[int, int] | None = None, halo: tuple[int, int] | None = None) -> None:
        require_adapter(model, "Predictor")
        self.model = model
        self.mask_threshold = mask_threshold
        self.tiling = check_tiling(tile_shape, halo)
        self.reset_image()

    def reset_image(self) -> None:
        #: category probabilities of the masks the latest predict returned (class head only)
        self.class_probs: np.ndarray | None = None
        self.features: Features | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.image: np.ndarray | None = None
        self.tiles: list[Tile] = []
        self._tile_features: dict[int, tuple[Features, tuple[int, int]]] = {}
        self._original_sizes: list[tuple[int, int]] = []
        self._input_sizes: list[tuple[int, int]] = []
        self._is_batch = False

    @property
    def is_image_set(self) -> bool:
        return self.features is not None or self.image is not None

    # --- images -----------------------------------------------------------------------------
    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an HxWx3 uint8 image (RGB, or BGR with ``image_format="BGR"``)."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        check_rgb_uint8(image)
        if image_format == "BGR":
            image = np.ascontiguousarray(image[..., ::-1])
        if self.tiling is not None:
            self.reset_image()
            self.image, self.original_size = image, image.shape[:2]
            self.tiles = make_tiles(self.original_size, *self.tiling)
            return
        self._encode(self.model.preprocess([image]).images, [image.shape[:2]], batch=False)

    @torch.no_grad()
    def set_image_batch(self, image_list: Sequence[np.ndarray]) -> None:
        """Encode several HxWx3 uint8 RGB images in one encoder call, for
        :meth:`predict_batch` (SAM 2's ``set_image_batch``)."""
        self._require_untiled("set_image_batch")
        if not isinstance(image_list, (list, tuple)) or not image_list:
            raise ValueError("set_image_batch takes a non-empty list of HxWx3 uint8 images")
        for i, image in enumerate(image_list):
            check_rgb_uint8(image, f"image {i}")
        self._encode(self.model.preprocess(list(image_list)).images,
                     [image.shape[:2] for image in image_list], batch=True)

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor,
                        original_image_size: tuple[int, ...]) -> None:
        """Encode a (1, 3, h, w) image already resized as the family resizes (values 0-255,
        not normalized, not padded), as ``SamPredictor.set_torch_image``; prompts then go to
        :meth:`predict_torch` in the model input frame."""
        self._require_untiled("set_torch_image")
        if transformed_image.ndim != 4 or transformed_image.shape[:2] != (1, 3):
            raise ValueError(f"set_torch_image takes a 1x3xHxW tensor, got "
                             f"{tuple(transformed_image.shape)}")
        pixels = transformed_image.to(self.model.device)
        images = self.model.preprocessor.finish(pixels)
        self._encode(images, [tuple(original_image_size)[:2]], batch=False,
                     input_sizes=[tuple(transformed_image.shape[-2:])])

    def _encode(self, images: torch.Tensor, original_sizes, batch: bool, input_sizes=None) -> None:
        self.reset_image()
        self.features = self.model.encode(images)
        self._original_sizes = [(int(h), int(w)) for h, w in original_sizes]
        self._input_sizes = (list(input_sizes) if input_sizes is not None else
                             [self.model.input_size_for(s) for s in self._original_sizes])
        self._is_batch = batch
        if not batch:
            self.original_size, self.input_size = self._original_sizes[0], self._input_sizes[0]

    def get_image_embedding(self) -> torch.Tensor:
        """(B, C, h, w) embedding of the current image(s); B = 1 after ``set_image``
        (untiled mode)."""
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

    # --- prompts in image pixels ------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> Outputs:
        """Masks for the prompts, in original image pixels.

        Arguments (as ``SamPredictor.predict``):
          point_coords: (P, 2) xy pixels, or (N, P, 2) for N objects.
          point_labels: (P,) or (N, P): 1 foreground, 0 background.
          box: (4,) xyxy pixels, or (N, 4).
          mask_input: (1, h, w) low-res logits from a previous call, or (N, 1, h, w).
          multimask_output: three candidate masks instead of one.
          return_logits: logits instead of boolean masks.
          normalize_coords: True (the default): coordinates in pixels; False: as fractions
            of the image width and height (SAM 2's option).

        Returns (masks (C, H, W), scores (C,), low-res logits (C, h, w)), each with a leading N
        when the prompts carry one.
        """
        self._require_image()
        if self._is_batch:
            raise RuntimeError("images were set with set_image_batch: call predict_batch, or "
                               "set_image for one image")
        return self._predict_image(0, point_coords, point_labels, box, mask_input,
                                   multimask_output, return_logits, normalize_coords)

    @torch.no_grad()
    def predict_batch(
        self,
        point_coords_batch: Sequence[np.ndarray | None] | None = None,
        point_labels_batch: Sequence[np.ndarray | None] | None = None,
        box_batch: Sequence[np.ndarray | None] | None = None,
        mask_input_batch: Sequence[np.ndarray | None] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """:meth:`predict` for each image of ``set_image_batch``, prompts given per image
        (lists as long as the batch, or None); returns lists of masks, scores and low-res
        logits, as SAM 2's ``predict_batch``."""
        self._require_image()
        if not self._is_batch:
            raise RuntimeError("predict_batch needs images set with set_image_batch")
        n = len(self._original_sizes)
        given = {"point_coords_batch": point_coords_batch, "point_labels_batch": point_labels_batch,
                 "box_batch": box_batch, "mask_input_batch": mask_input_batch}
        for name, value in given.items():
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries for {n} images")
        out: tuple[list, list, list] = ([], [], [])
        probs = []
        for i in range(n):
            def pick(batch):
                return None if batch is None else batch[i]

            result = self._predict_image(
                i, pick(point_coords_batch), pick(point_labels_batch), pick(box_batch),
                pick(mask_input_batch), multimask_output, return_logits, normalize_coords)
            for bucket, value in zip(out, result):
                bucket.append(value)
            probs.append(self.class_probs)
        self.class_probs = probs if self.model.class_head is not None else None
        return out

    def _predict_image(self, index: int, point_coords, point_labels, box, mask_input,
                       multimask_output: bool, return_logits: bool,
                       normalize_coords: bool) -> Outputs:
        arrays, batched = self._arrays(point_coords, point_labels, box, mask_input)
        size = self._original_sizes[index] if self.tiling is None else self.original_size
        if not normalize_coords:
            arrays = self._to_pixels(arrays, size)
        if self.tiling is None:
            prompts = self._prompts(*arrays, size, index)
            out = _numpy(self._decode(self.features, self._input_sizes[index], size, prompts,
                                      multimask_output, return_logits))
        else:
            out = self._decode_tiled(arrays, multimask_output, return_logits)
        if not batched:
            out = tuple(t[0] for t in out)
        self.class_probs = out[3] if self.model.class_head is not None else None
        return out[:3]

    # --- prompts in the model input frame ---------------------------------------------------
    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``SamPredictor.predict_torch``: B objects' prompts as tensors already in model
        input pixels (``point_coords`` (B, P, 2), ``point_labels`` (B, P), ``boxes`` (B, 4),
        ``mask_input`` (B, 1, h, w)); returns masks (B, C, H, W) at the original size, scores
        (B, C) and low-res logits (B, C, h, w), as tensors on the model's device."""
        self._require_image()
        self._require_untiled("predict_torch")
        if self._is_batch:
            raise RuntimeError("predict_torch works on the image of set_image/set_torch_image")
        device = self.model.device
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_labels must be given with point_coords")
        tensors = [None if t is None else t.to(device)
                   for t in (point_coords, point_labels, boxes, mask_input)]
        counts = {len(t) for t in tensors if t is not None}
        if len(counts) > 1:
            raise ValueError(f"prompts disagree on the number of objects: {sorted(counts)}")
        n = counts.pop() if counts else 1
        points, labels, box_t, masks = tensors
        prompts = Prompts(torch.zeros(n, dtype=torch.long, device=device), points,
                          None if labels is None else labels.to(torch.int), box_t,
                          None if masks is None else masks.float())
        *out, probs = self._decode(self.features, self.input_size, self.original_size, prompts,
                                   multimask_output, return_logits)
        self.class_probs = probs.cpu().numpy() if self.model.class_head is not None else None
        return tuple(out)

    # --- shared -----------------------------------------------------------------------------
    def _decode(self, features: Features, input_size: tuple[int, int], size: tuple[int, int],
                prompts: Prompts, multimask_output: bool, return_logits: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(masks, scores, low-res logits, class probabilities) for model-input prompts on an
        image of ``size`` whose encoding is ``features`` (no classes without a class head)."""
        head = self.model.class_head
        if head is None:
            low_res, scores = self.model.decode(features, prompts, multimask_output)
            probs = scores.new_zeros((*scores.shape, 0))
        else:
            low_res, scores, tokens = self.model.decode_tokens(features, prompts, multimask_output)
            probs = head(tokens, features.image_embed, low_res, prompts.image_index)
            probs = probs.float().softmax(-1)
        masks = self.model.postprocess(low_res, input_size, size)
        if not return_logits:
            masks = masks > self.mask_threshold
        clamp = self.model.output_logit_clamp
        if clamp is not None:
            low_res = low_res.clamp(-clamp, clamp)
        return masks, scores, low_res, probs

    def _decode_tiled(self, arrays: tuple, multimask_output: bool, return_logits: bool) -> Decoded:
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
        head = self.model.class_head
        probs = np.zeros((n, k, 0 if head is None else len(head.ids)), dtype=np.float32)
        for index in np.unique(which):
            rows = np.flatnonzero(which == index)
            tile = self.tiles[int(index)]
            t_masks, t_scores, t_low, t_probs = self._decode_tile(
                tile, self._to_tile(arrays, rows, tile), multimask_output, return_logits)
            x0, y0, x1, y1 = tile.outer
            masks[rows, :, y0:y1, x0:x1] = t_masks
            scores[rows], low_res[rows], probs[rows] = t_scores, t_low, t_probs
        return masks, scores, low_res, probs

    def _decode_tile(self, tile: Tile, arrays: tuple, multimask_output: bool,
                     return_logits: bool) -> Decoded:
        """:meth:`_decode` on ``tile``'s encoding, prompts in the pixels of its outer block."""
        features, input_size = self.tile_features(tile.index)
        prompts = self._prompts(*arrays, tile.outer_size)
        return _numpy(self._decode(features, input_size, tile.outer_size, prompts,
                                   multimask_output, return_logits))

    def _decode_unprompted(self, multimask_output: bool, return_logits: bool) -> Decoded:
        """No prompt at all (the prompt-free use of a fine-tuned decoder): every tile decoded
        without one, each pixel taken from the tile whose inner block holds it; the scores,
        low-res logits and class probabilities are those of the first tile."""
        k = 3 if multimask_output else 1
        masks = np.zeros((1, k, *self.original_size), dtype=np.float32 if return_logits else bool)
        first = None
        for tile in self.tiles:
            out = self._decode_tile(tile, (None,) * 4, multimask_output, return_logits)
            first = first or out
            x0, y0, x1, y1 = tile.inner
            ox, oy = tile.outer[:2]
            masks[:, :, y0:y1, x0:x1] = out[0][:, :, y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        return masks, first[1], first[2], first[3]

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

    @staticmethod
    def _to_pixels(arrays: tuple, size: tuple[int, int]) -> tuple:
        """Prompt arrays given as fractions of the width and height of an image of ``size``
        (SAM 2's ``normalize_coords=False``), in its pixels."""
        pc, pl, b, m = arrays
        h, w = size
        return (None if pc is None else pc * [w, h], pl,
                None if b is None else b * [w, h, w, h], m)

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

    def _prompts(self, pc, pl, b, m, size: tuple[int, int], index: int = 0) -> Prompts:
        """Model-input prompts from the batched arrays (pixels of an image of ``size``), for
        image ``index`` of the encoded batch."""
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
        image_index = torch.full((n,), index, dtype=torch.long, device=device)
        return Prompts(image_index, points, labels, boxes, masks)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def _require_untiled(self, what: str) -> None:
        if self.tiling is not None:
            raise RuntimeError(f"{what} is not available on a tiled predictor: set one image at "
                               "a time with set_image")
