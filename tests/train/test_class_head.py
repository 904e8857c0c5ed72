"""``model.class_head``: trained from the data's categories, saved, exported, reloaded, and
used by predict, the automatic generator and eval."""

import json

import numpy as np
import pytest
import torch
import yaml

from samtune import AutomaticMaskGenerator, Predictor, load_model
from samtune.config import build_run_config
from samtune.data.synthetic import make_splits, write_r3
from samtune.errors import SamtuneError
from samtune.models.class_head import CLASS_HEAD_FILE
from samtune.runs import read_training_checkpoint
from samtune.train.export import export_run
from samtune.train.losses import class_loss
from samtune.train.run import train

NAMES = {1: "ellipse", 2: "rectangle", 3: "polygon"}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_classes")
    splits = make_splits({"train": 6, "val": 2}, seed=0, size=(48, 64), n_objects=(2, 3),
                         kinds=("ellipse", "rectangle", "polygon"))
    return write_r3(root, splits)


def coco_config(root, out, *overrides):
    return build_run_config(None, [
        f"data.train=[{{path: {root}}}]", f"output_dir={out}", "name=run", "model.name=sam_tiny",
        "train.max_steps=4", "train.batch_size=2", "train.val_every_n_steps=2",
        "train.progress_bar=false", "train.optimizer.lr=0.001", "prompts.mix={box: 1.0}",
        "model.class_head=true", "train.log_every_n_steps=1", *overrides])


@pytest.fixture(scope="module")
def trained_run(coco_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = train(coco_config(coco_root, out))
    return result


def test_class_loss_is_cross_entropy_per_candidate_normalised_per_mask():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 4)
    targets = torch.tensor([1, -100, 3])
    want = (torch.nn.functional.cross_entropy(logits[0], torch.tensor([1, 1]))
            + torch.nn.functional.cross_entropy(logits[2], torch.tensor([3, 3]))) / 5
    assert class_loss(logits, targets, num_masks=5).item() == pytest.approx(want.item(), rel=1e-6)
    # nothing to learn from: zero, not NaN
    assert class_loss(logits, torch.full((3,), -100)).item() == 0.0


def test_run_learns_the_data_categories_and_keeps_them(trained_run):
    run = trained_run.run_dir
    state = read_training_checkpoint(run / "checkpoints" / "last.ckpt")
    assert state["hyper_parameters"]["categories"] == [{"id": i, "name": n} for i, n in NAMES.items()]
    assert any(k.startswith("adapter.class_head.") for k in state["state_dict"])
    assert "val/class_accuracy" in trained_run.final_metrics
    assert 0.0 <= trained_run.final_metrics["val/class_accuracy"] <= 1.0
    header = (run / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_class" in header and "val/class_accuracy" in header
    model = load_model(run)
    assert model.class_head.categories == NAMES


def test_the_head_trains_and_the_official_weights_stay_official(trained_run, coco_root):
    """The head's weights moved from their init (which the run's seed rebuilds: best.ckpt is
    the untrained step 0 here); model.pth holds the official keys only."""
    from samtune.runs import base_model

    run = trained_run.run_dir
    tuned = load_model(run / "checkpoints" / "last.ckpt")
    fresh = coco_config(coco_root, run.parent)
    from samtune.train.module import FineTuneModule

    init = FineTuneModule(fresh, categories=NAMES).adapter.class_head
    moved = [not torch.equal(a, b) for a, b in zip(tuned.class_head.state_dict().values(),
                                                     init.state_dict().values())]
    assert all(moved)
    untrained = load_model(run / "checkpoints" / "best.ckpt")
    assert trained_run.best_step == 0
    for a, b in zip(untrained.class_head.state_dict().values(), init.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    exported = export_run(run)
    official = torch.load(exported.model, weights_only=True)
    assert set(official) == set(base_model(run).model.state_dict())


def test_export_writes_the_head_and_its_folder_loads_with_it(trained_run):
    run = trained_run.run_dir
    exported = export_run(run)
    folder = exported.output
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"]["class_head"] == CLASS_HEAD_FILE
    assert CLASS_HEAD_FILE in manifest["sha256"]
    assert manifest["categories"] == [{"id": i, "name": n} for i, n in NAMES.items()]
    from_run = load_model(run)            # the run folder: export/model.pth + the head
    from_folder = load_model(folder)      # the export folder alone
    from_ckpt = load_model(run / "checkpoints" / "best.ckpt")  # the checkpoint export wrote
    for other in (from_folder, from_ckpt):
        for a, b in zip(from_run.class_head.state_dict().values(), other.class_head.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a changed head file is refused by the manifest's checksum
    with open(folder / CLASS_HEAD_FILE, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(Exception, match="class_head.safetensors: damaged or changed"):
        load_model(folder)
    export_run(run)


def test_head_leaves_masks_as_they_are_and_labels_them(trained_run):
    """Predictor and the automatic generator: the same masks with and without the head, and
    a category for each from the head's ids."""
    model = load_model(trained_run.run_dir)
    head = model.class_head
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    boxes = np.array([[4, 4, 30, 30], [20, 10, 60, 44]], dtype=float)
    predictor = Predictor(model)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(box=boxes, multimask_output=True)
    probs = predictor.class_probs
    assert probs.shape == (2, 3, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    masks1, _, _ = predictor.predict(box=boxes[0], multimask_output=False)
    assert predictor.class_probs.shape == (1, 3)
    model.class_head = None
    try:
        plain = Predictor(model)
        plain.set_image(image)
        m2, s2, _ = plain.predict(box=boxes, multimask_output=True)
        assert plain.class_probs is None
        np.testing.assert_array_equal(m2, masks)
        np.testing.assert_allclose(s2, scores, rtol=1e-5)
        plain_records = AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0,
                                               stability_score_thresh=0).generate(image)
    finally:
        model.class_head = head
    records = AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0,
                                     stability_score_thresh=0).generate(image)
    assert len(records) == len(plain_records) > 0
    for r, p in zip(records, plain_records):
        np.testing.assert_array_equal(r["segmentation"], p["segmentation"])
        assert r["category_id"] in NAMES and 0 < r["category_score"] <= 1
        assert "category_id" not in p


def test_tiled_predictor_routes_class_probabilities(trained_run):
    model = load_model(trained_run.run_dir)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    boxes = np.array([[4, 4, 30, 30], [70, 50, 120, 90]], dtype=float)
    tiled = Predictor(model, tile_shape=(48, 64), halo=(8, 8))
    tiled.set_image(image)
    tiled.predict(box=boxes, multimask_output=False)
    assert tiled.class_probs.shape == (2, 1, 3)
    for i, box in enumerate(boxes):  # each object's probabilities are its own tile's
        tiled.predict(box=box, multimask_output=False)
        single = tiled.class_probs
        tiled.predict(box=boxes, multimask_output=False)
        np.testing.assert_allclose(tiled.class_probs[i], single, rtol=1e-5)


def test_predict_cli_writes_categories_pycocotools_reads(trained_run, coco_root, tmp_path):
    from pycocotools.coco import COCO

    from samtune.infer.predict_files import predict_paths

    model = load_model(trained_run.run_dir)
    out = tmp_path / "auto"
    predict_paths(Predictor(model), coco_root / "val", out,
                  generator=AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0,
                                                   stability_score_thresh=0), progress=False)
    data = json.loads((out / "predictions.json").read_text())
    assert {c["id"]: c["name"] for c in data["categories"]} == NAMES
    coco = COCO(str(out / "predictions.json"))
    assert coco.getAnnIds() and all(a["category_id"] in NAMES for a in coco.loadAnns(coco.getAnnIds()))
    assert all(a["category_id"] == a["predicted_category_id"] for a in data["annotations"])


def test_eval_reports_class_accuracy_and_class_aware_ap(trained_run, coco_root, tmp_path):
    from samtune.cli import app
    from typer.testing import CliRunner

    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(trained_run.run_dir), "--data", str(coco_root),
                                      "--split", "val", "--modes", "box,auto", "--output", str(out),
                                      "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                                      "--points-per-side", "4"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    tuned, base = metrics["models"]["tuned"], metrics["models"]["base"]
    box = tuned["box"]
    predicted = [c for r in box["images"] for c in r["predicted_categories"]]
    truth = [c for r in box["images"] for c in r["categories"]]
    assert box["class_accuracy"] == pytest.approx(np.mean(np.equal(predicted, truth)))
    assert "class_accuracy" not in base["box"]  # the base has no head
    assert set(tuned["auto"]["coco_classes"]["per_category"]) <= {str(c) for c in NAMES}
    assert "coco_classes" not in base["auto"]
    assert "## Classes" in (out / "report.md").read_text()


def test_class_head_needs_categories_in_the_data(tiny_dataset, tmp_path):
    config = build_run_config(None, [
        f"data.train=[{{path: {tiny_dataset}}}]", f"output_dir={tmp_path}", "name=r",
        "model.name=sam_tiny", "train.max_steps=1", "train.progress_bar=false",
        "model.class_head=true"])
    with pytest.raises(SamtuneError, match="model.class_head learns the data's categories.*no category ids"):
        train(config)


def test_config_reads_back(trained_run):
    config = yaml.safe_load((trained_run.run_dir / "config.yaml").read_text())
    assert config["model"]["class_head"] is True


def test_resuming_with_other_categories_is_refused(trained_run):
    from samtune.train.run import check_resumed_categories

    last = trained_run.run_dir / "checkpoints" / "last.ckpt"
    check_resumed_categories(last, dict(NAMES))  # the same: resumes
    with pytest.raises(SamtuneError, match=r"class head has categories \[1, 2, 3\], the training data now \[1, 2\]"):
        check_resumed_categories(last, {1: "ellipse", 2: "rectangle"})


def test_the_head_sends_no_gradient_into_the_decoder(coco_root, tmp_path):
    """The class loss trains the head only: the decoder's gradient is the mask loss's, with
    the head's cross-entropy weighted 1 or 0."""
    from samtune.data.batch import Collator
    from samtune.data.datamodule import SamDataModule
    from samtune.data.mixing import open_dataset
    from samtune.train.module import FineTuneModule

    grads = []
    for weight in (1.0, 0.0):
        config = coco_config(coco_root, tmp_path, f"train.loss.class_weight={weight}")
        module = FineTuneModule(config, categories=NAMES).train()
        data = SamDataModule(open_dataset(config.data, "train"), Collator.for_model(module.adapter),
                             prompts=config.prompts, batch_size=2, seed=0)
        batch = next(iter(data.train_dataloader()))
        total, parts, *_ = module._step(batch, "train")
        assert parts["class"] > 0
        total.backward()
        grads.append({n: p.grad.clone() for n, p in module.adapter.model.named_parameters()
                      if p.grad is not None})
        head_moves = [bool(p.grad.abs().sum() > 0) for p in module.adapter.class_head.parameters()]
        assert all(head_moves) == (weight > 0) and any(head_moves) == (weight > 0)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=0, msg=name)
