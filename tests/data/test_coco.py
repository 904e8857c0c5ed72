"""COCO: every layout, polygons and RLE, iscrowd, categories, images without annotations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from samtune.data.coco import CocoSource
from samtune.data.detect import detect_layout, open_source
from samtune.data.source import DataWarning
from samtune.data.synthetic import make_scene, write_coco, write_r3, write_r4, write_roboflow
from samtune.errors import SamtuneError
from tests.data.conftest import object_counts, sorted_masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_roboflow_ids_from_zero_and_supercategory(tmp_path, splits):
    write_roboflow(tmp_path, {"train": splits["train"], "val": splits["val"], "test": splits["val"]})
    layout = detect_layout(tmp_path)
    assert layout.format == "coco" and set(layout.parts) == {"train", "val", "test"}
    assert "Roboflow" in layout.description
    train = open_source(tmp_path, "train")
    assert isinstance(train, CocoSource) and train.categories[0] == "shapes"
    assert [len(s) for s in train] == object_counts(splits["train"])
    first = train[0]
    assert first.category_ids == splits["train"][0].category_ids
    assert first.annotation_ids == list(range(len(first)))  # Roboflow numbers from 0
    assert len(open_source(tmp_path, "val")) == 2 and len(open_source(tmp_path, "test")) == 2


def test_r3_train_val(tmp_path, splits):
    write_r3(tmp_path, splits)
    val = open_source(tmp_path, "val")
    assert [len(s) for s in val] == object_counts(splits["val"])
    assert val[0].path == "val/scene_00003.jpg"


def test_r4_unsplit_is_cut_by_val_size_and_seed(tmp_path, splits):
    scenes = splits["train"] + splits["val"]
    write_r4(tmp_path, scenes)
    train = open_source(tmp_path, "train", val_size=0.4, seed=1)
    val = open_source(tmp_path, "val", val_size=0.4, seed=1)
    assert (len(train), len(val)) == (3, 2)
    assert sorted(train.image_paths + val.image_paths) == sorted(
        open_source(tmp_path, "all").image_paths)
    assert val.image_paths == open_source(tmp_path, "val", val_size=0.4, seed=1).image_paths
    with pytest.raises(SamtuneError, match="no 'test'"):
        open_source(tmp_path, "test")


def test_r4_presplit_rle(tmp_path, splits):
    write_r4(tmp_path, splits, encoding="rle")
    assert "finestSAM pre-split" in detect_layout(tmp_path).description
    train = open_source(tmp_path, "train")
    for sample, scene in zip(train, splits["train"]):
        assert sorted_masks(sample.object_masks()) == sorted_masks(scene.masks())


@pytest.mark.parametrize("encoding", ["rle", "rle_uncompressed"])
def test_rle_decodes_exactly(tmp_path, encoding):
    scene = make_scene(7, n_objects=(3, 4))
    write_coco(tmp_path, [scene], encoding=encoding)
    sample = open_source(tmp_path, "all")[0]
    assert sorted_masks(sample.object_masks()) == sorted_masks(scene.masks())


def test_polygons_several_per_object(tmp_path):
    scene = make_scene(8, n_objects=(1, 1), kinds=["rectangle"])
    json_path = write_coco(tmp_path, [scene])
    data = json.loads(json_path.read_text())
    data["annotations"][0]["segmentation"].append([1, 1, 6, 1, 6, 5, 1, 5])
    json_path.write_text(json.dumps(data))
    sample = open_source(tmp_path, "all")[0]
    assert len(sample) == 1
    mask = sample.object_masks()[0]
    assert mask[1:5, 1:6].all() and iou(mask[8:], scene.masks()[0][8:]) > 0.8


def test_iscrowd_use_or_ignore_with_a_count(tmp_path):
    scenes = [make_scene(s, n_objects=(2, 2), min_area=1) for s in (10, 11)]
    json_path = write_coco(tmp_path, scenes, encoding="rle")
    data = json.loads(json_path.read_text())
    for ann in data["annotations"][:3]:
        ann["iscrowd"] = 1
    json_path.write_text(json.dumps(data))
    total = len(data["annotations"])
    assert sum(len(s) for s in open_source(tmp_path, "all")) == total
    with pytest.warns(DataWarning, match="annotations.json: 3 iscrowd annotations ignored"):
        ignored = open_source(tmp_path, "all", iscrowd="ignore")
    assert sum(len(s) for s in ignored) == total - 3
    assert ignored.ignored_crowd == 3
    assert any("3 iscrowd annotations ignored" in p.message for p in ignored.problems)


def test_category_filter_and_unknown_category(tmp_path, splits):
    write_r3(tmp_path, splits)
    ellipses = open_source(tmp_path, "train", categories=["ellipse", 4])
    expected = sum(c in (1, 4) for s in splits["train"] for c in s.category_ids)
    assert sum(len(s) for s in ellipses) == expected
    assert all(c in (1, 4) for s in ellipses for c in s.category_ids)
    with pytest.raises(SamtuneError, match=r"train/_annotations.coco.json: no category 'dog'"):
        open_source(tmp_path, "train", categories=["dog"])


def test_images_without_annotations_kept_or_dropped(tmp_path):
    scenes = [make_scene(12), make_scene(13, n_objects=(0, 0))]
    write_coco(tmp_path, scenes)
    kept = open_source(tmp_path, "all")
    assert [len(s) for s in kept] == [len(scenes[0].category_ids), 0]
    assert len(open_source(tmp_path, "all", keep_empty=False)) == 1


def test_overlapping_objects_become_a_mask_stack(tmp_path):
    scene = make_scene(14, n_objects=(2, 2), min_area=1)
    json_path = write_coco(tmp_path, [scene], encoding="rle")
    data = json.loads(json_path.read_text())
    data["annotations"].append({**data["annotations"][0], "id": 99, "segmentation":
                                [[0, 0, 40, 0, 40, 30, 0, 30]]})
    json_path.write_text(json.dumps(data))
    sample = open_source(tmp_path, "all")[0]
    assert sample.masks is not None and len(sample) == 3 and sample.annotation_ids[-1] == 99
    assert sample.masks[2][:30, :40].all()


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_polygon_crop_decoding_matches_full_decoding(tmp_path):
    from pycocotools import mask as mask_utils

    scene = make_scene(15, size=(96, 128), n_objects=(4, 4))
    json_path = write_coco(tmp_path, [scene])
    data = json.loads(json_path.read_text())
    sample = open_source(tmp_path, "all")[0]
    for ann, mask in zip(data["annotations"], sample.object_masks()):
        full = mask_utils.decode(mask_utils.merge(
            mask_utils.frPyObjects(ann["segmentation"], 96, 128))) > 0
        assert np.array_equal(full, mask)


def test_json_file_named_directly_and_images_dir(tmp_path):
    scenes = [make_scene(16), make_scene(17)]
    json_path = write_coco(tmp_path, scenes, json_name="export.json", image_dir="images")
    source = open_source(json_path, "all")
    assert [len(s) for s in source] == object_counts(scenes)
    assert source[0].path == "images/scene_00016.jpg"


def test_duplicate_image_id_and_unlisted_images(tmp_path):
    json_path = write_coco(tmp_path, [make_scene(18), make_scene(19), make_scene(20)])
    data = json.loads(json_path.read_text())
    data["images"][1]["id"] = data["images"][0]["id"]
    del data["images"][2]
    json_path.write_text(json.dumps(data))
    from samtune.data.validate import check

    report = check(tmp_path)
    errors = [p for p in report.problems if p.level == "error"]
    assert "image id 1 is listed twice (scene_00018.jpg, scene_00019.jpg)" in errors[0].message
    warning = next(p for p in report.problems if p.level == "warning")
    assert warning.file == "annotations.json"
    assert warning.message.startswith("1 image file(s) not listed in it are not used: scene_00020.jpg")
