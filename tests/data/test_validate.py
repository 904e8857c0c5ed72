"""``check``: statistics and every kind of problem, each naming its file (and annotation)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from samtune.data.detect import open_source
from samtune.data.source import DataWarning
from samtune.data.synthetic import (
    make_scene,
    mask_array,
    write_coco,
    write_folder,
    write_image,
    write_roboflow,
    write_splits,
)
from samtune.data.validate import check
from samtune.errors import SamtuneError
from tests.data.conftest import tree_state


def problems_of(report, level=None):
    return [(p.file, p.annotation_id, p.message) for p in report.problems
            if level is None or p.level == level]


def only(report, level):
    found = problems_of(report, level)
    assert len(found) == 1, report.render()
    return found[0]


@pytest.fixture
def folder(tmp_path):
    """imgs/ + masks/ with scenes a, b, c (binary masks)."""
    write_folder(tmp_path, [make_scene(i, name=n) for i, n in enumerate("abc")])
    return tmp_path


@pytest.fixture
def coco(tmp_path):
    """annotations.json beside three images; returns (root, loaded json)."""
    path = write_coco(tmp_path, [make_scene(i, n_objects=(2, 3)) for i in range(3)])
    return tmp_path, json.loads(path.read_text())


def rewrite(root, data):
    (root / "annotations.json").write_text(json.dumps(data))


def test_clean_dataset_summary(tmp_path, splits):
    write_roboflow(tmp_path, splits)
    report = check(tmp_path)
    assert report.ok and report.problems == []
    assert [s.name for s in report.splits] == ["train", "val"]
    train = report.splits[0]
    assert train.images == 3 and train.objects == sum(len(s.category_ids) for s in splits["train"])
    assert (train.objects_min, train.objects_max) == (2, 4)
    assert train.sizes == {(64, 80): 3} and train.categories[0] == 0
    text = report.render()
    assert "Roboflow" in text and "train: 3 images, 9 objects (2-4 per image, mean 3.0)" in text
    assert "shapes (id 0): 0" in text and "sizes 80x64 (3)" in text and text.endswith(
        "OK: the dataset can be trained on (0 warnings).")


def test_size_mismatch(folder):
    write_image(folder / "masks" / "b.png", np.zeros((10, 12), np.uint8))
    file, _, message = only(check(folder), "error")
    assert file == "masks/b.png"
    assert message.startswith("size 12x10 does not match image imgs/b.png (80x64)")


def test_image_without_mask_and_mask_without_image(folder):
    (folder / "masks" / "b.png").rename(folder / "masks" / "bb.png")
    report = check(folder)
    assert only(report, "error")[0] == "imgs/b.png"
    assert "no mask for this image in masks/" in only(report, "error")[2]
    assert only(report, "warning")[0] == "masks/bb.png"
    assert report.splits[0].images == 2 and not report.ok


def test_names_differing_only_in_extension(folder):
    write_image(folder / "imgs" / "a.jpg", make_scene(9).image)
    report = check(folder)
    file, _, message = only(report, "error")
    assert file == "imgs/a.jpg" and "imgs/a.jpg, imgs/a.png" in message
    assert report.warnings == []  # its mask is not also reported as a mask without image


@pytest.mark.parametrize("damage,expected", [
    ("empty", "the file is empty (0 bytes)"),
    ("truncated", "not a readable image"),
    ("garbage", "not a readable image"),
])
@pytest.mark.parametrize("which", ["imgs", "masks"])
def test_unreadable_files(folder, damage, expected, which):
    path = folder / which / "c.png"
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2],
                      "garbage": b"not a png at all"}[damage])
    report = check(folder)
    file, _, message = only(report, "error")
    assert file == f"{which}/c.png" and expected in message and str(folder) not in message
    assert report.splits[0].images == 2


def test_jpeg_mask_is_thresholded_with_a_warning(folder):
    scene = make_scene(1, n_objects=(3, 3))
    (folder / "masks" / "b.png").unlink()
    write_image(folder / "masks" / "b.jpg", mask_array(scene, "binary"))
    write_image(folder / "imgs" / "b.png", scene.image)
    report = check(folder)
    file, _, message = only(report, "warning")
    assert file == "masks/b.jpg" and "JPEG" in message and "128" in message
    assert report.ok and report.splits[0].objects == 3  # one object each, no noise objects
    sample = open_source(folder, "all")[1]
    assert (sample.object_masks()[0] != (scene.label_map > 0)).mean() < 0.01


def test_empty_mask_warns(folder):
    write_image(folder / "masks" / "a.png", np.zeros((64, 80), np.uint8))
    report = check(folder)
    assert only(report, "warning")[:2] == ("masks/a.png", None) and report.ok
    assert "empty mask" in only(report, "warning")[2]
    assert report.splits[0].objects_min == 0


def test_coco_annotation_problems(coco):
    root, data = coco
    anns = data["annotations"]
    anns[0]["image_id"] = 404
    anns[1]["category_id"] = 77
    anns[2]["segmentation"] = [[1, 1, 5, 1]]
    anns[3]["segmentation"] = [[1, 1, 5, 1, 5, 5, 1]]
    anns[4]["segmentation"] = []
    rewrite(root, data)
    report = check(root)
    errors = problems_of(report, "error")
    assert [(f, a) for f, a, _ in errors] == [("annotations.json", anns[i]["id"]) for i in range(5)]
    messages = [m for _, _, m in errors]
    assert "image_id 404 does not exist" in messages[0]
    assert "category_id 77 does not exist" in messages[1]
    assert "2 points (fewer than 3)" in messages[2]
    assert "odd number of coordinates (7)" in messages[3]
    assert "empty segmentation" in messages[4]
    expected = f"annotations.json [annotation {anns[2]['id']}]: polygon with 2 points"
    assert expected in report.render()
    assert report.splits[0].objects == len(anns) - 5


def test_coco_missing_file_and_wrong_size(coco):
    root, data = coco
    (root / data["images"][0]["file_name"]).unlink()
    data["images"][1]["width"] = 100
    rewrite(root, data)
    report = check(root)
    errors = problems_of(report, "error")
    assert errors[0][0] == "scene_00000.jpg"
    assert "listed in annotations.json (image id 1) but missing" in errors[0][2]
    assert errors[1][:2] == ("scene_00001.jpg", None) and "(id 2)" in errors[1][2]
    assert "size in annotations.json (100x64) disagrees with the file (80x64)" in errors[1][2]
    assert report.splits[0].images == 1


def test_detection_only_export_is_one_error(coco):
    root, data = coco
    for ann in data["annotations"]:
        ann.pop("segmentation")
    rewrite(root, data)
    file, _, message = only(check(root), "error")
    assert file == "annotations.json" and "detection (boxes only) export" in message


def test_invalid_json(coco):
    root, _ = coco
    (root / "annotations.json").write_text('{"images": [')
    file, _, message = only(check(root), "error")
    assert file == "annotations.json" and "not valid JSON (line 1" in message


def test_no_layout(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    report = check(tmp_path)
    assert not report.ok and report.layout == "none found"
    assert "found notes.txt, photos/" in report.render() and "Accepted layouts" in report.render()


def _exif_rotated_jpeg(path, image):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(image).save(path, exif=exif.tobytes())


def test_exif_rotated_image_is_compared_as_displayed(tmp_path):
    scene = make_scene(30)  # stored 80x64; displayed rotated as 64x80
    (tmp_path / "imgs").mkdir()
    _exif_rotated_jpeg(tmp_path / "imgs" / "r.jpg", scene.image)
    write_image(tmp_path / "masks" / "r.png", np.rot90(mask_array(scene, "binary"), -1).copy())
    report = check(tmp_path)
    assert report.ok and report.splits[0].sizes == {(80, 64): 1}
    write_image(tmp_path / "masks" / "r.png", mask_array(scene, "binary"))
    file, _, message = only(check(tmp_path), "error")
    assert file == "masks/r.png" and "before its EXIF rotation" in message


def test_odd_but_valid_images(tmp_path):
    scene = make_scene(31)
    rgb = Image.fromarray(scene.image)
    (tmp_path / "imgs").mkdir()
    rgb.convert("L").save(tmp_path / "imgs" / "grey.png")
    rgb.convert("RGBA").save(tmp_path / "imgs" / "rgba.png")
    rgb.convert("P").save(tmp_path / "imgs" / "palette.png")
    rgb.convert("CMYK").save(tmp_path / "imgs" / "cmyk.jpg")
    write_image(tmp_path / "imgs" / "deep.png", (scene.image[..., 0].astype(np.uint16) * 16))
    write_image(tmp_path / "imgs" / "deep_tiff.tif", scene.image.astype(np.uint16) * 200)
    for name in ("grey", "rgba", "palette", "cmyk", "deep", "deep_tiff"):
        write_image(tmp_path / "masks" / f"{name}.png", mask_array(scene, "binary"))
    report = check(tmp_path)
    assert report.ok, report.render()
    assert report.splits[0].images == 6 and report.splits[0].sizes == {(64, 80): 6}
    for sample in open_source(tmp_path, "all"):
        assert sample.image.shape == (64, 80, 3) and sample.image.dtype == np.uint8
        assert sample.image.max() > 100


def test_large_image_with_hundreds_of_small_objects(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros((1500, 2000), np.uint16)
    for k in range(400):  # 20 x 20 grid of small squares, ids 3, 6, 9 ...
        y, x = divmod(k, 20)
        labels[y * 70 + 5: y * 70 + 5 + rng.integers(2, 8), x * 95 + 5: x * 95 + 12] = 3 * (k + 1)
    write_image(tmp_path / "imgs" / "big.png", np.zeros((1500, 2000, 3), np.uint8))
    write_image(tmp_path / "masks" / "big.png", labels)
    report = check(tmp_path)
    assert report.ok and report.splits[0].objects == 400
    sample = open_source(tmp_path, "all")[0]
    assert sample.label_map is not None and sample.masks is None
    boxes = sample.boxes()
    assert boxes.shape == (400, 4) and tuple(boxes[0][[0, 1, 2]]) == (5, 5, 12)


def test_check_never_modifies_files(folder):
    (folder / "masks" / "c.png").write_bytes(b"")
    write_image(folder / "masks" / "a.png", np.zeros((5, 5), np.uint8))
    before = tree_state(folder)
    assert not check(folder).ok
    assert tree_state(folder) == before


def test_render_lists_every_problem(folder):
    (folder / "masks" / "c.png").write_bytes(b"")
    write_image(folder / "masks" / "a.png", np.zeros((64, 80), np.uint8))
    text = check(folder).render()
    assert "1 error, 1 warning:" in text
    assert "  error    masks/c.png: the file is empty (0 bytes)" in text
    assert "  warning  masks/a.png: empty mask" in text
    assert text.splitlines()[-1].startswith("NOT OK: fix the 1 error above")


def test_open_source_refuses_or_skips_bad_samples(folder):
    (folder / "masks" / "c.png").write_bytes(b"")
    (folder / "masks" / "b.png").rename(folder / "masks" / "zz.png")
    with pytest.raises(SamtuneError, match=r"imgs/b.png: no mask for this image") as e:
        open_source(folder, "all")
    assert "skip_bad: true" in str(e.value)
    with pytest.warns(DataWarning) as caught:
        source = open_source(folder, "all", skip_bad=True)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("skipped: imgs/b.png: no mask") for m in messages)
    assert any(m.startswith("skipped: masks/c.png: the file is empty") for m in messages)
    assert any(m.startswith("masks/zz.png: mask without an image") for m in messages)
    assert [p.name for p in source.image_paths] == ["a.png"] and len(list(source)) == 1


def test_split_dataset_reports_each_split(tmp_path, splits):
    write_splits(write_folder, tmp_path, splits, masks="label_png16")
    write_image(tmp_path / "val" / "masks" / "scene_00003.png", np.zeros((3, 3), np.uint16))
    report = check(tmp_path)
    assert [(s.name, s.images) for s in report.splits] == [("train", 3), ("val", 1)]
    assert report.render().index("train: 3 images") < report.render().index("val: 1 image,")
    assert only(report, "error")[0] == "val/masks/scene_00003.png"


def test_unsplit_note_and_invalid_option(folder):
    assert "cuts it into 3 train and 0 val images" in check(folder).render()
    assert "2 train and 1 val" in check(folder, val_size=0.34).note
    with pytest.raises(SamtuneError, match="objects"):
        check(folder, objects="pixels")


def test_corrupt_rle(coco):
    root, data = coco
    anns = data["annotations"]
    anns[0]["segmentation"] = {"size": [64, 80], "counts": ""}
    anns[1]["segmentation"] = {"size": [64, 80], "counts": "zzzzzzzzzz"}
    anns[2]["segmentation"] = {"size": [64, 80], "counts": [10, 20]}
    anns[3]["segmentation"] = {"size": [60, 80], "counts": [4800]}
    rewrite(root, data)
    report = check(root)
    found = {p.annotation_id: p.message for p in report.errors}
    assert "RLE counts do not cover the 80x64 image" in found[anns[0]["id"]]
    assert re.match(r"RLE (cannot be decoded|counts do not cover)", found[anns[1]["id"]])
    assert "counts add up to 30, not 64 x 80 = 5120 pixels" in found[anns[2]["id"]]
    assert "RLE size [60, 80] (height, width) does not match the image (64, 80)" in found[
        anns[3]["id"]]


def test_multi_plane_tiff_mask_is_an_error(folder):
    import tifffile

    (folder / "masks" / "a.png").unlink()
    tifffile.imwrite(folder / "masks" / "a.tif", np.zeros((6, 64, 80), np.uint16))
    file, _, message = only(check(folder), "error")
    assert file == "masks/a.tif" and "a mask must be one plane" in message
