"""LabPicsV1: R0's channel merge, instances or their union, Train/Test splits."""

from __future__ import annotations

import cv2
import numpy as np

from samtune.data.detect import detect_layout, open_source
from samtune.data.labpics import LabPicsSource, merge_instance_maps
from samtune.data.synthetic import labpics_instance, make_scene, write_labpics
from tests.data.conftest import object_counts, sorted_masks


def test_merge_follows_r0():
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0] = [[1, 0, 2], [0, 0, 2]]  # material ids
    bgr[..., 2] = [[3, 1, 0], [2, 0, 0]]  # vessel ids; hidden where material is set
    merged = merge_instance_maps(bgr)
    assert merged.tolist() == [[1, 3, 2], [6, 0, 2]]  # ves * (mat.max() + 1) = ves * 3


def test_instances_per_split(tmp_path, splits):
    write_labpics(tmp_path, {"train": splits["train"], "test": splits["val"]})
    layout = detect_layout(tmp_path)
    assert layout.format == "labpics" and set(layout.parts) == {"train", "test"}
    train = open_source(tmp_path, "train")
    assert isinstance(train, LabPicsSource)
    assert [len(s) for s in train] == object_counts(splits["train"])
    for sample, scene in zip(train, splits["train"]):
        assert sorted_masks(sample.object_masks()) == sorted_masks(scene.masks())
    assert train[0].path == "Simple/Train/Image/scene_00000.jpg"
    assert len(open_source(tmp_path, "val")) == 2  # val falls back to Test
    assert len(open_source(tmp_path / "Simple", "test")) == 2


def test_union_target_is_one_object(tmp_path, splits):
    write_labpics(tmp_path, {"train": splits["train"]})
    train = open_source(tmp_path, "train", labpics_target="union")
    assert [len(s) for s in train] == [1, 1, 1]
    assert np.array_equal(train[1].object_masks()[0], splits["train"][1].label_map > 0)


def test_instance_png_channels_as_cv2_reads_them(tmp_path):
    scene = make_scene(20, n_objects=(3, 3))
    rgb = labpics_instance(scene)
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    bgr = cv2.imread(str(path))
    assert np.array_equal(bgr[..., 2], rgb[..., 0])  # vessel = red = cv2 channel 2
    assert len(np.unique(merge_instance_maps(bgr))) == 4  # 3 objects + background
