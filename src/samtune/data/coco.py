"""COCO instance segmentation: ``annotations.json`` / Roboflow's ``_annotations.coco.json``.

Layouts found by :func:`coco_parts`: a json beside (or above ``images/``) its images; Roboflow
and ``lightning_coco_boxes``'s split folders (``train/ valid/ test/``, ``train/ val/``) each with its own json; ``finestsam_points``'s
``data/images + data/annotations.json`` (cut into train/val by ``val_size`` and ``seed``) and
its pre-split ``train|val/images + annotations.json``. Polygons (several per object),
compressed and uncompressed RLE are decoded by pycocotools exactly as ``COCO.annToMask`` does.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from samtune.config.data import SourceConfig
from samtune.data.images import IMAGE_SUFFIXES
from samtune.data.sample import Sample
from samtune.data.source import BadSample, Problem, Source, exif_note, size_text, split_dirs
from samtune.errors import SamtuneError

JSON_NAMES = ("_annotations.coco.json", "annotations.json")


@dataclass
class CocoItem:
    image: Path
    image_id: int
    height: int | None
    width: int | None
    annotations: list[dict[str, Any]] = field(default_factory=list)


def _json_in(folder: Path) -> Path | None:
    return next((folder / n for n in JSON_NAMES if (folder / n).is_file()), None)


def coco_parts(root: Path) -> tuple[dict[str, Path], str] | None:
    """The COCO json of each split under ``root`` ('all' for an unsplit dataset) and a
    description of the layout, or None when ``root`` holds no COCO layout."""
    if root.is_file() and root.suffix.lower() == ".json":
        return {"all": root}, f"COCO file {root.name}"
    own = _json_in(root)
    if own is not None:
        return {"all": own}, f"COCO ({own.name} with its images)"
    if (root / "data" / "annotations.json").is_file():
        return ({"all": root / "data" / "annotations.json"},
                "COCO, finestSAM layout unsplit (data/images + data/annotations.json, cut by val_size)")
    parts = {split: _json_in(folder) for split, folder in split_dirs(root).items()}
    parts = {split: path for split, path in parts.items() if path is not None}
    if not parts:
        return None
    names = {p.name for p in parts.values()}
    folders = " ".join(f"{p.parent.name}/" for p in parts.values())
    if names == {"_annotations.coco.json"}:
        roboflow = "test" in parts or parts.get("val", root).parent.name.lower() == "valid"
        kind = "Roboflow" if roboflow else "``lightning_coco_boxes`` / Roboflow"
    else:
        kind = "finestSAM pre-split" if all((p.parent / "images").is_dir() for p in parts.values()) \
            else "split folders"
    return parts, f"COCO, {kind} ({folders} with {' / '.join(sorted(names))})"


class CocoSource(Source):
    """Samples of one COCO json. Objects are a label map when they do not overlap (fast for
    hundreds of small objects on a large image) and a mask stack when they do; each carries
    its category id and COCO annotation id."""

    format = "coco"

    def __init__(self, root: Path, json_path: Path, config: SourceConfig, name: str) -> None:
        super().__init__(root, name)
        self.config = config
        self.json_path = json_path
        self.categories: dict[int, str] = {}
        self.ignored_crowd = 0
        self._index(self._load_json())

    def _load_json(self) -> dict[str, Any]:
        rel = self.rel(self.json_path)
        try:
            data = json.loads(self.json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SamtuneError(f"{rel}: not valid JSON (line {e.lineno}, column {e.colno}: "
                               f"{e.msg}); re-export the annotations") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SamtuneError(f"{rel}: cannot be read ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise SamtuneError(f"{rel}: not a COCO file (no 'images' list); export the dataset "
                               "in COCO instance-segmentation format")
        return data

    def _index(self, data: dict[str, Any]) -> None:
        rel = self.rel(self.json_path)
        self.categories = {int(c["id"]): str(c.get("name", c["id"]))
                           for c in data.get("categories", []) if "id" in c}
        wanted = self._wanted_categories()
        items: dict[int, CocoItem] = {}
        found: set[Path] = set()
        for entry in data["images"]:
            item = self._image_item(entry)
            found.update([item.image] if item else [])
            if item is not None and item.image_id in items:
                self.problem("error", rel, f"image id {item.image_id} is listed twice "
                             f"({self.rel(items[item.image_id].image)}, {self.rel(item.image)}); "
                             "give each image its own id")
                del items[item.image_id]
            elif item is not None:
                items[item.image_id] = item
        self._report_unlisted(found)
        listed = {e.get("id") for e in data["images"]}
        annotations = data.get("annotations") or []
        with_masks = [a for a in annotations if a.get("segmentation")]
        if annotations and not with_masks:
            self.problem("error", rel, f"none of the {len(annotations)} annotations has a "
                         "segmentation: this is a detection (boxes only) export. Export the "
                         "dataset with masks (COCO instance segmentation / polygons)")
            annotations = []
        for ann in annotations:
            seg = self._check_annotation(ann, listed, wanted)
            if seg is not None and ann["image_id"] in items:
                items[ann["image_id"]].annotations.append(ann)
        if self.ignored_crowd:
            self.problem("warning", rel, f"{self.ignored_crowd} iscrowd annotations ignored "
                         "(iscrowd: ignore); set iscrowd: use to train on them")
        self._items = [i for i in items.values() if i.annotations or self.config.keep_empty]

    def _report_unlisted(self, listed: set[Path]) -> None:
        """One warning for image files beside the json (or in its images/) that it does not
        list: they are not used, which is rarely what the user meant."""
        here = self.json_path.parent
        folders = [here] + ([here / "images"] if (here / "images").is_dir() else [])
        unlisted = sorted(p for folder in folders for p in folder.iterdir()
                          if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                          and not p.name.startswith(".") and p not in listed)
        if unlisted:
            names = ", ".join(self.rel(p) for p in unlisted[:3])
            more = f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else ""
            self.problem("warning", self.json_path, f"{len(unlisted)} image file(s) not listed "
                         f"in it are not used: {names}{more}")

    def _wanted_categories(self) -> set[int] | None:
        if self.config.categories is None:
            return None
        by_name = {name: cid for cid, name in self.categories.items()}
        wanted = set()
        for c in self.config.categories:
            cid = by_name.get(c) if isinstance(c, str) else c
            if cid is None or cid not in self.categories:
                known = ", ".join(f"{i} {n!r}" for i, n in sorted(self.categories.items()))
                raise SamtuneError(f"{self.rel(self.json_path)}: no category {c!r}; the file "
                                   f"has {known}. Fix 'categories' in the config")
            wanted.add(cid)
        return wanted

    def _image_item(self, entry: dict[str, Any]) -> CocoItem | None:
        rel = self.rel(self.json_path)
        if "id" not in entry or "file_name" not in entry:
            self.problem("error", rel, f"image entry without id or file_name: {entry!r:.120}")
            return None
        path = self._find_image(str(entry["file_name"]))
        if path is None:
            self.problem("error", f"{self.rel(self.json_path.parent)}/{entry['file_name']}"
                         .lstrip("./"), f"listed in {rel} (image id {entry['id']}) but missing;"
                         " add the file or remove its entry")
            return None
        if not self.confined(path, self.config.allow_outside_paths):
            return None
        return CocoItem(path, entry["id"], entry.get("height"), entry.get("width"))

    def _find_image(self, file_name: str) -> Path | None:
        here = self.json_path.parent
        for candidate in (here / file_name, here / "images" / file_name,
                          here / "images" / Path(file_name).name, here / Path(file_name).name):
            if candidate.is_file():
                return candidate
        return None

    def _check_annotation(self, ann: dict[str, Any], listed: set[Any],
                          wanted: set[int] | None) -> Any:
        """The annotation's segmentation if it is usable, else None (a problem is recorded
        for a defect; a category filtered out or an ignored crowd is not a defect)."""
        rel, aid = self.rel(self.json_path), ann.get("id")
        if ann.get("image_id") not in listed:
            self.problem("error", rel, f"image_id {ann.get('image_id')} does not exist in "
                         "'images'; fix or remove the annotation", aid)
            return None
        if ann.get("category_id") not in self.categories:
            self.problem("error", rel, f"category_id {ann.get('category_id')} does not exist in "
                         "'categories'; fix or remove the annotation", aid)
            return None
        if wanted is not None and ann["category_id"] not in wanted:
            return None
        if ann.get("iscrowd") and self.config.iscrowd == "ignore":
            self.ignored_crowd += 1
            return None
        seg = ann.get("segmentation")
        if not seg:
            self.problem("error", rel, "empty segmentation; draw the mask or remove the "
                         "annotation", aid)
            return None
        if isinstance(seg, dict):
            return seg if self._rle_ok(seg, rel, aid) else None
        if not isinstance(seg, list) or not all(isinstance(p, list) for p in seg):
            self.problem("error", rel, "segmentation is neither polygons (a list of lists) nor "
                         "RLE (a dict with counts and size)", aid)
            return None
        for polygon in seg:
            if not all(isinstance(v, (int, float)) for v in polygon):
                self.problem("error", rel, "polygon with non-numeric coordinates", aid)
                return None
            if len(polygon) % 2:
                self.problem("error", rel, f"polygon with an odd number of coordinates "
                             f"({len(polygon)}); it must be x1, y1, x2, y2 ...", aid)
                return None
            if len(polygon) < 6:
                self.problem("error", rel, f"polygon with {len(polygon) // 2} points (fewer "
                             "than 3); redraw it or remove it", aid)
                return None
        return seg

    def _rle_ok(self, seg: dict[str, Any], rel: str, aid: int | None) -> bool:
        size, counts = seg.get("size"), seg.get("counts")
        if counts is None or not isinstance(size, list) or len(size) != 2:
            self.problem("error", rel, "RLE segmentation needs 'counts' and 'size' [height, "
                         "width]; re-export it", aid)
            return False
        if isinstance(counts, list) and sum(counts) != size[0] * size[1]:
            self.problem("error", rel, f"uncompressed RLE counts add up to {sum(counts)}, not "
                         f"{size[0]} x {size[1]} = {size[0] * size[1]} pixels; re-export it", aid)
            return False
        return True

    def load(self, index: int) -> tuple[Sample, list[Problem]]:
        item: CocoItem = self._items[index]
        image = self.read_image(item.image)
        hw = image.shape[:2]
        rel = self.rel(item.image)
        if item.height is not None and item.width is not None and (item.height, item.width) != hw:
            raise BadSample(Problem(
                "error", rel, f"size in {self.rel(self.json_path)} ({item.width}x{item.height}) "
                f"disagrees with the file ({size_text(hw)})"
                f"{exif_note(item.image, (item.height, item.width))}; re-export the annotations "
                f"of this image (id {item.image_id})"))
        warnings: list[Problem] = []
        kept, pieces, failed = [], [], []
        for ann in item.annotations:
            try:
                piece = self._decode(ann, hw, rel)
            except BadSample as e:  # keep going: report every bad annotation of the image
                failed.extend(e.problems)
                continue
            if piece[2].any():
                kept.append(ann)
                pieces.append(piece)
            else:
                warnings.append(Problem("warning", rel, "annotation decodes to an empty mask "
                                        "(outside the image or degenerate); left out", ann["id"]))
        if failed:
            raise BadSample(*failed)
        return _sample(image, pieces, kept, rel, self.name), warnings

    def _decode(self, ann: dict[str, Any], hw: tuple[int, int], rel: str) -> Piece:
        """The annotation's mask as (y0, x0, bool crop). Polygons are rasterized into their
        bounding box only (an integer shift rasterizes identically), so hundreds of small
        objects on a large image cost their own area, not the image's each."""
        h, w = hw
        seg = ann["segmentation"]
        if isinstance(seg, list):
            xs = np.concatenate([np.asarray(p[0::2], dtype=float) for p in seg])
            ys = np.concatenate([np.asarray(p[1::2], dtype=float) for p in seg])
            x0, y0 = max(0, int(np.floor(xs.min()))), max(0, int(np.floor(ys.min())))
            x1, y1 = min(w, int(np.ceil(xs.max())) + 1), min(h, int(np.ceil(ys.max())) + 1)
            if x1 <= x0 or y1 <= y0:
                return 0, 0, np.zeros((0, 0), dtype=bool)
            shifted = [[v - (x0 if k % 2 == 0 else y0) for k, v in enumerate(p)] for p in seg]
            rle = mask_utils.merge(mask_utils.frPyObjects(shifted, y1 - y0, x1 - x0))
            return y0, x0, _decode_rle(rle)
        if list(seg["size"]) != [h, w]:
            raise BadSample(Problem("error", rel, f"RLE size {seg['size']} (height, width) does "
                                    f"not match the image ({h}, {w}); re-export it", ann.get("id")))
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
        full = _decode_rle(rle, rel, ann.get("id"))
        bx, by, bw, bh = np.rint(mask_utils.toBbox(rle)).astype(int)
        return by, bx, full[by:by + bh, bx:bx + bw]


Piece = tuple[int, int, np.ndarray]


def _decode_rle(rle: dict[str, Any], rel: str = "", annotation_id: int | None = None
                ) -> np.ndarray:
    """(H, W) bool mask of one RLE, or BadSample for counts that are corrupt or do not cover
    the image: pycocotools leaves the uncovered tail uninitialised instead of failing, which
    shows as values other than 0/1 or a pixel count other than the RLE's area. Its compiled
    decoder also trips numpy 2's harmless ``__array__ copy`` DeprecationWarning on every
    call; that is silenced here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        try:
            decoded = mask_utils.decode(rle)
        except ValueError as e:
            raise BadSample(Problem("error", rel, f"RLE cannot be decoded ({e}); re-export it",
                                    annotation_id)) from e
    if decoded.max(initial=0) > 1 or int(decoded.sum()) != int(mask_utils.area(rle)):
        raise BadSample(Problem("error", rel, f"RLE counts do not cover the {rle['size'][1]}x"
                                f"{rle['size'][0]} image; re-export it", annotation_id))
    return decoded > 0


def _sample(image: np.ndarray, pieces: list[Piece], anns: list[dict[str, Any]], rel: str,
            source: str) -> Sample:
    """A label-map Sample when no two masks overlap, else a mask-stack Sample."""
    categories = [int(a["category_id"]) for a in anns]
    ids = [int(a["id"]) if "id" in a else -1 for a in anns]
    hw = image.shape[:2]
    label_map = np.zeros(hw, dtype=np.int32)
    overlap = False
    for i, (y0, x0, crop) in enumerate(pieces, start=1):
        window = label_map[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]]
        overlap = overlap or bool(window[crop].any())
        window[crop] = i
    if not overlap:
        return Sample(image=image, label_map=label_map, object_ids=list(range(1, len(pieces) + 1)),
                      category_ids=categories, path=rel, source=source, annotation_ids=ids)
    masks = np.zeros((len(pieces), *hw), dtype=bool)
    for mask, (y0, x0, crop) in zip(masks, pieces):
        mask[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return Sample(image=image, masks=masks, category_ids=categories, path=rel, source=source,
                  annotation_ids=ids)
