"""Generated scenes are deterministic, and every writer produces a layout samtune reads back."""

from __future__ import annotations

import json
from functools import partial

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from samtune.data import synthetic as syn
from samtune.data.detect import detect_layout, open_source
from tests.data.conftest import object_counts


def test_scene_is_deterministic_and_well_formed():
    a, b, c = syn.make_scene(3), syn.make_scene(3), syn.make_scene(4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label_map, b.label_map)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (64, 80, 3) and a.image.dtype == np.uint8
    ids = np.unique(a.label_map)
    assert ids.tolist() == list(range(len(a.category_ids) + 1))
    assert all(m.sum() >= 12 for m in a.masks())
    assert set(a.category_ids) <= set(syn.CATEGORIES)


def test_every_kind_draws_a_shape():
    rng = np.random.default_rng(0)
    for kind in syn.KINDS:
        assert syn.shape_mask(rng, kind, (48, 48)).sum() > 10
    cable = syn.make_scene(1, n_objects=(1, 1), kinds=["cable"])
    assert cable.category_ids == [4]


def test_a_ring_has_a_hole_that_shows_the_background():
    ring = syn.shape_mask(np.random.default_rng(3), "ring", (96, 96))
    filled = cv2.floodFill(ring.astype(np.uint8), None, (0, 0), 1)[1]  # fill from outside
    hole = filled == 0
    assert ring.sum() > 50 and hole.sum() > 20  # an enclosed hole of background
    scene = syn.make_scene(2, size=(96, 96), n_objects=(1, 1), kinds=["ring"])
    assert scene.category_ids == [5] and syn.CATEGORIES[5] == "ring"


def test_splits_have_distinct_names():
    splits = syn.make_splits({"train": 2, "val": 2, "test": 1})
    names = [s.name for scenes in splits.values() for s in scenes]
    assert len(set(names)) == 5


LAYOUTS = {
    "folder_binary": (partial(syn.write_splits, syn.write_folder), "folder", "binary"),
    "folder_png16": (partial(syn.write_splits, syn.write_folder, masks="label_png16", id_step=5),
                     "folder", "instances"),
    "folder_tiff": (partial(syn.write_splits, syn.write_folder, masks="label_tiff"), "folder",
                    "instances"),
    "coco_polygon": (partial(syn.write_splits, syn.write_coco), "coco", "instances"),
    "coco_rle": (partial(syn.write_splits, syn.write_coco, encoding="rle"), "coco", "instances"),
    "roboflow": (syn.write_roboflow, "coco", "instances"),
    "r3": (syn.write_r3, "coco", "instances"),
    "r4_presplit": (syn.write_r4, "coco", "instances"),
    "labpics": (syn.write_labpics, "labpics", "instances"),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_written_layouts_read_back(tmp_path, splits, name):
    writer, format, objects = LAYOUTS[name]
    if name == "labpics":
        writer(tmp_path, {"train": splits["train"], "test": splits["val"]})
    else:
        writer(tmp_path, splits)
    layout = detect_layout(tmp_path)
    assert layout.format == format and layout.presplit
    for split in ("train", "val"):
        source = open_source(tmp_path, split)
        expected = object_counts(splits[split]) if objects == "instances" else [1] * len(splits[split])
        assert [len(s) for s in source] == expected, (name, split)


def test_unsplit_writers_read_back(tmp_path, splits):
    scenes = splits["train"] + splits["val"]
    syn.write_r4(tmp_path / "r4", scenes)
    syn.write_cellpose(tmp_path / "cellpose", scenes)
    for root in (tmp_path / "r4", tmp_path / "cellpose"):
        everything = open_source(root, "all")
        assert sorted(len(s) for s in everything) == sorted(object_counts(scenes))


def test_file_formats_written(tmp_path, splits):
    scene = splits["train"][0]
    syn.write_folder(tmp_path / "p", [scene], masks="label_png16", id_step=300)
    with Image.open(tmp_path / "p" / "masks" / f"{scene.name}.png") as im:
        assert im.mode.startswith("I") and np.array(im).max() == 1 + 300 * (len(scene.category_ids) - 1)
    syn.write_folder(tmp_path / "t", [scene], masks="label_tiff")
    assert tifffile.imread(tmp_path / "t" / "masks" / f"{scene.name}.tif").dtype == np.uint32
    syn.write_roboflow(tmp_path / "rf", {"val": [scene]})
    data = json.loads((tmp_path / "rf" / "valid" / "_annotations.coco.json").read_text())
    assert data["categories"][0] == {"id": 0, "name": "shapes", "supercategory": "none"}
    assert data["images"][0]["id"] == 0 and data["annotations"][0]["id"] == 0
    assert not list((tmp_path / "rf").rglob(".*.tmp*"))  # atomic writes left no temporaries


def test_uncompressed_rle_counts_add_up():
    mask = syn.make_scene(2).masks()[0]
    rle = syn.segmentation(mask, "rle_uncompressed")
    assert sum(rle["counts"]) == mask.size and rle["size"] == list(mask.shape)
