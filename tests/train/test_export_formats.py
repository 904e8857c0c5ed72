"""``samtune export RUN --format hf|onnx`` on a trained run: each loads in the other runtime
(transformers, onnxruntime) and predicts what ``load_model(RUN)`` predicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from samtune import load_model
from samtune.cli import app
from samtune.models.adapter import Prompts
from samtune.train.run import train

transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

IMAGE = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def lora_run(tiny_dataset, tmp_path_factory):
    """A 2-step LoRA fine-tune of sam_tiny (LoRA is merged by every export)."""
    from samtune.config import build_run_config

    out = tmp_path_factory.mktemp("format_runs")
    config = build_run_config(None, [
        f"data.train=[{{path: {tiny_dataset}}}]", f"output_dir={out}", "name=lora",
        "model.name=sam_tiny", "train.max_steps=2", "train.batch_size=2", "train.val_every_n_steps=2",
        "train.progress_bar=false", "train.optimizer.lr=0.01", "prompts.mix={box: 1.0}",
        "model.lora={targets: [image_encoder, mask_decoder], rank: 2}"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAMTUNE_HOME", str(out / "home"))
        train(config)
    return config.run_dir


def _box_logits(adapter):
    pre = adapter.preprocess([IMAGE])
    box = adapter.transform_boxes(torch.tensor([[8.0, 6, 40, 30]]), IMAGE.shape[:2])
    with torch.no_grad():
        logits, iou = adapter.decode(adapter.encode(pre.images), Prompts(torch.zeros(1, dtype=torch.long),
                                                                        boxes=box), True)
    return pre.images, box, logits, iou


def test_cli_export_hf_and_onnx_load_in_the_other_runtimes(lora_run):
    result = CliRunner().invoke(app, ["export", str(lora_run), "--format", "hf", "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert "as hf" in result.output and "as onnx" in result.output
    assert "preprocessor_config.json" in result.output
    ours = load_model(lora_run)
    pixels, box, logits, iou = _box_logits(ours)

    hf_dir = lora_run / "export" / "hf"
    hf_model = transformers.SamModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        out = hf_model(pixel_values=pixels, input_boxes=box[None], multimask_output=True)
    assert (out.pred_masks[0] - logits).abs().max() < 1e-4
    assert torch.equal(out.pred_masks[0] > 0, logits > 0)
    back = load_model(hf_dir)  # and back into samtune: the same tensors
    for k, v in ours.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v), k

    onnx_dir = lora_run / "export" / "onnx"
    manifest = json.loads((onnx_dir / "onnx.json").read_text())
    assert manifest["model"] == "sam_tiny"
    assert manifest["preprocess"]["padding_point"] == "when the object has no box"
    encoder = ort.InferenceSession(str(onnx_dir / "encoder.onnx"))
    decoder = ort.InferenceSession(str(onnx_dir / "decoder.onnx"))
    (embedding,) = encoder.run(None, {"image": pixels.numpy()})
    _, scores, low_res = decoder.run(None, {
        "image_embeddings": embedding, "point_coords": box.reshape(1, 2, 2).numpy(),
        "point_labels": np.array([[2, 3]], np.float32),
        "mask_input": np.zeros((1, 1, *manifest["mask_input_size"]), np.float32), "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(IMAGE.shape[:2], np.float32)})
    np.testing.assert_allclose(low_res[:, 1:], logits.numpy(), atol=1e-3)
    np.testing.assert_allclose(scores[:, 1:], iou.numpy(), atol=1e-3)


def test_several_formats_take_no_single_output_folder(lora_run, tmp_path):
    result = CliRunner().invoke(app, ["export", str(lora_run), "--format", "hf", "--format", "onnx",
                                      "--output", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "error:" in result.output and "--output goes with one --format" in result.output
