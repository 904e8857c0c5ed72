"""The LiteMedSAM authors' inference pipeline, written out step by step on their module.

From ``CVPR24_LiteMedSAM_infer.py`` (bowang-lab/MedSAM, branch LiteMedSAM): OpenCV area resize
of the longest side to 256, min-max scaling to [0, 1], zero padding, boxes scaled by
256 / max(H, W) and truncated (``resize_box_to_256``), the decoder's 256x256 logits cropped to
the resized size and upsampled to the original (``postprocess_masks``), sigmoid > 0.5. Their
script takes boxes only; points and mask inputs go through the same prompt encoder call the way
SAM's predictor passes them. Same contract as ``SamPredictor``: ``set_image``, then ``predict``
returning (masks, scores, low-res logits); ``logits`` keeps the last full-size logits.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

SIZE = 256


class AuthorsPipeline:
    """The authors' preprocessing, prompt scaling and postprocessing on their module."""

    def __init__(self, net) -> None:
        self.net = net

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        scale = SIZE / max(h, w)
        new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
        img = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        img = (img - img.min()) / np.clip(img.max() - img.min(), a_min=1e-8, a_max=None)
        img = np.pad(img, ((0, SIZE - new_h), (0, SIZE - new_w), (0, 0)))
        tensor = torch.tensor(img).float().permute(2, 0, 1).unsqueeze(0)
        self.embedding = self.net.image_encoder(tensor)
        self.original, self.new = (h, w), (new_h, new_w)
        self.ratio = SIZE / max(h, w)

    @torch.no_grad()
    def predict(self, box=None, point_coords=None, point_labels=None, mask_input=None,
                multimask_output=False):
        boxes = points = masks = None
        if box is not None:
            box256 = np.zeros_like(np.asarray(box, dtype=np.float64))
            for i in range(4):  # resize_box_to_256: int() of each scaled corner
                box256[i] = int(box[i] * self.ratio)
            boxes = torch.as_tensor(box256[None, None, ...], dtype=torch.float)
        if point_coords is not None:
            coords = torch.as_tensor(np.asarray(point_coords, dtype=np.float64) * self.ratio).float()
            points = (coords[None], torch.as_tensor(point_labels, dtype=torch.int)[None])
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float)[None]
        sparse, dense = self.net.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low_res, iou = self.net.mask_decoder(
            image_embeddings=self.embedding, image_pe=self.net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=multimask_output)
        logits = low_res[..., : self.new[0], : self.new[1]]
        logits = F.interpolate(logits, size=self.original, mode="bilinear", align_corners=False)
        self.logits = logits[0].numpy()
        masks = (torch.sigmoid(logits) > 0.5)[0].numpy()
        return masks, iou[0].numpy(), low_res[0].numpy()


def assert_same_masks(ours: np.ndarray, theirs: np.ndarray, logits: np.ndarray, what: str) -> None:
    """Equal masks. samtune thresholds the logit at 0, the authors the float32 sigmoid at 0.5,
    which rounds to exactly 0.5 for logits below about 6e-8: only such pixels may differ."""
    differ = ours != theirs
    assert not (differ & (np.abs(logits) > 1e-7)).any(), f"{what}: {differ.sum()} pixels differ"
    assert differ.sum() <= 2, what
