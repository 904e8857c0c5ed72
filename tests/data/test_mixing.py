"""Mixing sources with per-epoch percentages, and pasting objects on backgrounds (R1)."""

from __future__ import annotations

import numpy as np
import pytest

from samtune.config.data import CompositeConfig, DataConfig, SourceConfig
from samtune.data.detect import open_source
from samtune.data.mixing import CompositeSource, MixedSource, open_dataset
from samtune.data.synthetic import make_scene, make_scenes, write_coco, write_folder, write_image
from samtune.errors import SamtuneError


@pytest.fixture
def two_sources(tmp_path):
    write_folder(tmp_path / "cables", make_scenes(10, seed=0, size=(32, 48)))
    write_coco(tmp_path / "shapes", make_scenes(4, seed=50, size=(32, 48)))
    return tmp_path / "cables", tmp_path / "shapes"


def test_resample_is_deterministic_per_seed_and_epoch(two_sources):
    cables, shapes = (open_source(p, "all") for p in two_sources)
    mix = MixedSource([cables, shapes], [0.5, 1.0], seed=3)
    assert len(mix) == 5 + 4
    first = mix.image_paths
    mix.resample(1)
    second = mix.image_paths
    mix.resample(0)
    assert mix.image_paths == first and second != first
    assert len(set(first[:5])) == 5 and set(first[5:]) == set(shapes.image_paths)
    other = MixedSource([cables, shapes], [0.5, 1.0], seed=4)
    assert other.image_paths != first
    assert mix[5].path == shapes[0].path


def test_small_percentage_still_draws_one(two_sources):
    cables = open_source(two_sources[0], "all")
    assert len(MixedSource([cables], [0.01])) == 1


def _backgrounds(folder, count=2):
    for i in range(count):
        write_image(folder / "sub" / f"bg{i}.png", np.full((40, 60, 3), 10 + 100 * i, np.uint8))
    return folder


def test_composite_pastes_objects_on_backgrounds(tmp_path):
    scene = make_scene(1, size=(32, 48))
    write_folder(tmp_path / "fg", [scene], masks="label_png16")
    config = CompositeConfig(bg_paths=[_backgrounds(tmp_path / "bg")], bg_aug_p=0.0,
                             fg_jitter={"p": 0.0})
    source = CompositeSource(open_source(tmp_path / "fg", "all"), config, seed=0)
    assert len(source.backgrounds) == 2
    sample = source[0]
    fg = scene.label_map > 0
    assert np.array_equal(sample.image[fg], scene.image[fg])
    assert set(np.unique(sample.image[~fg])) <= {10, 110}
    assert sample.object_ids == list(range(1, len(scene.category_ids) + 1))
    again = source[0]
    assert np.array_equal(again.image, sample.image)


def test_composite_crop_foreground_keeps_masks_aligned(tmp_path):
    scenes = make_scenes(3, seed=5, size=(32, 48))
    write_coco(tmp_path / "fg", scenes, encoding="rle")
    config = CompositeConfig(bg_paths=[_backgrounds(tmp_path / "bg")], crop_foreground=True,
                             crop_p=1.0, crop_scale=(0.3, 0.5))
    source = CompositeSource(open_source(tmp_path / "fg", "all"), config, seed=1)
    for epoch in range(2):
        source.set_epoch(epoch)
        for sample in source:
            assert sample.image.shape == (32, 48, 3)
            assert len(sample.category_ids) == len(sample) == len(sample.annotation_ids)
            assert all(m.any() for m in sample.object_masks())


def test_missing_backgrounds(tmp_path):
    with pytest.raises(SamtuneError, match="background folder not found"):
        CompositeSource([], CompositeConfig(bg_paths=[tmp_path / "none"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SamtuneError, match="no background images"):
        CompositeSource([], CompositeConfig(bg_paths=[tmp_path / "empty"]))


def test_open_dataset_from_config(two_sources, tmp_path):
    cables, shapes = two_sources
    config = DataConfig(
        train=[SourceConfig(path=cables, percentage=0.5, val_size=0.2), SourceConfig(path=shapes)],
        composite=CompositeConfig(bg_paths=[_backgrounds(tmp_path / "bg")]), seed=2)
    train = open_dataset(config, "train")
    assert isinstance(train, CompositeSource) and isinstance(train.source, MixedSource)
    assert len(train) == 4 + 3  # int(8 * 0.5) cables + shapes' 3 train images (4 - int(1.2))
    before = train.image_paths
    train.set_epoch(1)
    assert train.image_paths != before and len(train) == 7
    val = open_dataset(config, "val")
    assert isinstance(val, MixedSource) and len(val) == 2 + 1
    single = open_dataset(DataConfig(train=[SourceConfig(path=shapes)], val=[
        SourceConfig(path=cables)]), "val")
    assert len(single) == 10  # a separate unsplit val source is used whole
    assert len(open_dataset(DataConfig(train=[SourceConfig(path=shapes)], val=[
        SourceConfig(path=cables)]), "train")) == 4  # and so is an unsplit train source


def test_config_rejects_unknown_options(tmp_path):
    with pytest.raises(ValueError, match="extra"):
        SourceConfig(path=tmp_path, percent=0.5)
    with pytest.raises(ValueError):
        SourceConfig(path=tmp_path, percentage=0)


def test_at_is_stateless(two_sources, tmp_path):
    cables, shapes = (open_source(p, "all") for p in two_sources)
    mix = MixedSource([cables, shapes], [0.5, 0.5], seed=0)
    composite = CompositeSource(mix, CompositeConfig(bg_paths=[_backgrounds(tmp_path / "bg")]))
    mix.resample(2)
    second_epoch = [s.path for s in mix]
    mix.resample(0)
    assert [mix.at(2, i).path for i in range(len(mix))] == second_epoch
    assert np.array_equal(composite.at(2, 1).image, composite.at(2, 1).image)
    composite.set_epoch(2)
    assert np.array_equal(composite[1].image, composite.at(2, 1).image)
    assert composite[1].path == second_epoch[1]
