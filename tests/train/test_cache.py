"""Embedding cache: hits, misses, invalidation, damaged files, temporary files, model keys."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from samtune import load_model
from samtune.models.adapter import Features
from samtune.models.checkpoints import tensor_checksum
from samtune.train.cache import (
    FORMAT_VERSION,
    EmbeddingCache,
    file_image_id,
    model_key,
    preprocess_key,
)


def sam_features(seed: int = 0, batch: int = 1) -> Features:
    gen = torch.Generator().manual_seed(seed)
    return Features(torch.randn(batch, 8, 4, 4, generator=gen))


def sam2_features(seed: int = 0, batch: int = 1) -> Features:
    """SAM 2-like: an embedding and two finer maps."""
    gen = torch.Generator().manual_seed(seed)
    return Features(
        torch.randn(batch, 8, 4, 4, generator=gen),
        (torch.randn(batch, 2, 16, 16, generator=gen), torch.randn(batch, 4, 8, 8, generator=gen)),
    )


def assert_same(a: Features, b: Features) -> None:
    assert torch.equal(a.image_embed, b.image_embed)
    assert len(a.high_res) == len(b.high_res)
    for x, y in zip(a.high_res, b.high_res):
        assert torch.equal(x, y)


@pytest.fixture
def cache(tmp_path) -> EmbeddingCache:
    return EmbeddingCache(tmp_path, "model-A", "preprocess-A")


@pytest.mark.parametrize("make", [sam_features, sam2_features])
def test_round_trip_and_counters(cache, make):
    features = make()
    assert cache.get("img-1") is None
    cache.put("img-1", features)
    got = cache.get("img-1")
    assert_same(got, features)
    assert (cache.hits, cache.misses) == (1, 1)


def test_layout_and_metadata(cache, tmp_path):
    path = cache.put("img-1", sam2_features())
    key = cache.key("img-1")
    assert path == cache.path("img-1")
    rel = path.relative_to(tmp_path).parts
    assert len(rel) == 3 and len(rel[0]) == 16 and rel[1] == key[:2]
    assert rel[2] == f"{key}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["high_res_0", "high_res_1", "image_embed"]
    assert meta["model_key"] == "model-A" and meta["preprocess_key"] == "preprocess-A"
    assert meta["format_version"] == FORMAT_VERSION and meta["dtype"] == "torch.float32"
    assert meta["image_id"] == "img-1" and '"high_res_1": [1, 4, 8, 8]' in meta["shapes"]
    # nothing else was left in the shard folder
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_bfloat16_storage(tmp_path):
    features = sam2_features()
    cache = EmbeddingCache(tmp_path, "m", "p", dtype=torch.bfloat16)
    cache.put("img", features)
    got = cache.get("img")
    assert got.image_embed.dtype == torch.bfloat16
    assert torch.equal(got.high_res[0], features.high_res[0].bfloat16())
    # the same entry read as float32 is another format: a miss, not a silent cast
    assert EmbeddingCache(tmp_path, "m", "p").get("img") is None


def test_changed_keys_invalidate(tmp_path):
    features = sam_features()
    EmbeddingCache(tmp_path, "model-A", "preprocess-A").put("img", features)
    assert EmbeddingCache(tmp_path, "model-B", "preprocess-A").get("img") is None
    changed = EmbeddingCache(tmp_path, "model-A", "preprocess-B")
    assert changed.get("img") is None  # same file, stale metadata
    changed.put("img", sam_features(seed=1))
    assert_same(changed.get("img"), sam_features(seed=1))
    assert EmbeddingCache(tmp_path, "model-A", "preprocess-A").get("img") is None


@pytest.mark.parametrize("damage", ["garbage", "truncated", "header_only", "empty"])
def test_damaged_entry_is_a_miss_and_is_rewritten(cache, damage):
    features = sam2_features()
    path = cache.put("img", features)
    data = path.read_bytes()
    damaged = {
        "garbage": b"not a safetensors file at all" * 10,
        "truncated": data[: len(data) - 100],
        "header_only": data[:200],
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)
    assert cache.get("img") is None
    cache.put("img", features)
    assert_same(cache.get("img"), features)


def test_leftover_temporary_file_is_ignored(cache):
    path = cache.path("img")
    path.parent.mkdir(parents=True)
    leftover = path.parent / f".{path.name}.abc123.tmp.safetensors"
    leftover.write_bytes(b"half-written")
    assert cache.get("img") is None
    cache.put("img", sam_features())
    assert_same(cache.get("img"), sam_features())
    assert leftover.read_bytes() == b"half-written"  # neither read nor clobbered


def test_put_many_and_get_many(cache):
    batch = sam2_features(batch=3)
    cache.put_many(["a", "b", "c"], batch)
    got = cache.get_many(["c", "missing", "a"])
    assert got[1] is None
    assert_same(got[0], batch.select(torch.tensor([2])))
    assert_same(Features.cat([got[2], got[0]]), batch.select(torch.tensor([0, 2])))
    with pytest.raises(ValueError, match="put_many"):
        cache.put("x", batch)
    with pytest.raises(ValueError, match="2 image ids"):
        cache.put_many(["a", "b"], batch)


def test_memory_lru(tmp_path):
    cache = EmbeddingCache(tmp_path, "m", "p", memory_items=1)
    cache.put("a", sam_features(0))
    cache.path("a").unlink()
    assert_same(cache.get("a"), sam_features(0))  # served from memory
    cache.put("b", sam_features(1))  # evicts a
    assert cache.get("a") is None
    cache.path("b").unlink()
    assert_same(cache.get("b"), sam_features(1))


def test_file_image_id_follows_the_file(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"12345")
    first = file_image_id(image)
    assert first == file_image_id(tmp_path / "." / "x.png")
    image.write_bytes(b"123456")
    assert file_image_id(image) != first


def test_weights_digest_covers_names_shapes_and_values():
    w = torch.arange(12.0).reshape(3, 4)
    base = tensor_checksum([("a", w), ("b", torch.ones(2))])
    assert base == tensor_checksum([("b", torch.ones(2)), ("a", w.clone())])  # order-free
    assert base != tensor_checksum([("a2", w), ("b", torch.ones(2))])
    assert base != tensor_checksum([("a", w.reshape(4, 3)), ("b", torch.ones(2))])
    changed = w.clone()
    changed[2, 3] += 1e-3
    assert base != tensor_checksum([("a", changed), ("b", torch.ones(2))])
    big = torch.randn(10_000)
    sampled = tensor_checksum([("w", big)], max_bytes_per_tensor=1024)
    assert sampled != tensor_checksum([("w", big * 1.001)], max_bytes_per_tensor=1024)
    assert sampled != tensor_checksum([("w", big)])


def test_model_key_follows_the_image_encoder_only():
    adapter = load_model("sam_tiny")
    key = model_key(adapter)
    assert key.startswith("sam/sam_tiny/256/") and key == model_key(adapter)
    with torch.no_grad():
        next(adapter.model.mask_decoder.parameters()).add_(1.0)
    assert model_key(adapter) == key  # decoder training keeps cached features valid
    with torch.no_grad():
        adapter.model.image_encoder.patch_embed.proj.bias[0] += 1e-3
    assert model_key(adapter) != key
    assert preprocess_key(adapter).startswith("ResizeLongestSide(size=256")


def test_an_entry_damaged_in_place_is_a_miss_with_a_warning(cache):
    """Bytes overwritten inside the tensor data (same size, the header still parses) fail the
    entry's checksum: a miss, never damaged features."""
    features = Features(torch.randn(1, 64, 32, 32))  # 256 KiB of data
    path = cache.put("img", features)
    data = bytearray(path.read_bytes())
    data[-8192:-4096] = bytes(4096)
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged embedding cache entry"):
        assert cache.get("img") is None
    cache.put("img", features)
    assert_same(cache.get("img"), features)
