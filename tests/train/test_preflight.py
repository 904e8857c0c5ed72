"""Empty and degenerate data is handled, loudly: negatives, refusals, warnings once."""

import warnings

import numpy as np
import pytest

from samtune.config import build_run_config
from samtune.data.batch import Collator
from samtune.data.datamodule import PromptedDataset
from samtune.data.sample import Sample
from samtune.data.synthetic import make_scenes, write_folder
from samtune.errors import SamtuneError
from samtune import load_model
from samtune.notices import TrainWarning
from samtune.train.run import train


def _config(root, tmp_path, *extra):
    return build_run_config(None, [f"data.train=[{{path: {root}}}]", f"output_dir={tmp_path / 'runs'}",
                                   "model.name=sam_tiny", "train.max_steps=2", "train.batch_size=2",
                                   "train.val_every_n_steps=1", "train.progress_bar=false",
                                   "prompts.mix={box: 1.0}", *extra])


def _blank_masks(root, names):
    from PIL import Image

    for name in names:
        path = root / "masks" / f"{name}.png"
        Image.fromarray(np.zeros_like(np.array(Image.open(path)))).save(path)


def test_a_dataset_of_only_empty_masks_is_refused_with_the_names(tmp_path):
    scenes = make_scenes(4, seed=0, size=(40, 48))
    root = write_folder(tmp_path / "data", scenes)
    _blank_masks(root, [s.name for s in scenes])
    with pytest.raises(SamtuneError, match=r"holds no objects: all 3 image\(s\) have empty masks \(.*scene_0000"):
        train(_config(root, tmp_path, "data.train.0.val_size=0.25"))
    assert not (tmp_path / "runs" / "run" / "checkpoints").exists()


def test_images_without_objects_train_as_negatives_and_are_named(tmp_path):
    scenes = make_scenes(6, seed=0, size=(40, 48), n_objects=(1, 2))
    root = write_folder(tmp_path / "data", scenes)
    _blank_masks(root, [scenes[0].name, scenes[1].name])
    config = _config(root, tmp_path, "data.train.0.val_size=0.34")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config)
    said = [str(w.message) for w in caught if issubclass(w.category, (TrainWarning, UserWarning))]
    negatives = [m for m in said if "train as negatives" in m]
    assert len(negatives) == 1 and "scene_0000" in negatives[0] + "".join(said)
    empty_mask_notes = [m for m in said if "empty mask" in m]
    assert empty_mask_notes and len(empty_mask_notes) == len(set(empty_mask_notes))
    assert result.last_step == 2


def test_a_negative_is_one_empty_target_with_no_prompt():
    image = np.zeros((32, 40, 3), dtype=np.uint8)
    empty = Sample(image, masks=np.zeros((0, 32, 40), dtype=bool), path="blank.png")
    data = PromptedDataset([empty], build_run_config(None, []).prompts, negatives=True)
    item = data[0]
    assert len(item.sample) == 1 and not item.sample.object_masks().any()
    assert item.prompts[0].kind.name == "none"
    batch = Collator.for_model(load_model("sam_tiny"))([item])
    assert batch.num_objects == 1 and not batch.targets.any()
    assert len(PromptedDataset([empty], build_run_config(None, []).prompts)[0].sample) == 0


def test_a_split_without_validation_images_warns_before_training(tmp_path):
    root = write_folder(tmp_path / "data", make_scenes(3, seed=0, size=(40, 48)))
    with pytest.warns(TrainWarning, match="no validation images"):
        result = train(_config(root, tmp_path, "data.train.0.val_size=0.0", "train.max_steps=1"))
    assert result.best_checkpoint is None and result.last_step == 1


def test_the_object_cap_draws_afresh_each_epoch_and_names_the_first_image_it_trims():
    masks = np.zeros((40, 32, 40), dtype=bool)
    for i in range(40):
        masks[i, i % 32, i] = True
    crowded = Sample(np.zeros((32, 40, 3), dtype=np.uint8), masks=masks, path="crowded.png", source="cells")
    prompts = build_run_config(None, []).prompts
    assert prompts.max_objects_per_image == 25
    data = PromptedDataset([crowded, crowded], prompts)
    with pytest.warns(TrainWarning, match=r"cells:crowded.png has 40 objects: each epoch trains on 25") as said:
        first = data[(0, 0)]
        data[(0, 1)]
    assert len([w for w in said if issubclass(w.category, TrainWarning)]) == 1
    later = data[(1, 0)]
    assert len(first.sample) == len(later.sample) == 25
    assert not np.array_equal(first.sample.object_masks(), later.sample.object_masks())
