"""transformers' SAM / SAM 2 layout both ways: a ``SamModel`` / ``Sam2Model`` saved by
transformers loads in samtune and predicts what transformers predicts; samtune's HF export
loads in ``from_pretrained`` and agrees likewise; the mapping is strict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from samtune import load_model
from samtune.errors import CheckpointError
from samtune.models.adapter import Prompts
from samtune.models.hf import SAM2_MEMORY_PREFIXES, hf_config, official_to_hf, save_hf
from samtune.models.load import build_without_weights, load_base_model
from samtune.models.registry import get_spec

transformers = pytest.importorskip("transformers")

IMAGE = np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8)


def _sam_config():
    """``sam_tiny``'s architecture in transformers' terms, written out by hand."""
    return transformers.SamConfig(
        vision_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2.0,
                           output_channels=32, image_size=256, window_size=4, global_attn_indexes=[1],
                           num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=256, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=128, num_attention_heads=2, iou_head_hidden_dim=64),
    )


def _sam2_config():
    """``sam2_tiny``'s image path (2.1 tiny with a narrow trunk, 256 input) in transformers' terms."""
    t = transformers
    trunk = t.Sam2HieraDetConfig(
        hidden_size=16, num_attention_heads=1, image_size=[256, 256], blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 2, 4, 8],
        window_size_per_stage=[8, 4, 8, 4], global_attention_blocks=[3],
        window_positional_embedding_background_size=[4, 4])
    vision = t.Sam2VisionConfig(backbone_config=trunk, backbone_channel_list=[128, 64, 32, 16],
                                backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]], fpn_hidden_size=64)
    return t.Sam2Config(vision_config=vision, prompt_encoder_config=dict(hidden_size=64, image_size=256),
                        mask_decoder_config=dict(hidden_size=64))


def _random_hf_model(cls, config, seed: int):
    """A transformers model with weights drawn at a scale that gives varied masks
    (transformers' own init puts SAM's encoder near zero)."""
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if p.ndim > 1 else 0.05)
                    + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
        if hasattr(model, "no_memory_embedding"):  # Sam2Model keeps two copies of one matrix
            model.prompt_encoder.shared_embedding.positional_embedding.copy_(
                model.shared_image_embedding.positional_embedding)
    return model


def _prompts(adapter):
    """Two objects, each a box and two points (one negative), in model input pixels."""
    size = IMAGE.shape[:2]
    boxes = adapter.transform_boxes(torch.tensor([[20.0, 30, 150, 170], [100, 10, 230, 120]]), size)
    points = adapter.transform_coords(torch.tensor([[[80.0, 90], [30, 40]], [[160, 60], [200, 110]]]), size)
    labels = torch.tensor([[1, 0], [1, 1]])
    return boxes, points, labels


def _samtune_logits(adapter, boxes, points, labels, multimask):
    pre = adapter.preprocess([IMAGE])
    with torch.no_grad():
        features = adapter.encode(pre.images)
        logits, iou = adapter.decode(features, Prompts(torch.zeros(2, dtype=torch.long), points, labels, boxes),
                                     multimask)
    return pre.images, logits, iou


def _hf_logits(model, pixels, boxes, points, labels, multimask):
    with torch.no_grad():
        out = model(pixel_values=pixels, input_points=points[None], input_labels=labels[None],
                    input_boxes=boxes[None], multimask_output=multimask)
    return out.pred_masks[0], out.iou_scores[0]


def _assert_same_predictions(samtune_out, hf_out):
    (logits, iou), (hf_logits, hf_iou) = samtune_out, hf_out
    assert logits.shape == hf_logits.shape
    assert (logits - hf_logits).abs().max() < 1e-4
    assert (iou - hf_iou).abs().max() < 1e-4
    assert torch.equal(logits > 0, hf_logits > 0)
    assert 0.05 < (logits > 0).float().mean() < 0.95  # masks, not all-or-nothing


@pytest.mark.parametrize("multimask", [True, False])
def test_a_transformers_sam_loads_and_predicts_the_same_masks(tmp_path, multimask):
    hf_model = _random_hf_model(transformers.SamModel, _sam_config(), seed=1)
    hf_model.save_pretrained(tmp_path / "hf_sam")
    adapter = load_model(tmp_path / "hf_sam")
    assert adapter.spec.family == "sam"
    boxes, points, labels = _prompts(adapter)
    pixels, logits, iou = _samtune_logits(adapter, boxes, points, labels, multimask)
    _assert_same_predictions((logits, iou), _hf_logits(hf_model, pixels, boxes, points, labels, multimask))


def test_a_transformers_sam2_loads_and_predicts_the_same_masks(tmp_path):
    hf_model = _random_hf_model(transformers.Sam2Model, _sam2_config(), seed=2)
    hf_model.save_pretrained(tmp_path / "hf_sam2")
    with pytest.warns(UserWarning, match="image path only"):
        adapter = load_model(tmp_path / "hf_sam2" / "model.safetensors")
    assert adapter.spec.name.startswith("sam2")
    for prompt in ("box", "points"):
        boxes, points, labels = _prompts(adapter)
        if prompt == "box":
            points = labels = None
        else:
            boxes = None
        pre = adapter.preprocess([IMAGE])
        with torch.no_grad():
            features = adapter.encode(pre.images)
            logits, iou = adapter.decode(
                features, Prompts(torch.zeros(2, dtype=torch.long), points, labels, boxes), True)
            out = hf_model(pixel_values=pre.images,
                           input_points=None if points is None else points[None],
                           input_labels=None if labels is None else labels[None],
                           input_boxes=None if boxes is None else boxes[None], multimask_output=True)
        _assert_same_predictions((logits, iou), (out.pred_masks[0], out.iou_scores[0]))


@pytest.mark.parametrize("name, cls", [("sam_tiny", "SamModel"), ("sam2_tiny", "Sam2Model")])
def test_samtune_export_loads_in_from_pretrained_and_agrees(tmp_path, name, cls):
    adapter = load_base_model(name, seed=4)
    save_hf(adapter, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [cls]
    hf_model, info = getattr(transformers, cls).from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["mismatched_keys"]
    if name == "sam_tiny":
        assert not info["unexpected_keys"]
        boxes, points, labels = _prompts(adapter)
        pixels, logits, iou = _samtune_logits(adapter, boxes, points, labels, True)
        _assert_same_predictions((logits, iou), _hf_logits(hf_model.eval(), pixels, boxes, points, labels, True))
    else:  # SAM 2's memory modules are in the file, as in transformers' hub checkpoints
        assert all(k.startswith(("memory_", "mask_downsample", "object_pointer", "temporal_", "no_memory_pos",
                                 "no_object", "occlusion")) for k in info["unexpected_keys"])
        boxes, _, _ = _prompts(adapter)
        pre = adapter.preprocess([IMAGE])
        with torch.no_grad():
            logits, iou = adapter.decode(adapter.encode(pre.images),
                                         Prompts(torch.zeros(2, dtype=torch.long), boxes=boxes), True)
            out = hf_model.eval()(pixel_values=pre.images, input_boxes=boxes[None], multimask_output=True)
        _assert_same_predictions((logits, iou), (out.pred_masks[0], out.iou_scores[0]))
    # and back: the export is the same model in samtune, memory modules included
    back = load_model(tmp_path / "hf")
    assert back.spec.name == name
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v), k


@pytest.mark.parametrize("name, config_cls, model_cls", [
    ("sam_vit_b", "SamConfig", "SamModel"),
    ("sam2.1_hiera_t", "Sam2VideoConfig", "Sam2VideoModel"),
])
def test_full_size_keys_and_shapes_match_transformers(name, config_cls, model_cls):
    """The full-size official layout maps onto transformers' own classes at their default
    sizes (ViT-B; SAM 2.1 Hiera-T with the video memory modules), key for key, shape for shape."""
    official = build_without_weights(get_spec(name))
    mapped = {k: tuple(v.shape) for k, v in official_to_hf(official.state_dict(), get_spec(name).family).items()}
    config = hf_config(official, get_spec(name).family)
    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        reference = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config))
    assert mapped == {k: tuple(v.shape) for k, v in reference.state_dict().items()}


def test_every_key_is_accounted_for(tmp_path):
    adapter = load_base_model("sam_tiny", seed=0)
    save_hf(adapter, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({**tensors, "mask_decoder.hq_token.weight": torch.zeros(1, 32)}, str(weights))
    with pytest.raises(CheckpointError, match="1 keys that are not in the transformers SAM layout.*hq_token"):
        load_model(tmp_path / "hf")
    tensors["shared_image_embedding.positional_embedding"] = tensors[
        "shared_image_embedding.positional_embedding"] + 1
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match="differ; official SAM has one positional matrix"):
        load_model(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "sam_hq"}))
    with pytest.raises(CheckpointError, match="a transformers 'sam_hq' model; samtune reads sam"):
        load_model(tmp_path / "hf")


def test_mobile_sam_has_no_transformers_layout(tmp_path):
    adapter = load_base_model("mobile_sam_tiny", seed=0)
    with pytest.raises(CheckpointError, match="no transformers layout"):
        save_hf(adapter, tmp_path / "hf")


def test_memory_prefixes_cover_every_sam2_key_outside_the_image_path():
    keys = build_without_weights(get_spec("sam2.1_hiera_t")).state_dict()
    image = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")
    assert all(k.startswith(image) != k.startswith(SAM2_MEMORY_PREFIXES) for k in keys)


@pytest.mark.parametrize("name, cls", [("sam_tiny", "SamProcessor"), ("sam2_tiny", "Sam2Processor")])
def test_the_exported_processor_preprocesses_as_samtune(tmp_path, name, cls):
    adapter = load_base_model(name, seed=0)
    save_hf(adapter, tmp_path / "hf")
    processor = getattr(transformers, cls).from_pretrained(tmp_path / "hf")
    pixels = processor(images=IMAGE, return_tensors="pt")["pixel_values"]
    ours = adapter.preprocess([IMAGE]).images
    assert pixels.shape == ours.shape
    # transformers resizes the uint8 image with its own kernel: within one 8-bit level
    one_level = 1 / 255 / min(processor.image_processor.image_std)
    assert (pixels - ours).abs().max() <= one_level + 1e-5


def test_a_named_model_takes_an_hf_folder_as_its_checkpoint(tmp_path):
    adapter = load_base_model("sam_tiny", seed=6)
    save_hf(adapter, tmp_path / "hf")
    named = load_model("sam_tiny", checkpoint=tmp_path / "hf")
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(named.model.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match="it is sam_tiny, not mobile_sam_tiny"):
        load_model("mobile_sam_tiny", checkpoint=tmp_path / "hf")
