"""Training on random full-resolution windows of large images (``data.random_crop``)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from samtune.config.data import DataConfig
from samtune.config.prompts import PromptConfig
from samtune.data.datamodule import PromptedDataset
from samtune.data.sample import Sample
from samtune.data.synthetic import make_scene
from samtune.data.transforms import random_window


def large_sample(label_map: bool) -> Sample:
    scene = make_scene(7, size=(300, 420), n_objects=(6, 8))
    ids = list(range(1, len(scene.category_ids) + 1))
    if label_map:
        return Sample(scene.image, label_map=scene.label_map, object_ids=ids,
                      category_ids=scene.category_ids, path="big.png")
    return Sample(scene.image, masks=np.stack(scene.masks()), category_ids=scene.category_ids,
                  path="big.png")


@pytest.mark.parametrize("label_map", [False, True])
def test_window_is_full_resolution_and_holds_an_object(label_map):
    sample = large_sample(label_map)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        window = random_window(sample, 128, rng)
        assert window.image.shape == (128, 128, 3)
        # the pixels are the image's own, not resampled: find the window in the image
        found = [(y, x) for y in range(0, 300 - 127) for x in range(0, 420 - 127)
                 if (sample.image[y, x] == window.image[0, 0]).all()
                 and np.array_equal(sample.image[y:y + 128, x:x + 128], window.image)]
        assert found
        y, x = found[0]
        masks = window.object_masks()
        np.testing.assert_array_equal(masks, sample.object_masks()[:, y:y + 128, x:x + 128])
        assert window.category_ids == sample.category_ids
        assert masks.any(axis=(1, 2)).sum() >= 1  # the drawn object's centre is inside


def test_small_images_pass_whole_and_wide_ones_keep_their_height():
    sample = large_sample(False)
    rng = np.random.default_rng(0)
    assert random_window(sample, 512, rng) is sample
    assert random_window(sample, 350, rng).image.shape == (300, 350, 3)


def test_dataset_crops_training_items_and_draws_are_seeded():
    source = [large_sample(True)]
    prompts = PromptConfig()
    a = PromptedDataset(source, prompts, seed=3, crop_size=96)[(0, 0)]
    b = PromptedDataset(source, prompts, seed=3, crop_size=96)[(0, 0)]
    assert a.sample.image.shape == (96, 96, 3)
    np.testing.assert_array_equal(a.sample.image, b.sample.image)
    assert len(a.sample) >= 1  # objects cut to nothing are dropped by the min_area rule
    whole = PromptedDataset(source, prompts, seed=3)[(0, 0)]
    assert whole.sample.image.shape == (300, 420, 3)


def test_config_option():
    base = {"train": [{"path": "data"}]}
    assert DataConfig(**base).random_crop is None
    assert DataConfig(**base, random_crop="model").random_crop == "model"
    assert DataConfig(**base, random_crop=512).random_crop == 512
    with pytest.raises(ValidationError, match="random_crop"):
        DataConfig(**base, random_crop=4)
