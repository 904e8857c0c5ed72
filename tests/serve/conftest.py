"""Shared by the API and browser tests: a small folder dataset and a real run folder (a few
training steps of sam_tiny, then `samtune eval` on it), made once per session."""

import pytest

from samtune.config import build_run_config
from samtune.data.synthetic import make_splits, write_folder, write_splits


@pytest.fixture(scope="session")
def serve_data(tmp_path_factory):
    """4 train and 2 val images (64x80) with 1-2 shapes each, as a folder dataset."""
    root = tmp_path_factory.mktemp("serve_data")
    splits = make_splits({"train": 4, "val": 2}, seed=3, size=(64, 80), n_objects=(1, 2),
                         kinds=("ellipse", "rectangle"))
    return write_splits(write_folder, root, splits, masks="label_png16")


@pytest.fixture(scope="session")
def serve_run(serve_data, tmp_path_factory):
    """A run folder from 4 training steps of sam_tiny, with an eval report (box mode) where
    `samtune eval RUN` writes it: RUN/eval/val/."""
    from samtune.infer.evaluate import (
        EvalSettings,
        eval_folder_name,
        resolve_data,
        resolve_models,
        run_eval,
    )
    from samtune.train.run import train

    config = build_run_config(None, [
        f"data.train=[{{path: {serve_data}}}]", f"output_dir={tmp_path_factory.mktemp('runs')}",
        "name=served", "model.name=sam_tiny", "model.freeze=[]", "train.max_steps=4",
        "train.batch_size=2", "train.val_every_n_steps=2", "train.progress_bar=false",
        "train.optimizer.lr=0.002", "prompts.mix={box: 1.0}"])
    train(config)
    models = resolve_models(config.run_dir)
    dataset, described, split = resolve_data(None, None, models.run_config)
    run_eval(models.tuned, models.base, dataset, config.run_dir / "eval" / eval_folder_name(None),
             EvalSettings(modes=("box",)), {"model": models.tuned_label,
                                             "base": models.base_label, "data": described,
                                             "split": split}, progress=False)
    return config.run_dir
