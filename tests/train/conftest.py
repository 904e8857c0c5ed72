import pytest

from samtune.config import build_run_config
from samtune.data.synthetic import make_splits, write_folder, write_splits


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """6 train and 2 val images (48x64) with 1-3 instances each, as a folder dataset."""
    root = tmp_path_factory.mktemp("tiny_data")
    splits = make_splits({"train": 6, "val": 2}, seed=0, size=(48, 64), n_objects=(1, 3),
                         kinds=("ellipse", "rectangle", "polygon"))
    return write_splits(write_folder, root, splits, masks="label_png16")


@pytest.fixture
def make_config(tiny_dataset, tmp_path):
    """A RunConfig for a few CPU steps on the tiny dataset, with overrides."""

    def make(*overrides: str, name: str = "run"):
        base = [
            f"data.train=[{{path: {tiny_dataset}}}]",
            f"output_dir={tmp_path / 'runs'}", f"name={name}",
            "model.name=sam_tiny", "train.max_steps=4", "train.batch_size=2",
            "train.val_every_n_steps=2", "train.progress_bar=false", "train.optimizer.lr=0.001",
            "prompts.mix={box: 1.0}",
        ]
        return build_run_config(None, base + list(overrides))

    return make
