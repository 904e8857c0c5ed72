"""``load_model`` beyond names: weights files identified by their layout, deltas on a checked
base, and exports of full-size models that the official builders load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from samtune import load_model
from samtune.errors import CheckpointError, SamtuneError
from samtune.infer.predictor import Predictor
from samtune.models.checkpoints import tensor_checksum
from samtune.models.load import load_base_model, read_delta
from samtune.models.lora import add_lora
from samtune.models.registry import UnknownModelError
from samtune.train.export import export_model

IMAGE = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def state_of(adapter):
    return {k: v.clone() for k, v in adapter.model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_weights_file_is_identified_and_loaded(tmp_path):
    reference = load_base_model("sam2_tiny", seed=3)
    path = tmp_path / "weights.pt"
    torch.save({"model": reference.model.state_dict()}, path)
    loaded = load_model(path)
    assert loaded.spec.name == "sam2_tiny"
    assert_same_state(state_of(loaded), state_of(reference))
    st = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.model.state_dict().items()}, str(st))
    assert load_model(st).spec.name == "sam2_tiny"


def test_paths_that_are_nothing_are_refused_in_one_line(tmp_path):
    with pytest.raises(SamtuneError, match="runs/nowhere: no such run folder or checkpoint file"):
        load_model("runs/nowhere")
    with pytest.raises(UnknownModelError, match="Did you mean 'sam_tiny'"):
        load_model("sam_tinyy")
    odd = tmp_path / "odd.pth"
    torch.save({"backbone.weight": torch.zeros(3)}, odd)
    with pytest.raises(CheckpointError, match="cannot tell which model this is .*load_model\\(NAME"):
        load_model(odd)
    with pytest.raises(SamtuneError, match="checkpoint= goes only with a model name"):
        load_model(odd, checkpoint="auto")
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    with pytest.raises(SamtuneError, match="not a run folder"):
        load_model(folder)


def test_seeded_base_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    a = load_base_model("sam_tiny", seed=5)
    assert torch.equal(torch.rand(1), before)
    assert_same_state(state_of(a), state_of(load_base_model("sam_tiny", seed=5)))
    assert not torch.equal(a.model.state_dict()["mask_decoder.iou_token.weight"],
                           load_base_model("sam_tiny", seed=6).model.state_dict()["mask_decoder.iou_token.weight"])


def test_checksum_sees_names_dtypes_shapes_and_values():
    t = {"a": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
    same = tensor_checksum({"n": torch.tensor(3), "a": torch.arange(6.0).reshape(2, 3)})
    assert tensor_checksum(t) == same
    for other in ({"a": t["a"].reshape(3, 2), "n": t["n"]}, {"a": t["a"].double(), "n": t["n"]},
                  {"b": t["a"], "n": t["n"]}, {"a": t["a"] + 1e-7, "n": t["n"]}):
        assert tensor_checksum(other) != same


@pytest.fixture
def base_files(tmp_path):
    """A tiny SAM base saved as .pth and as safetensors, and a fine-tuned copy of it: the
    decoder changed and LoRA on the encoder."""
    base = load_base_model("sam_tiny", seed=11)
    pth, st = tmp_path / "base.pth", tmp_path / "base.safetensors"
    torch.save(base.model.state_dict(), pth)
    save_file({k: v.contiguous() for k, v in base.model.state_dict().items()}, str(st))
    tuned = load_model("sam_tiny", checkpoint=pth)
    lora = {"targets": ["image_encoder"], "rank": 2, "alpha": 4.0, "dropout": 0.0}
    add_lora(tuned, lora["targets"], lora["rank"], lora["alpha"], lora["dropout"])
    trained = {}
    with torch.no_grad():
        for name, p in tuned.model.named_parameters():
            if name.startswith("mask_decoder.") or "lora_" in name:
                p.add_(0.01 * torch.randn_like(p))
                trained[name] = p
    return pth, st, tuned, trained, lora


def test_delta_round_trip_on_a_base_file_of_either_format(base_files, tmp_path):
    pth, st, tuned, trained, lora = base_files
    expected = Predictor(tuned)
    expected.set_image(IMAGE)
    masks = expected.predict(box=np.array([4, 4, 50, 40]))[0]
    out = export_model(tuned, tmp_path / "export", trained, lora=lora, base_checkpoint=str(pth))
    exported = torch.load(out.model, weights_only=True)
    delta = read_delta(out.delta)
    assert delta.base_model == "sam_tiny" and delta.lora == lora and delta.base_checkpoint == str(pth)
    assert set(delta.tensors) == set(trained)
    for base in (pth, st, None):  # None: the base recorded in the delta
        rebuilt = load_model("sam_tiny", checkpoint=base, delta=out.delta)
        assert_same_state(state_of(rebuilt), exported)
    assert_same_state(state_of(load_model(pth, delta=out.delta)), exported)
    ours = Predictor(load_model("sam_tiny", checkpoint=st, delta=out.delta))
    ours.set_image(IMAGE)
    np.testing.assert_array_equal(ours.predict(box=np.array([4, 4, 50, 40]))[0], masks)


def test_delta_on_the_wrong_base_is_refused(base_files, tmp_path):
    pth, _, tuned, trained, lora = base_files
    out = export_model(tuned, tmp_path / "export", trained, lora=lora, base_checkpoint=str(pth))
    other = tmp_path / "other.pth"
    torch.save(load_base_model("sam_tiny", seed=12).model.state_dict(), other)
    with pytest.raises(CheckpointError) as err:
        load_model("sam_tiny", checkpoint=other, delta=out.delta)
    message = str(err.value)
    assert "\n" not in message and str(out.delta) in message and str(other) in message
    assert "expected base tensors sha256" in message and "pass checkpoint=" in message
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(CheckpointError, match="not a samtune delta"):
        load_model("sam_tiny", delta=plain)


def _export_and_build_officially(name, tmp_path):
    model = load_base_model(name, seed=0)
    expected = state_of(model)
    out = export_model(model, tmp_path / name)
    return expected, out


def test_full_size_exports_load_in_the_official_builders(tmp_path):
    """Random-init mobile_sam and sam2.1_hiera_t, exported, through the builders themselves."""
    from mobile_sam import sam_model_registry
    from sam2.build_sam import build_sam2

    expected, out = _export_and_build_officially("mobile_sam", tmp_path)
    assert_same_state(state_of_module(sam_model_registry["vit_t"](checkpoint=str(out.model))), expected)
    expected, out = _export_and_build_officially("sam2.1_hiera_t", tmp_path)
    module = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", str(out.model), device="cpu")
    assert_same_state(state_of_module(module), expected)


@pytest.mark.slow
def test_full_size_vit_b_export_loads_in_sam_model_registry(tmp_path):
    from segment_anything import sam_model_registry

    expected, out = _export_and_build_officially("sam_vit_b", tmp_path)
    assert_same_state(state_of_module(sam_model_registry["vit_b"](checkpoint=str(out.model))), expected)


def state_of_module(module):
    return dict(module.state_dict())
