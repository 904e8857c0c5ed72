"""Run-length encodings of binary masks: the two forms SAM's mask records use.

- *uncompressed RLE* ``{"size": [H, W], "counts": [int, ...]}``: run lengths over the mask in
  column-major (Fortran) order, starting with a run of zeros (possibly 0 long). This is what
  the official automatic mask generators return with ``output_mode="uncompressed_rle"``.
- *COCO RLE* ``{"size": [H, W], "counts": str}``: pycocotools' compressed form, with
  ``counts`` decoded to ``str`` so that it goes straight into JSON (COCO results and
  instance files).

:func:`encode_coco_rle` / :func:`encode_coco_rles` are what eval and predict use to write
COCO files; :func:`coco_results` turns automatic-mask records into COCO detection results
(what ``COCO.loadRes`` reads).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils


def masks_to_uncompressed_rles(masks: torch.Tensor | np.ndarray) -> list[dict[str, Any]]:
    """(N, H, W) bool masks -> N uncompressed RLEs (column-major run lengths).

    Runs are found for the whole batch at once on the masks' device; only the run lengths
    come back to the host.
    """
    masks = torch.as_tensor(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    if n == 0:
        return []
    flat = masks.bool().transpose(1, 2).reshape(n, h * w)
    # boundaries of the runs: 0, every index where the value changes, and the end
    change = torch.zeros(n, h * w + 1, dtype=torch.bool, device=flat.device)
    change[:, 1:-1] = flat[:, 1:] != flat[:, :-1]
    change[:, 0] = True
    change[:, -1] = True
    rows, cols = change.nonzero(as_tuple=True)
    per_row = torch.bincount(rows, minlength=n).tolist()
    starts_with_one = flat[:, 0].tolist()
    out = []
    for bounds, first in zip(torch.split(cols, per_row), starts_with_one):
        counts = torch.diff(bounds).tolist()
        out.append({"size": [h, w], "counts": ([0] + counts) if first else counts})
    return out


def encode_coco_rles(masks: np.ndarray | torch.Tensor) -> list[dict[str, Any]]:
    """(N, H, W) bool masks -> N COCO RLEs with ``counts`` as ``str`` (JSON-ready)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [_str_counts(rle) for rle in rles]


def encode_coco_rle(mask: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """(H, W) bool mask -> one COCO RLE with ``counts`` as ``str`` (JSON-ready)."""
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    return encode_coco_rles(mask[None])[0]


def uncompressed_to_coco_rle(rle: Mapping[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO RLE (``counts`` as ``str``), as the official generators do
    for ``output_mode="coco_rle"``."""
    h, w = rle["size"]
    return _str_counts(mask_utils.frPyObjects(dict(rle), h, w))


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Either RLE form (``counts`` as list, ``str`` or ``bytes``) -> (H, W) bool mask."""
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = uncompressed_to_coco_rle(rle)
    elif isinstance(counts, str):
        rle = {"size": list(rle["size"]), "counts": counts.encode("ascii")}
    return mask_utils.decode(dict(rle)).astype(bool)


def rle_area(rle: Mapping[str, Any]) -> int:
    """Foreground pixel count of either RLE form."""
    counts = rle["counts"]
    if isinstance(counts, list):
        return int(sum(counts[1::2]))
    if isinstance(counts, str):
        rle = {"size": list(rle["size"]), "counts": counts.encode("ascii")}
    return int(mask_utils.area(dict(rle)))


def coco_results(
    records: Iterable[Mapping[str, Any]],
    image_id: int,
    category_id: int = 1,
    score_key: str = "predicted_iou",
) -> list[dict[str, Any]]:
    """Automatic-mask records (any ``output_mode``) -> COCO detection results for one image.

    Each result has ``image_id``, ``category_id`` (the record's own where a class head gave
    it one, else ``category_id``), ``segmentation`` (COCO RLE, ``str``
    counts), ``score`` (the record's ``score_key``), ``bbox`` (XYWH) and ``area``: the list
    ``json.dump`` writes and ``COCO.loadRes`` reads.
    """
    out = []
    for record in records:
        seg = record["segmentation"]
        if isinstance(seg, Mapping):
            rle = uncompressed_to_coco_rle(seg) if isinstance(seg["counts"], list) else \
                {"size": list(seg["size"]), "counts": _as_str(seg["counts"])}
        else:
            rle = encode_coco_rle(seg)
        out.append({
            "image_id": int(image_id), "category_id": int(record.get("category_id", category_id)),
            "segmentation": rle,
            "score": float(record[score_key]), "bbox": [float(v) for v in record["bbox"]],
            "area": float(record.get("area", rle_area(rle))),
        })
    return out


def _as_str(counts: str | bytes) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def _str_counts(rle: Mapping[str, Any]) -> dict[str, Any]:
    return {"size": [int(s) for s in rle["size"]], "counts": _as_str(rle["counts"])}
