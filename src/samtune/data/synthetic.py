"""Generated segmentation data for tests and the demo, and writers for every layout samtune
reads.

A :class:`Scene` is textured shapes (ellipses, rectangles, polygons, thin cable-like curves)
on a textured background with an instance label map, the same for the same seed. The
``write_*`` functions lay scenes out as each reference project expects its data, so every
reader is tested on files shaped like the users' own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from samtune.files import atomic_path, write_json, write_png

CATEGORIES: dict[int, str] = {1: "ellipse", 2: "rectangle", 3: "polygon", 4: "cable", 5: "ring"}
#: The kinds a scene draws from unless told otherwise. Rings (an ellipse with an elliptic hole
#: that shows the background, like a vessel seen from above or a cell membrane) are asked for
#: by name: the demo uses them, because a box around a ring is where a pretrained SAM fills the
#: hole.
KINDS = ("ellipse", "rectangle", "polygon", "cable")


@dataclass
class Scene:
    """An HxWx3 uint8 RGB image, its (H, W) int32 label map with ids 1..N (0 = background),
    the category id of each object (``category_ids[i]`` for id ``i + 1``) and a file stem."""

    image: np.ndarray
    label_map: np.ndarray
    category_ids: list[int]
    name: str

    def masks(self) -> list[np.ndarray]:
        """One (H, W) bool mask per object, in id order."""
        return [self.label_map == i + 1 for i in range(len(self.category_ids))]


def texture(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8: a random colour with smooth blotches, stripes and fine noise."""
    h, w = hw
    colour = rng.uniform(40, 215, size=3)
    blotches = cv2.resize(rng.normal(0, 25, size=(4, 4, 3)), (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w]
    angle, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
    stripes = 15 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    noise = rng.normal(0, 6, size=(h, w, 3))
    return np.clip(colour + blotches + stripes[..., None] + noise, 0, 255).astype(np.uint8)


def shape_mask(rng: np.random.Generator, kind: str, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of one random shape of ``kind`` (one of :data:`KINDS`)."""
    h, w = hw
    canvas = np.zeros(hw, dtype=np.uint8)
    side = min(h, w)
    cx, cy = int(rng.integers(w // 6, w - w // 6)), int(rng.integers(h // 6, h - h // 6))
    if kind == "ellipse":
        axes = (int(rng.integers(side // 12 + 2, side // 4 + 3)),
                int(rng.integers(side // 12 + 2, side // 4 + 3)))
        cv2.ellipse(canvas, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == "ring":
        axes = (int(rng.integers(side // 8 + 3, side // 4 + 4)),
                int(rng.integers(side // 8 + 3, side // 4 + 4)))
        angle = float(rng.uniform(0, 180))
        hole = tuple(max(1, int(a * rng.uniform(0.45, 0.7))) for a in axes)
        cv2.ellipse(canvas, (cx, cy), axes, angle, 0, 360, 1, -1)
        cv2.ellipse(canvas, (cx, cy), hole, angle, 0, 360, 0, -1)
    elif kind == "rectangle":
        half = rng.integers(side // 12 + 2, side // 4 + 3, size=2)
        cv2.rectangle(canvas, (cx - int(half[0]), cy - int(half[1])),
                      (cx + int(half[0]), cy + int(half[1])), 1, -1)
    elif kind == "polygon":
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(side / 10 + 2, side / 4 + 3, n)
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    elif kind == "cable":
        t = np.linspace(0, 1, 40)[:, None]
        ends = rng.uniform([0, 0], [w, h], size=(4, 2))  # a cubic Bezier across the image
        curve = ((1 - t) ** 3 * ends[0] + 3 * (1 - t) ** 2 * t * ends[1]
                 + 3 * (1 - t) * t ** 2 * ends[2] + t ** 3 * ends[3])
        thickness = max(3, side // 24)
        cv2.polylines(canvas, [np.round(curve).astype(np.int32)], False, 1, thickness)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; choose from {tuple(CATEGORIES.values())}")
    return canvas.astype(bool)


def make_scene(seed: int, size: tuple[int, int] = (64, 80), n_objects: tuple[int, int] = (1, 4),
               kinds: Sequence[str] = KINDS, min_area: int = 12, name: str | None = None) -> Scene:
    """A scene with between ``n_objects[0]`` and ``n_objects[1]`` objects (inclusive), each
    with at least ``min_area`` visible pixels; later shapes occlude earlier ones and a shape
    left too small is dropped. ``size`` is (H, W). Deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    image = texture(rng, size)
    label_map = np.zeros(size, dtype=np.int32)
    categories: list[int] = []
    ids = {v: k for k, v in CATEGORIES.items()}
    for _ in range(int(rng.integers(n_objects[0], n_objects[1] + 1))):
        kind = str(rng.choice(list(kinds)))
        mask = shape_mask(rng, kind, size)
        image[mask] = texture(rng, size)[mask]
        categories.append(ids[kind])
        label_map[mask] = len(categories)
    return _drop_small(image, label_map, categories, min_area, name or f"scene_{seed:05d}")


def _drop_small(image: np.ndarray, label_map: np.ndarray, categories: list[int], min_area: int,
                name: str) -> Scene:
    areas = np.bincount(label_map.ravel(), minlength=len(categories) + 1)
    keep = [i for i in range(1, len(categories) + 1) if areas[i] >= min_area]
    lookup = np.zeros(len(categories) + 1, dtype=np.int32)
    lookup[keep] = np.arange(1, len(keep) + 1)
    return Scene(image, lookup[label_map], [categories[i - 1] for i in keep], name)


def make_scenes(count: int, seed: int = 0, **scene_options: Any) -> list[Scene]:
    """``count`` scenes from consecutive seeds, named scene_00000, scene_00001 ..."""
    return [make_scene(seed + i, name=f"scene_{seed + i:05d}", **scene_options)
            for i in range(count)]


def make_splits(counts: Mapping[str, int], seed: int = 0, **scene_options: Any
                ) -> dict[str, list[Scene]]:
    """Scenes per split, e.g. ``make_splits({"train": 4, "val": 2})``; no name repeats."""
    out, start = {}, seed
    for split, count in counts.items():
        out[split] = make_scenes(count, seed=start, **scene_options)
        start += count
    return out


# ----------------------------------------------------------------------------- file writers


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write an image or label array by ``path``'s extension (png, jpg, tif), atomically.
    Integer label maps keep their depth: uint16 PNG, any-depth TIFF."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, array)
        return path
    if suffix == ".png" and array.dtype in (np.uint8, bool):
        return write_png(path, array)
    with atomic_path(path) as tmp:
        image = Image.fromarray(array)
        if suffix in (".jpg", ".jpeg"):
            image.save(tmp, format="JPEG", quality=95)
        else:
            image.save(tmp, format="PNG")
    return path


MaskKind = Literal["binary", "label_png8", "label_png16", "label_tiff"]


def mask_array(scene: Scene, kind: MaskKind, id_step: int = 1) -> np.ndarray:
    """The scene's mask as written by the folder writers: binary 0/255, or a label map whose
    ids are ``1 + (i - 1) * id_step`` (``id_step > 1`` gives non-consecutive ids)."""
    if kind == "binary":
        return (scene.label_map > 0).astype(np.uint8) * 255
    labels = np.where(scene.label_map > 0, 1 + (scene.label_map - 1) * id_step, 0)
    dtype = {"label_png8": np.uint8, "label_png16": np.uint16, "label_tiff": np.uint32}[kind]
    return labels.astype(dtype)


def write_folder(folder: Path, scenes: Sequence[Scene], masks: MaskKind = "binary",
                 image_ext: str = ".png", image_dir: str = "imgs", id_step: int = 1) -> Path:
    """``folder/imgs/NAME.ext`` + ``folder/masks/NAME.png`` (``.tif`` for label_tiff)."""
    folder = Path(folder)
    mask_ext = ".tif" if masks == "label_tiff" else ".png"
    for scene in scenes:
        write_image(folder / image_dir / f"{scene.name}{image_ext}", scene.image)
        write_image(folder / "masks" / f"{scene.name}{mask_ext}", mask_array(scene, masks, id_step))
    return folder


def write_cellpose(folder: Path, scenes: Sequence[Scene]) -> Path:
    """Cellpose style: ``NAME.png`` beside its 16-bit label map ``NAME_masks.png``."""
    for scene in scenes:
        write_image(Path(folder) / f"{scene.name}.png", scene.image)
        write_image(Path(folder) / f"{scene.name}_masks.png", mask_array(scene, "label_png16"))
    return Path(folder)


def write_splits(writer: Callable[..., Path], root: Path, splits: Mapping[str, Sequence[Scene]],
                 **options: Any) -> Path:
    """Call ``writer(root / split, scenes, **options)`` for each split; returns ``root``."""
    for split, scenes in splits.items():
        writer(Path(root) / split, scenes, **options)
    return Path(root)


Encoding = Literal["polygon", "rle", "rle_uncompressed"]


def segmentation(mask: np.ndarray, encoding: Encoding) -> Any:
    """COCO ``segmentation`` of a bool mask: polygons (one per outer contour), compressed RLE
    (counts as a string) or uncompressed RLE (counts as a list)."""
    from pycocotools import mask as mask_utils

    h, w = mask.shape
    if encoding == "rle":
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    if encoding == "rle_uncompressed":
        flat = mask.ravel(order="F").astype(np.int8)
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
        counts = ([0] if flat[0] else []) + runs.tolist()
        return {"size": [h, w], "counts": counts}
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(float)
        if len(points) < 3:  # a one- or two-pixel piece: its pixel square instead
            x0, y0 = points.min(axis=0)
            x1, y1 = points.max(axis=0) + 1
            polygons.append([x0, y0, x1, y0, x1, y1, x0, y1])
        else:
            polygons.append((points + 0.5).ravel().tolist())
    return polygons


def coco_dict(scenes: Sequence[Scene], file_names: Sequence[str], encoding: Encoding = "polygon",
              first_id: int = 1, supercategory_zero: bool = False) -> dict[str, Any]:
    """A COCO instance-segmentation dict for ``scenes`` stored at ``file_names``. Image and
    annotation ids start at ``first_id``; ``supercategory_zero`` adds Roboflow's category 0
    (the super-category, with no annotations)."""
    categories = [{"id": cid, "name": name, "supercategory": "shapes"}
                  for cid, name in CATEGORIES.items()]
    if supercategory_zero:
        categories.insert(0, {"id": 0, "name": "shapes", "supercategory": "none"})
    images, annotations = [], []
    for image_id, (scene, file_name) in enumerate(zip(scenes, file_names), start=first_id):
        h, w = scene.label_map.shape
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for mask, category in zip(scene.masks(), scene.category_ids):
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append({
                "id": first_id + len(annotations), "image_id": image_id,
                "category_id": category, "iscrowd": 0, "area": int(mask.sum()),
                "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                "segmentation": segmentation(mask, encoding)})
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(folder: Path, scenes: Sequence[Scene], json_name: str = "annotations.json",
               image_dir: str = "", encoding: Encoding = "polygon", first_id: int = 1,
               supercategory_zero: bool = False, image_ext: str = ".jpg") -> Path:
    """Images in ``folder/image_dir`` and ``folder/json_name`` whose file_names are relative
    to ``image_dir``. Returns the json path."""
    folder = Path(folder)
    names = [f"{scene.name}{image_ext}" for scene in scenes]
    for scene, name in zip(scenes, names):
        write_image(folder / image_dir / name, scene.image)
    data = coco_dict(scenes, names, encoding, first_id, supercategory_zero)
    return write_json(folder / json_name, data)


def write_roboflow(root: Path, splits: Mapping[str, Sequence[Scene]],
                   encoding: Encoding = "polygon") -> Path:
    """Roboflow's COCO export: ``train/ valid/ test/`` each with ``_annotations.coco.json``
    beside the images, ids from 0, category 0 the super-category."""
    for split, scenes in splits.items():
        folder = "valid" if split == "val" else split
        write_coco(Path(root) / folder, scenes, "_annotations.coco.json", encoding=encoding,
                   first_id=0, supercategory_zero=True)
    return Path(root)


def write_r3(root: Path, splits: Mapping[str, Sequence[Scene]]) -> Path:
    """``lightning_coco_boxes``: ``train/ val/`` with ``_annotations.coco.json`` beside the images."""
    for split, scenes in splits.items():
        write_coco(Path(root) / split, scenes, "_annotations.coco.json")
    return Path(root)


def write_r4(root: Path, scenes: Sequence[Scene] | Mapping[str, Sequence[Scene]],
             encoding: Encoding = "polygon") -> Path:
    """``finestsam_points`` (finestSAM): unsplit ``data/images + data/annotations.json`` for a list of scenes,
    pre-split ``train|val/images + annotations.json`` for a mapping."""
    parts = scenes if isinstance(scenes, Mapping) else {"data": scenes}
    for part, part_scenes in parts.items():
        write_coco(Path(root) / part, part_scenes, "annotations.json", image_dir="images",
                   encoding=encoding)
    return Path(root)


def labpics_instance(scene: Scene) -> np.ndarray:
    """LabPicsV1 ``Instance`` PNG (RGB order) for a scene: odd ids go to the vessel map (red,
    cv2 channel 2) and even ids to the material map (blue, cv2 channel 0), so ``labpics_sam2``'s merge
    ``mat[mat==0] = ves[mat==0] * (mat.max()+1)`` gives one distinct value per object."""
    ids = scene.label_map
    out = np.zeros((*ids.shape, 3), dtype=np.uint8)
    vessel = (ids % 2 == 1)
    out[..., 0] = np.where(vessel, (ids + 1) // 2, 0)
    out[..., 2] = np.where(~vessel & (ids > 0), ids // 2, 0)
    return out


def write_labpics(root: Path, splits: Mapping[str, Sequence[Scene]]) -> Path:
    """LabPicsV1: ``Simple/{Train,Test}/Image/NAME.jpg`` + ``Instance/NAME.png``."""
    for split, scenes in splits.items():
        folder = Path(root) / "Simple" / split.capitalize()
        for scene in scenes:
            write_image(folder / "Image" / f"{scene.name}.jpg", scene.image)
            write_image(folder / "Instance" / f"{scene.name}.png", labpics_instance(scene))
    return Path(root)
