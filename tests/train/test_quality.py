"""Quality on real weights: fine-tuning LiteMedSAM from its bundled checkpoint makes it better
on images no run has seen, for each recipe; segment-everything then finds the objects; and
eval's numbers on real predictions are the ones a hand computation gives.

LiteMedSAM was trained with boxes only: the base model answers a click with an (almost) empty
mask, so its automatic mask generator (one click per grid point) finds nothing. The recipes
train through ``samtune train`` on the demo's generated data (rings, ellipses, rectangles,
cables) with boxes and clicks, and are scored on the held-out test split as ``samtune eval``
scores it. Training the encoder takes minutes on a CPU: those tests are marked slow and run
before a release; the decoder recipe and the hand computation run in CI.
"""

from __future__ import annotations

import numpy as np
import pytest

from samtune import load_model
from samtune.config import build_run_config
from samtune.demo import make_demo_data
from samtune.infer.evaluate import EvalSettings, evaluate_models, resolve_data, summarize
from samtune.infer.predictor import Predictor
from samtune.train.run import train

RECIPES = {
    "decoder_cached": ["model.freeze=[image_encoder, prompt_encoder]"],
    "lora": ["model.freeze=[image_encoder, prompt_encoder]",
             "model.lora={targets: [image_encoder], rank: 8, alpha: 16}"],
    "full": ["model.freeze=[]", "train.gradient_checkpointing=true",
             "train.optimizer.group_lr={image_encoder: 0.00003}"],
}
STEPS = {"decoder_cached": 60, "lora": 40, "full": 40}
#: Held-out mean IoU the fine-tuned model must add over the base, per prompt. One click: the
#: base cannot use it at all (IoU near 0), a few dozen steps teach it. Box: the base is good
#: on this data (about 0.8); the tuned model must not lose more than this while learning clicks.
POINT_GAIN = 0.2
BOX_LOSS = 0.03
#: What a box-trained encoder recipe must add to box IoU (bench/recipes.py at 30 steps: the
#: cached decoder +0.066, LoRA +0.067, the full fine-tune with the encoder at lr 3e-5 +0.068).
BOX_GAIN = 0.02


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_data(tmp_path_factory.mktemp("quality") / "data", seed=7,
                          counts={"train": 16, "val": 4, "test": 8})


@pytest.fixture(scope="module")
def base_model():
    return load_model("litemedsam", checkpoint="auto")


@pytest.fixture(scope="module")
def base_scores(data, base_model):
    return held_out(base_model, data)


def held_out(model, data) -> dict[str, float]:
    test, _, _ = resolve_data(str(data), "test")
    results, _ = evaluate_models({"m": model}, test, EvalSettings(modes=("box", "point")),
                                 progress=False)
    return {mode: summarize(results["m"][mode])["mask"]["iou"] for mode in ("box", "point")}


def fine_tune(data, out, name: str, overrides: list[str], steps: int, seed: int = 0):
    config = build_run_config(None, [
        f"data.train=[{{path: {data}}}]", f"output_dir={out}", f"name={name}", f"seed={seed}",
        "model.name=litemedsam", "model.checkpoint=auto", "prompts.mix={box: 0.5, points: 0.5}",
        "prompts.max_objects_per_image=2", "train.batch_size=2", f"train.max_steps={steps}",
        f"train.val_every_n_steps={steps}", "train.validate_before_training=false",
        "train.optimizer.lr=0.0003", "train.schedule.warmup_steps=5", "train.progress_bar=false",
        "train.loss.weights={dice: 1.0, bce: 1.0, iou_head: 1.0}",
        *overrides])
    train(config)
    return load_model(config.run_dir / "checkpoints" / "last.ckpt")


def test_decoder_fine_tune_with_boxes_and_clicks_learns_clicks(data, base_scores, tmp_path):
    """The cached decoder recipe, half boxes and half clicks: clicks go from useless to usable,
    boxes stay as good as they were."""
    tuned = held_out(fine_tune(data, tmp_path, "decoder", RECIPES["decoder_cached"],
                               STEPS["decoder_cached"]), data)
    assert base_scores["point"] < 0.1, base_scores  # the base cannot use a click
    assert base_scores["box"] > 0.6, base_scores  # and a box well
    assert tuned["point"] >= base_scores["point"] + POINT_GAIN, (base_scores, tuned)
    assert tuned["box"] >= base_scores["box"] - BOX_LOSS, (base_scores, tuned)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["lora", "full"])
def test_encoder_recipes_with_boxes_beat_the_base(recipe, data, base_scores, tmp_path):
    """LoRA and the full fine-tune, trained with boxes, segment held-out objects from their box
    better than the base."""
    tuned = held_out(fine_tune(data, tmp_path, recipe, RECIPES[recipe] + ["prompts.mix={box: 1.0}"],
                               STEPS[recipe]), data)
    assert tuned["box"] >= base_scores["box"] + BOX_GAIN, (recipe, base_scores, tuned)


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """A domain of filled ellipses and rectangles: 16 training, 4 validation, 4 test images."""
    from samtune.data.synthetic import make_splits, write_folder, write_splits

    splits = make_splits({"train": 16, "val": 4, "test": 4}, seed=5, size=(192, 256),
                         n_objects=(2, 4), kinds=("ellipse", "rectangle"), min_area=30)
    return write_splits(write_folder, tmp_path_factory.mktemp("shapes"), splits, masks="label_png16")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.slow
def test_segment_everything_finds_the_objects_after_fine_tuning(shapes_data, base_model, tmp_path):
    """At the official thresholds (predicted IoU 0.88, stability 0.95), on 4 held-out images of
    the domain trained on: nothing from the base; after 150 decoder steps with one click per
    object, masks that are objects. Measured: 5 masks for 13 objects, 3 objects found at IoU
    0.89 to 0.98 (held-out one-click IoU 0.01 -> 0.67): precise, with low recall this early."""
    from samtune.infer.automatic import AutomaticMaskGenerator

    test, _, _ = resolve_data(str(shapes_data), "test")
    test = [test[i] for i in range(len(test))]
    base = AutomaticMaskGenerator(base_model, points_per_side=8)
    assert all(base.generate(s.image) == [] for s in test)
    tuned = fine_tune(shapes_data, tmp_path, "amg", RECIPES["decoder_cached"] + ["prompts.mix={points: 1.0}"], 150)
    generator = AutomaticMaskGenerator(tuned, points_per_side=8)
    per_mask, per_object = [], []  # best IoU of each mask with an object, of each object with a mask
    for sample in test:
        records = generator.generate(sample.image)
        truth = sample.object_masks()
        per_mask += [max(mask_iou(r["segmentation"], t) for t in truth) for r in records]
        per_object += [max((mask_iou(r["segmentation"], t) for r in records), default=0.0) for t in truth]
    assert len(per_mask) >= 3, per_mask
    assert sum(v > 0.85 for v in per_object) >= 2, per_object
    assert np.median(per_mask) > 0.5, per_mask


def test_eval_numbers_equal_a_hand_computation(data, base_model):
    """Box mode on two test images: eval's IoU, Dice and pixel accuracy per object are the
    counts of the base model's own box masks against the ground truth, done by hand."""
    test, _, _ = resolve_data(str(data), "test")
    test = [test[0], test[1]]
    results, _ = evaluate_models({"base": base_model}, test, EvalSettings(modes=("box",)),
                                 progress=False)
    predictor = Predictor(base_model)
    expected = {"iou": [], "dice": [], "pixel_accuracy": []}
    for sample in test:
        predictor.set_image(sample.image)
        for truth, box in zip(sample.object_masks(), sample.boxes(), strict=True):
            masks, _, _ = predictor.predict(box=np.asarray(box), multimask_output=False)
            pred = masks[0]
            tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
            expected["iou"].append(tp / (tp + fp + fn))
            expected["dice"].append(2 * tp / (2 * tp + fp + fn))
            expected["pixel_accuracy"].append((pred == truth).mean())
    got = results["base"]["box"]
    assert len(got.values("iou")) == len(expected["iou"]) >= 4
    for name, values in expected.items():
        np.testing.assert_allclose(got.values(name), values, rtol=1e-5, err_msg=name)
    assert 0.5 < np.mean(expected["iou"]) < 0.99  # real masks, neither empty nor perfect
    assert summarize(got)["mask"]["iou"] == pytest.approx(np.mean(expected["iou"]), rel=1e-6)
