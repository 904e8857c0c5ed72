"""``Predictor``: the ``SamPredictor`` contract over any samtune model.

Code written for ``segment_anything.SamPredictor`` (or SAM 2's image predictor) works with a
fine-tuned samtune model by swapping the class: ``set_image`` once, then ``predict`` with
points, a box and/or a low-res mask. A batch dimension on the prompts (``box`` of shape (N, 4),
``point_coords`` of shape (N, P, 2)) predicts N objects in one decoder call, as SAM 2's
predictor does; outputs then gain a leading N.
"""

from __future__ import annotations

import numpy as np
import torch

from samtune.models.adapter import Adapter, Features, Prompts, check_rgb_uint8


class Predictor:
    """Prompted prediction on one image at a time.

    Arguments:
      model: a samtune model (from :func:`samtune.load_model`).
      mask_threshold: logits above it are foreground (0.0, i.e. probability 0.5, as SAM).
    """

    def __init__(self, model: Adapter, mask_threshold: float = 0.0) -> None:
        self.model = model
        self.mask_threshold = mask_threshold
        self.reset_image()

    def reset_image(self) -> None:
        self.features: Features | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    @property
    def is_image_set(self) -> bool:
        return self.features is not None

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an HxWx3 uint8 image (RGB, or BGR with ``image_format="BGR"``)."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        check_rgb_uint8(image)
        if image_format == "BGR":
            image = np.ascontiguousarray(image[..., ::-1])
        batch = self.model.preprocess([image])
        self.features = self.model.encode(batch.images)
        self.original_size = batch.original_sizes[0]
        self.input_size = batch.input_sizes[0]

    def get_image_embedding(self) -> torch.Tensor:
        """(1, C, h, w) embedding of the current image."""
        self._require_image()
        return self.features.image_embed

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
        prompts, batched = self._prompts(point_coords, point_labels, box, mask_input)
        low_res, scores = self.model.decode(self.features, prompts, multimask_output)
        masks = self.model.postprocess(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.mask_threshold
        clamp = self.model.output_logit_clamp
        if clamp is not None:
            low_res = low_res.clamp(-clamp, clamp)
        out = tuple(t.float().cpu().numpy() if t.dtype != torch.bool else t.cpu().numpy()
                    for t in (masks, scores, low_res))
        return out if batched else tuple(t[0] for t in out)

    def _prompts(self, point_coords, point_labels, box, mask_input) -> tuple[Prompts, bool]:
        device = self.model.device
        counts, batched = [], False
        points = labels = boxes = masks = None
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
            points = self.model.transform_coords(pc, self.original_size).to(device)
            labels = torch.as_tensor(pl, dtype=torch.int, device=device)
            counts.append(len(pc))
        if box is not None:
            b = np.asarray(box, dtype=np.float64)
            if b.ndim == 1:
                b = b[None]
            else:
                batched = True
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"box must be (4,) or (N, 4) xyxy, got {np.shape(box)}")
            boxes = self.model.transform_boxes(b, self.original_size).to(device)
            counts.append(len(b))
        if mask_input is not None:
            m = torch.as_tensor(np.asarray(mask_input), dtype=torch.float, device=device)
            if m.ndim == 3:
                m = m[None]
            elif m.ndim == 4 and m.shape[0] > 1:
                batched = True
            if m.ndim != 4 or tuple(m.shape[-2:]) != self.model.mask_input_size:
                raise ValueError(
                    f"mask_input must be (1, h, w) or (N, 1, h, w) with (h, w) = "
                    f"{self.model.mask_input_size}, got {tuple(np.shape(mask_input))}"
                )
            masks = m
            counts.append(len(m))
        n = max(counts, default=1)
        if any(c not in (1, n) for c in counts):
            raise ValueError(f"prompts disagree on the number of objects: {counts}")
        points, labels, boxes, masks = (
            None if t is None else (t.expand(n, *t.shape[1:]) if t.shape[0] == 1 else t)
            for t in (points, labels, boxes, masks)
        )
        index = torch.zeros(n, dtype=torch.long, device=device)
        return Prompts(index, points, labels, boxes, masks), batched

    def _require_image(self) -> None:
        if self.features is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
