"""Reading checkpoint files: official layouts load, anything else is refused with a clear reason."""

import collections

import numpy as np
import pytest
import torch

from samtune import load_model
from samtune.errors import CheckpointError
from samtune.infer.predictor import Predictor
from samtune.models.checkpoints import read_state_dict
from samtune.models.load import _shapes, build_official, identify
from samtune.models.registry import get_spec


def predict_box(model, image):
    predictor = Predictor(model)
    predictor.set_image(image)
    return predictor.predict(box=np.array([4, 4, 50, 40]), return_logits=True)[0]


IMAGE = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["sam_tiny", "mobile_sam_tiny", "sam2_tiny"])
def test_official_layouts_load_and_predict_the_same(tmp_path, name):
    torch.manual_seed(1)
    reference = load_model(name)
    sd = reference.model.state_dict()
    layouts = {
        "raw": sd,
        "sam2_style": {"model": sd},
        "ddp": collections.OrderedDict((f"module.{k}", v) for k, v in sd.items()),
        "lightning": {"state_dict": sd, "epoch": 3},
    }
    expected = predict_box(reference, IMAGE)
    for layout, obj in layouts.items():
        path = tmp_path / f"{layout}.pth"
        torch.save(obj, path)
        loaded = load_model(name, checkpoint=path)
        np.testing.assert_array_equal(predict_box(loaded, IMAGE), expected, err_msg=layout)


def test_files_written_by_official_builders_load(tmp_path):
    """Full-size MobileSAM as mobile_sam's builder makes it, saved the way its README saves."""
    official = build_official(get_spec("mobile_sam"))
    path = tmp_path / "mobile_sam.pt"
    torch.save(official.state_dict(), path)
    model = load_model("mobile_sam", checkpoint=path)
    for k, v in official.state_dict().items():
        assert torch.equal(model.model.state_dict()[k], v), k


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    reference = load_model("sam_tiny")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.model.state_dict().items()}, str(path))
    np.testing.assert_array_equal(predict_box(load_model("sam_tiny", path), IMAGE),
                                  predict_box(reference, IMAGE))


def fake_checkpoint(name: str) -> dict[str, torch.Tensor]:
    """A state dict with the names and shapes of ``name`` that costs a few bytes per tensor."""
    return {k: torch.zeros(1).expand(*shape) if shape else torch.zeros(()) for k, shape in _shapes(name).items()}


def test_wrong_size_is_named(tmp_path):
    path = tmp_path / "big.pth"
    torch.save(fake_checkpoint("sam_vit_h"), path)
    with pytest.raises(CheckpointError) as err:
        load_model("sam_vit_b", checkpoint=path)
    assert str(err.value) == (
        f"{path}: this checkpoint has a SAM ViT encoder with 32 encoder blocks of width 1280: "
        "it is sam_vit_h, not sam_vit_b"
    )


def test_wrong_family_is_named(tmp_path):
    path = tmp_path / "sam2.pt"
    torch.save({"model": load_model("sam2_tiny").model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="it is sam2_tiny, not sam_tiny"):
        load_model("sam_tiny", checkpoint=path)


def test_sam2_and_sam21_files_are_told_apart():
    assert identify(fake_checkpoint("sam2_hiera_t")).name == "sam2_hiera_t"
    assert identify(fake_checkpoint("sam2.1_hiera_t")).name == "sam2.1_hiera_t"
    assert identify(fake_checkpoint("sam_vit_l")).name == "sam_vit_l"


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = dict(load_model("sam_tiny").model.state_dict())
    del sd["mask_decoder.iou_token.weight"]
    sd["mask_decoder.extra_adapter.weight"] = torch.zeros(3)
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_model("sam_tiny", checkpoint=path)
    message = str(err.value)
    assert "1 missing keys: mask_decoder.iou_token.weight" in message
    assert "1 unexpected keys: mask_decoder.extra_adapter.weight" in message


class NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickle.pth"
    torch.save({"model": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="never unpickles"):
        read_state_dict(path)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_state_dict(tmp_path / "missing.pth")
    truncated = tmp_path / "truncated.pth"
    torch.save(load_model("sam_tiny").model.state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(truncated)
    mixed = tmp_path / "mixed.pth"
    torch.save({"a": torch.zeros(1), "step": 5}, mixed)
    with pytest.raises(CheckpointError, match="not tensors: step"):
        read_state_dict(mixed)


def test_auto_uses_the_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMTUNE_HOME", str(tmp_path))
    monkeypatch.setenv("SAMTUNE_OFFLINE", "1")
    import dataclasses

    from samtune.models import registry
    from samtune.models.checkpoints import sha256_of

    official = build_official(get_spec("mobile_sam"))
    torch.save(official.state_dict(), tmp_path / "mobile_sam.pt")
    # random weights stand in for the official file: publish their sha256 for this test
    spec = dataclasses.replace(get_spec("mobile_sam"), sha256=sha256_of(tmp_path / "mobile_sam.pt"))
    monkeypatch.setitem(registry._BY_NAME, "mobile_sam", spec)
    model = load_model("mobile_sam", checkpoint="auto")
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(model.model.state_dict()[key], official.state_dict()[key])


def test_auto_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMTUNE_HOME", str(tmp_path))
    monkeypatch.setenv("SAMTUNE_OFFLINE", "1")
    with pytest.raises(CheckpointError) as err:
        load_model("sam_vit_b", checkpoint="auto")
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in str(err.value)
    assert str(tmp_path / "sam_vit_b_01ec64.pth") in str(err.value)


def test_medsam_auto_points_to_the_authors_page(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMTUNE_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="drive.google.com"):
        load_model("medsam", checkpoint="auto")
