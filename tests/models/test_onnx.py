"""ONNX export parity: onnxruntime on ``encoder.onnx`` + ``decoder.onnx`` against samtune's
PyTorch adapter, for every family, with dynamic numbers of objects and points."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from samtune.models.adapter import Prompts
from samtune.models.load import build_adapter, load_base_model
from samtune.models.registry import get_spec
from samtune.models.onnx_export import export_onnx

ort = pytest.importorskip("onnxruntime")

IMAGE = np.random.default_rng(1).integers(0, 256, (180, 240, 3), dtype=np.uint8)
#: every family, and MedSAM's square resize (SAM's code, no padding to crop); MobileSAM's
#: TinyViT is LiteMedSAM's too, so its tiny variant runs outside CI
FAMILIES = ["sam_tiny", "medsam_tiny", pytest.param("mobile_sam_tiny", marks=pytest.mark.slow),
            "sam2_tiny", "litemedsam"]


def _base(name: str):
    if name == "medsam_tiny":  # MedSAM's preprocessing on SAM's tiny widths
        sam = load_base_model("sam_tiny", seed=5).model
        return build_adapter(replace(get_spec("sam_tiny"), preprocessing="medsam"), sam)
    return load_base_model(name, seed=5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            adapter = _base(name)
            paths = export_onnx(adapter, tmp_path_factory.mktemp(name))
            made[name] = (adapter, [ort.InferenceSession(str(p)) for p in paths[:2]], paths)
        return made[name]

    return get


def _onnx_prompts(adapter, boxes, points, labels):
    """samtune prompts -> segment-anything's ONNX point_coords / point_labels: points, then
    box corners (labels 2, 3); the padding point where the family's prompt encoder pads."""
    coords, codes = [], []
    if points is not None:
        coords.append(points)
        codes.append(labels.float())
    if boxes is not None:
        coords.append(boxes.reshape(-1, 2, 2))
        codes.append(torch.tensor([[2.0, 3.0]]).expand(len(boxes), 2))
    if boxes is None or adapter.always_pads_points:
        n = len(coords[0])
        coords.append(torch.zeros(n, 1, 2))
        codes.append(-torch.ones(n, 1))
    return torch.cat(coords, 1).numpy(), torch.cat(codes, 1).numpy()


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_encoder_and_decoder_match_pytorch(exported, name):
    adapter, (encoder, decoder), paths = exported(name)
    manifest = json.loads(paths[2].read_text())
    assert manifest["family"] == adapter.spec.family and manifest["image_size"] == adapter.image_size
    pre = adapter.preprocess([IMAGE])
    with torch.no_grad():
        features = adapter.encode(pre.images)
    onnx_features = encoder.run(None, {"image": pre.images.numpy()})
    for ours, theirs in zip((features.image_embed, *features.high_res), onnx_features):
        np.testing.assert_allclose(theirs, ours.numpy(), atol=1e-4)

    size = IMAGE.shape[:2]
    rng = np.random.default_rng(2)
    cases = {  # (boxes, points, labels): several objects, several numbers of points
        "box": (rng.uniform(0, 170, (3, 2)), None, None),
        "points": (None, rng.uniform(0, 170, (2, 3, 2)), torch.tensor([[1, 0, 1], [1, 1, 0]])),
        "box+point": (rng.uniform(0, 170, (4, 2)), rng.uniform(0, 170, (4, 1, 2)), torch.ones(4, 1, dtype=torch.long)),
    }
    for case, (corners, points, labels) in cases.items():
        boxes = None
        if corners is not None:
            boxes = adapter.transform_boxes(np.concatenate([corners, corners + 60], 1), size)
        if points is not None:
            points = adapter.transform_coords(points, size)
        n = len(boxes if boxes is not None else points)
        prompts = Prompts(torch.zeros(n, dtype=torch.long), points, labels, boxes)
        coords, codes = _onnx_prompts(adapter, boxes, points, labels)
        masks, iou, low_res = decoder.run(None, {
            "image_embeddings": onnx_features[0],
            **{f"high_res_feats_{i}": f for i, f in enumerate(onnx_features[1:])},
            "point_coords": coords, "point_labels": codes,
            "mask_input": np.zeros((n, 1, *adapter.mask_input_size), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(size, np.float32),
        })
        assert masks.shape == (n, 4, *size) and iou.shape == (n, 4)
        for multimask, keep in ((False, slice(0, 1)), (True, slice(1, 4))):
            with torch.no_grad():
                logits, scores = adapter.decode(features, prompts, multimask)
                full = adapter.postprocess(logits, pre.input_sizes[0], size)
            np.testing.assert_allclose(low_res[:, keep], logits.numpy(), atol=1e-3, err_msg=f"{name} {case}")
            np.testing.assert_allclose(iou[:, keep], scores.numpy(), atol=1e-3, err_msg=f"{name} {case}")
            np.testing.assert_allclose(masks[:, keep], full.numpy(), atol=1e-3, err_msg=f"{name} {case}")
            # masks equal; a pixel may flip only where the logit is zero up to float rounding
            differ = (masks[:, keep] > 0) != (full.numpy() > 0)
            assert np.all(np.abs(full.numpy()[differ]) < 1e-5), f"{name} {case}"
            assert differ.mean() < 1e-4


@pytest.mark.parametrize("name", ["sam_tiny", "sam2_tiny"])
def test_onnx_mask_prompt_matches_pytorch(exported, name):
    """A previous low-res mask as prompt (has_mask_input=1) goes through the same dense path."""
    adapter, (encoder, decoder), _ = exported(name)
    pre = adapter.preprocess([IMAGE])
    with torch.no_grad():
        features = adapter.encode(pre.images)
    onnx_features = encoder.run(None, {"image": pre.images.numpy()})
    points = adapter.transform_coords(np.array([[[60.0, 70.0]], [[150.0, 90.0]]]), IMAGE.shape[:2])
    labels = torch.ones(2, 1, dtype=torch.long)
    mask = torch.randn(2, 1, *adapter.mask_input_size) * 5
    with torch.no_grad():
        logits, _ = adapter.decode(features, Prompts(torch.zeros(2, dtype=torch.long), points, labels,
                                                     mask_inputs=mask), False)
    coords, codes = _onnx_prompts(adapter, None, points, labels)
    _, _, low_res = decoder.run(None, {
        "image_embeddings": onnx_features[0],
        **{f"high_res_feats_{i}": f for i, f in enumerate(onnx_features[1:])},
        "point_coords": coords, "point_labels": codes, "mask_input": mask.numpy(),
        "has_mask_input": np.ones(1, np.float32), "orig_im_size": np.array(IMAGE.shape[:2], np.float32),
    })
    np.testing.assert_allclose(low_res[:, :1], logits.numpy(), atol=1e-3)
    assert np.array_equal(low_res[:, :1] > 0, logits.numpy() > 0)


def _numpy_preprocess(image: np.ndarray, manifest: dict) -> tuple[np.ndarray, float, float]:
    """The README's preprocessing, numpy + PIL only: (1, 3, S, S) input and the x, y scales."""
    from PIL import Image

    size, pre = manifest["image_size"], manifest["preprocess"]
    h, w = image.shape[:2]
    if manifest["family"] == "sam2":
        channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32) / 255).resize(
            (size, size), Image.BILINEAR)) for c in range(3)]
        x = (np.stack(channels, -1) - pre["mean"]) / pre["std"]
        return x.transpose(2, 0, 1)[None].astype(np.float32), size / w, size / h
    scale = size / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    padded = np.zeros((size, size, 3), np.float32)
    if manifest["family"] == "litemedsam":
        import cv2

        x = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float64)
        padded[:nh, :nw] = (x - x.min()) / max(x.max() - x.min(), 1e-8)
        return padded.transpose(2, 0, 1)[None], scale, scale
    x = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
    padded[:nh, :nw] = (x - pre["mean"]) / pre["std"]
    return padded.transpose(2, 0, 1)[None], nw / w, nh / h


@pytest.mark.parametrize("name", ["sam_tiny", "sam2_tiny", "litemedsam"])
def test_the_readme_numpy_preprocessing_matches_samtune(exported, name):
    adapter, _, paths = exported(name)
    manifest = json.loads(paths[2].read_text())
    x, sx, sy = _numpy_preprocess(IMAGE, manifest)
    ours = adapter.preprocess([IMAGE]).images.numpy()
    # SAM: the same PIL resize, so equal; SAM 2: PIL's bilinear on float channels against
    # torch's antialiased bilinear, equal up to float rounding
    np.testing.assert_allclose(x, ours, atol=1e-5)
    np.testing.assert_allclose(adapter.transform_coords([[100.0, 50.0]], IMAGE.shape[:2]).numpy(),
                               [[100 * sx, 50 * sy]], rtol=1e-6)


@pytest.mark.parametrize("name", ["sam_tiny", "sam2_tiny"])
def test_onnx_decoder_of_a_model_with_a_class_head_gives_its_probabilities(tmp_path, name):
    """A class head adds ``category_probs`` (one row per mask token) to the decoder graph,
    equal to the head's probabilities in PyTorch; the manifest lists the categories."""
    from samtune.models.class_head import attach_class_head

    adapter = _base(name)
    torch.manual_seed(0)
    head = attach_class_head(adapter, {2: "cell", 5: "debris", 8: "vessel"})
    paths = export_onnx(adapter, tmp_path)
    manifest = json.loads(paths[2].read_text())
    assert manifest["decoder"]["outputs"][-1] == "category_probs"
    assert manifest["categories"] == [{"id": 2, "name": "cell"}, {"id": 5, "name": "debris"},
                                      {"id": 8, "name": "vessel"}]
    encoder, decoder = (ort.InferenceSession(str(p)) for p in paths[:2])
    pre = adapter.preprocess([IMAGE])
    features = encoder.run(None, {"image": pre.images.numpy()})
    boxes = adapter.transform_boxes(np.array([[10, 10, 90, 80], [100, 40, 220, 170.0]]), IMAGE.shape[:2])
    coords, codes = _onnx_prompts(adapter, boxes, None, None)
    *_, probs = decoder.run(None, {
        "image_embeddings": features[0],
        **{f"high_res_feats_{i}": f for i, f in enumerate(features[1:])},
        "point_coords": coords, "point_labels": codes,
        "mask_input": np.zeros((2, 1, *adapter.mask_input_size), np.float32),
        "has_mask_input": np.zeros(1, np.float32), "orig_im_size": np.array(IMAGE.shape[:2], np.float32)})
    with torch.no_grad():
        embedded = adapter.encode(pre.images)
        prompts = Prompts(torch.zeros(2, dtype=torch.long), boxes=boxes)
        for multimask, keep in ((False, slice(0, 1)), (True, slice(1, 4))):
            low, _, tokens = adapter.decode_tokens(embedded, prompts, multimask)
            want = head(tokens, embedded.image_embed, low, prompts.image_index).softmax(-1)
            np.testing.assert_allclose(probs[:, keep], want.numpy(), atol=1e-4)
