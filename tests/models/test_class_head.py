"""The class head: the decoder's tokens for every family, and the head's file."""

import pytest
import torch

from samtune import load_model
from samtune.errors import CheckpointError
from samtune.models.adapter import Prompts
from samtune.models.class_head import (
    IGNORE,
    ClassHead,
    attach_class_head,
    load_class_head,
    save_class_head,
)

TINY = ["sam_tiny", "mobile_sam_tiny", "sam2_tiny"]
CATEGORIES = {3: "cell", 7: "debris", 9: "vessel"}


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    return {name: load_model(name) for name in TINY}


def encoded(model, n: int = 3):
    torch.manual_seed(1)
    features = model.encode(torch.randn(1, 3, model.image_size, model.image_size))
    points = torch.rand(n, 2, 2) * model.image_size
    prompts = Prompts(torch.zeros(n, dtype=torch.long), points, torch.tensor([[1, 0]] * n, dtype=torch.int))
    return features, prompts


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("multimask", [True, False])
def test_decode_tokens_gives_decode_masks_and_one_token_per_mask(models, name, multimask):
    model = models[name]
    features, prompts = encoded(model)
    with torch.no_grad():
        masks, iou = model.decode(features, prompts, multimask)
        t_masks, t_iou, tokens = model.decode_tokens(features, prompts, multimask)
    torch.testing.assert_close(t_masks, masks, rtol=0, atol=1e-5)
    torch.testing.assert_close(t_iou, iou, rtol=0, atol=1e-6)
    assert tokens.shape == (3, masks.shape[1], model.prompt_encoder.embed_dim)


@pytest.mark.parametrize("threshold, expect", [(-1.0, "first"), (2.0, "best")])
def test_sam2_single_mask_token_follows_the_stability_fallback(models, threshold, expect):
    """SAM 2 replaces an unstable single mask by its best multimask output: the token of that
    mask is returned with it (always stable: token 0; never: the best multimask token)."""
    model = models["sam2_tiny"]
    decoder = model.model.sam_mask_decoder
    features, prompts = encoded(model)
    sparse, dense = model.embed_prompts(prompts)
    saved = decoder.dynamic_multimask_stability_thresh
    decoder.dynamic_multimask_stability_thresh = threshold
    try:
        with torch.no_grad():
            _, iou, tokens = model.decode_all_tokens(features.select(prompts.image_index), sparse, dense)
            raw = decoder.predict_masks(
                image_embeddings=features.image_embed.expand(3, -1, -1, -1),
                image_pe=model.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, repeat_image=False,
                high_res_features=[t.expand(3, -1, -1, -1) for t in features.high_res])
    finally:
        decoder.dynamic_multimask_stability_thresh = saved
    raw_tokens, raw_iou = raw[2], raw[1]
    rows = torch.arange(3)
    want = raw_tokens[:, 0] if expect == "first" else raw_tokens[rows, raw_iou[:, 1:].argmax(1) + 1]
    torch.testing.assert_close(tokens[:, 0], want)
    torch.testing.assert_close(tokens[:, 1:], raw_tokens[:, 1:])


def test_head_maps_sparse_category_ids_and_labels_rows():
    head = ClassHead(16, CATEGORIES)
    assert head.targets(torch.tensor([9, 3, 5, -1])).tolist() == [2, 0, IGNORE, IGNORE]
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 9.0]])
    ids, scores = head.label(logits)
    assert ids == [7, 9]
    assert scores[0] == pytest.approx(torch.tensor([0.0, 5.0, 0.0]).softmax(0)[1].item())


def test_head_needs_two_categories():
    with pytest.raises(ValueError, match="two categories"):
        ClassHead(16, {1: "object"})


def test_head_file_round_trips_tensors_and_categories(models, tmp_path):
    model = models["sam_tiny"]
    head = attach_class_head(model, CATEGORIES)
    try:
        path = save_class_head(head, tmp_path / "class_head.safetensors")
        other = load_model("sam_tiny")
        loaded = load_class_head(other, path)
        assert loaded.categories == CATEGORIES
        for (k, a), (_, b) in zip(head.state_dict().items(), loaded.state_dict().items()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    finally:
        model.class_head = None


def test_head_of_another_width_is_refused(tmp_path):
    model = load_model("sam_tiny")
    width = model.prompt_encoder.embed_dim
    path = save_class_head(ClassHead(width + 8, CATEGORIES), tmp_path / "class_head.safetensors")
    with pytest.raises(CheckpointError, match="class_head.safetensors: does not fit sam_tiny"):
        load_class_head(model, path)


def test_not_a_head_file_is_one_line_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "class_head.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match="not a samtune class head"):
        load_class_head(load_model("sam_tiny"), path)
