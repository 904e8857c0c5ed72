"""Image + mask folders: pairing by name, every mask encoding, objects modes, splits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from samtune.data.detect import open_source
from samtune.data.folder import FolderSource
from samtune.data.synthetic import (
    make_scene,
    mask_array,
    write_cellpose,
    write_folder,
    write_image,
    write_splits,
)
from samtune.errors import SamtuneError
from tests.data.conftest import object_counts, sorted_masks


def test_binary_masks_are_one_object_each_by_default(tmp_path, splits):
    write_splits(write_folder, tmp_path, splits)
    train = open_source(tmp_path, "train")
    assert isinstance(train, FolderSource)
    assert len(train) == 3 and [len(s) for s in train] == [1, 1, 1]
    assert [p.name for p in train.image_paths] == [f"{s.name}.png" for s in splits["train"]]
    sample = train[0]
    assert sample.path == "train/imgs/scene_00000.png" and sample.source == f"{tmp_path.name}/train"
    assert np.array_equal(sample.object_masks()[0], splits["train"][0].label_map > 0)
    assert len(open_source(tmp_path, "val")) == 2


def test_components_split_a_binary_mask(tmp_path, splits):
    write_splits(write_folder, tmp_path, splits)
    train = open_source(tmp_path, "train", objects="components")
    for sample, scene in zip(train, splits["train"]):
        expected = cv2.connectedComponents((scene.label_map > 0).astype(np.uint8),
                                           connectivity=8)[0] - 1
        assert len(sample) == expected


@pytest.mark.parametrize("kind,step", [("label_png8", 1), ("label_png16", 977),
                                       ("label_tiff", 70001)])
def test_label_maps_with_any_ids(tmp_path, splits, kind, step):
    write_splits(write_folder, tmp_path, splits, masks=kind, id_step=step)
    train = open_source(tmp_path, "train")
    assert [len(s) for s in train] == object_counts(splits["train"])
    for sample, scene in zip(train, splits["train"]):
        assert sorted_masks(sample.object_masks()) == sorted_masks(scene.masks())
        assert sample.object_ids == [1 + i * step for i in range(len(scene.category_ids))]


def test_cellpose_masks_beside_images(tmp_path, splits):
    scenes = splits["train"] + splits["val"]
    write_cellpose(tmp_path, scenes)
    everything = open_source(tmp_path, "all")
    assert len(everything) == 5
    assert sorted(len(s) for s in everything) == sorted(object_counts(scenes))
    assert all(not p.stem.endswith("_masks") for p in everything.image_paths)
    train, val = open_source(tmp_path, "train"), open_source(tmp_path, "val")
    assert (len(train), len(val)) == (4, 1)  # int(5 * 0.3) = 1 val image
    assert not set(train.image_paths) & set(val.image_paths)


def test_pairs_by_name_not_by_position(tmp_path):
    a, b = make_scene(1, name="b_first"), make_scene(2, name="a_second")
    write_folder(tmp_path, [a, b], masks="label_png16")
    (tmp_path / "masks" / "a_second.png").rename(tmp_path / "masks" / "z_a_second_mask.png")
    (tmp_path / "imgs" / "a_second.png").rename(tmp_path / "imgs" / "z_a_second.png")
    source = open_source(tmp_path, "all")
    by_name = {p.stem: s for p, s in zip(source.image_paths, source)}
    assert sorted_masks(by_name["b_first"].object_masks()) == sorted_masks(a.masks())
    assert sorted_masks(by_name["z_a_second"].object_masks()) == sorted_masks(b.masks())


@pytest.mark.parametrize("encoding", ["01", "0255", "rgb", "palette", "rgba"])
def test_binary_mask_encodings(tmp_path, encoding):
    scene = make_scene(3, n_objects=(2, 3))
    fg = scene.label_map > 0
    write_image(tmp_path / "images" / "x.JPG", scene.image)
    path = tmp_path / "masks" / "x.png"
    if encoding == "01":
        write_image(path, fg.astype(np.uint8))
    elif encoding == "0255":
        write_image(path, fg.astype(np.uint8) * 255)
    elif encoding == "rgb":
        write_image(path, np.repeat(fg[..., None], 3, axis=2).astype(np.uint8) * 255)
    elif encoding == "rgba":
        write_image(path, np.dstack([np.repeat(fg[..., None], 3, axis=2).astype(np.uint8) * 255,
                                     np.full(fg.shape, 255, np.uint8)]))
    else:
        im = Image.fromarray(fg.astype(np.uint8), mode="P")
        im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        path.parent.mkdir(parents=True)
        im.save(path)
    sample = open_source(tmp_path, "all")[0]
    assert len(sample) == 1 and np.array_equal(sample.object_masks()[0], fg)


def test_colour_coded_instances(tmp_path):
    scene = make_scene(4, n_objects=(3, 3))
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    write_image(tmp_path / "imgs" / "x.png", scene.image)
    write_image(tmp_path / "masks" / "x.png", colours[scene.label_map])
    sample = open_source(tmp_path, "all")[0]
    assert sorted_masks(sample.object_masks()) == sorted_masks(scene.masks())


def test_invert_makes_the_zero_area_the_object(tmp_path):
    scene = make_scene(5)
    write_folder(tmp_path, [scene])
    sample = open_source(tmp_path, "all", invert=True)[0]
    assert np.array_equal(sample.object_masks()[0], scene.label_map == 0)
    with pytest.raises(SamtuneError, match="invert"):
        open_source(tmp_path, "all", invert=True, objects="label_map")


def test_val_falls_back_to_test_folder(tmp_path, splits):
    write_splits(write_folder, tmp_path, {"Train": splits["train"], "Test": splits["val"]})
    assert len(open_source(tmp_path, "val")) == 2
    assert len(open_source(tmp_path, "test")) == 2
    with pytest.raises(SamtuneError, match="no 'all' split; found test, train"):
        open_source(tmp_path, "all")


def test_mask_in_subfolders_and_mask_suffix(tmp_path):
    scene = make_scene(6)
    write_image(tmp_path / "imgs" / "day1" / "x.tif", scene.image)
    write_image(tmp_path / "masks" / "day1" / "x_mask.png", mask_array(scene, "binary"))
    source = open_source(tmp_path, "all")
    assert len(source) == 1 and source[0].path == "imgs/day1/x.tif"


def test_format_option_forces_a_layout(tmp_path, splits):
    write_folder(tmp_path, splits["train"], masks="label_png16")
    from samtune.data.synthetic import write_coco

    write_coco(tmp_path, splits["val"], image_dir="images")
    assert open_source(tmp_path, "all").format == "coco"  # COCO is looked for before folders
    forced = open_source(tmp_path, "all", format="folder")
    assert forced.format == "folder" and len(forced) == 3
    with pytest.raises(SamtuneError, match="not a labpics layout; found annotations.json"):
        open_source(tmp_path, "all", format="labpics")
