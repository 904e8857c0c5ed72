"""On-disk cache of image-encoder features, so a frozen encoder runs once per image.

Layout: ``root/<model key digest>/<2-char shard>/<image key>.safetensors``, one file per image
holding the :class:`~samtune.models.adapter.Features` record of that image (batch dimension 1)
and a metadata header: format name and version, model key, preprocess key, image id, dtype and
the shape of every tensor. A read checks all of it; anything that does not match (another
model, another preprocessing, an older format, a damaged or truncated file) is a *miss*, never
an error, and the next ``put`` overwrites the entry. Each entry carries the sha256 of its
tensors: a file damaged in place (same size, so the header still parses) is a miss too, with
a warning, and is encoded again. Writes go to a temporary name beside the
entry and are renamed into place (:func:`samtune.files.atomic_path`), so a reader never sees a
half-written file and a leftover temporary file is simply ignored.

Keys: ``model_key`` must change whenever the encoder's output can change: :func:`model_key`
hashes the weights of the adapter's ``image_encoder`` parameter group (for SAM 2 that includes
the decoder's ``conv_s0``/``conv_s1``, which ``encode`` applies). ``preprocess_key`` covers the
image preprocessing (:func:`preprocess_key`). ``image_id`` must identify the image *content*
the features were computed from: a content hash, or :func:`file_image_id` (path, size, mtime).
Cached features are only valid for un-augmented images; augmenting the image means encoding it.

Dtype: float32 by default, so a step that reads cached features is the same step minus the
encoder; bfloat16 halves the disk use (a SAM ViT embedding is 256x64x64: 4 MiB in float32)
at about 3 significant digits. Entries come back in the stored dtype, on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from samtune.data.batch import image_key
from samtune.errors import SamtuneWarning
from samtune.files import atomic_path
from samtune.models.adapter import Adapter, Features
from samtune.models.checkpoints import tensor_checksum

FORMAT = "samtune-embedding"
FORMAT_VERSION = "2"
_READ_ERRORS = (OSError, ValueError, RuntimeError, KeyError, SafetensorError)


def digest(text: str) -> str:
    """Hex SHA-256 of a string: stable across runs and machines (unlike ``hash``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_image_id(path: str | os.PathLike) -> str:
    """An image id that changes when the file does: resolved path, size and mtime."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}:{st.st_size}:{st.st_mtime_ns}"


def model_key(adapter: Adapter, max_bytes_per_tensor: int | None = None) -> str:
    """Cache key of an adapter's encoder: family, model name, input size and the digest of
    every parameter and buffer in its ``image_encoder`` group (:func:`tensor_checksum`; full
    bytes by default: hashing runs at about 1-2 GB/s, once per run)."""
    prefixes = adapter.group_prefixes.get("image_encoder", ())
    named = list(adapter.parameter_groups().get("image_encoder", {}).items())
    named += [(n, b) for n, b in adapter.model.named_buffers() if n.startswith(prefixes)]
    weights = tensor_checksum(named, max_bytes_per_tensor)
    return f"{adapter.family}/{adapter.spec.name}/{adapter.image_size}/{weights}"


def preprocess_key(adapter: Adapter) -> str:
    """Cache key of an adapter's image preprocessing (its frozen dataclass repr)."""
    return repr(adapter.preprocessor)


class EmbeddingCache:
    """Features of single images on disk (and optionally the last ``memory_items`` in memory,
    on ``memory_device``).

    ``get(image_id)`` returns the stored :class:`Features` (batch dimension 1) or ``None`` on any
    miss; ``put(image_id, features)`` stores a one-image record; ``get_many``/``put_many`` do
    the same for a list of ids (``put_many`` splits a batch record by rows). Counters ``hits``
    and ``misses`` count ``get`` results. Safe for several processes sharing one ``root``:
    entries are replaced atomically, and two writers of one entry write the same content.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        model_key: str,
        preprocess_key: str,
        dtype: torch.dtype = torch.float32,
        memory_items: int = 0,
        memory_device: str | torch.device = "cpu",
    ) -> None:
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"cache dtype must be float32, bfloat16 or float16, got {dtype}")
        self.root = Path(root)
        self.model_key = model_key
        self.preprocess_key = preprocess_key
        self.dtype = dtype
        self.memory_items = memory_items
        #: where the in-memory copies live: the training GPU keeps a cached step off the bus
        self.memory_device = torch.device(memory_device)
        self.folder = self.root / digest(model_key)[:16]
        self._memory: OrderedDict[str, Features] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key(self, image_id: str) -> str:
        """File stem of ``image_id``'s entry (hex digest; the id itself is in the metadata)."""
        return digest(image_id)[:32]

    def path(self, image_id: str) -> Path:
        key = self.key(image_id)
        return self.folder / key[:2] / f"{key}.safetensors"

    # --- reading --------------------------------------------------------------------------
    def get(self, image_id: str) -> Features | None:
        """The cached features of ``image_id``, or ``None`` if absent, stale or unreadable."""
        features = self._memory_get(image_id)
        if features is None:
            features = self._read(self.path(image_id), image_id)
            if features is not None:
                self._memory_put(image_id, features)
        if features is None:
            self.misses += 1
        else:
            self.hits += 1
        return features

    def get_many(self, image_ids: Sequence[str]) -> list[Features | None]:
        return [self.get(image_id) for image_id in image_ids]

    def _read(self, path: Path, image_id: str) -> Features | None:
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if not self._metadata_matches(meta, image_id):
                    return None
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
            shapes = json.loads(meta["shapes"])
        except _READ_ERRORS:
            return None
        if {n: list(t.shape) for n, t in tensors.items()} != shapes:
            return None
        if any(t.dtype != self.dtype for t in tensors.values()) or "image_embed" not in tensors:
            return None
        if meta.get("sha256") != tensor_checksum(tensors):
            warnings.warn(f"{path}: damaged embedding cache entry (checksum mismatch); "
                          "encoding the image again", SamtuneWarning, stacklevel=3)
            return None
        return Features.from_tensors(tensors)

    def _metadata_matches(self, meta: dict[str, str], image_id: str) -> bool:
        expected = self._metadata(image_id)
        return all(meta.get(k) == v for k, v in expected.items())

    def _metadata(self, image_id: str) -> dict[str, str]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_key": self.model_key,
            "preprocess_key": self.preprocess_key,
            "image_id": image_id,
            "dtype": str(self.dtype),
        }

    # --- writing --------------------------------------------------------------------------
    def put(self, image_id: str, features: Features) -> Path:
        """Store one image's features (batch dimension 1), replacing any entry; returns its path."""
        if len(features) != 1:
            raise ValueError(
                f"EmbeddingCache.put stores one image, got features of {len(features)}; "
                "use put_many for a batch"
            )
        tensors = {
            name: t.detach().to("cpu", self.dtype).contiguous().clone()
            for name, t in features.tensors().items()
        }
        meta = self._metadata(image_id)
        meta["shapes"] = json.dumps({n: list(t.shape) for n, t in tensors.items()})
        meta["sha256"] = tensor_checksum(tensors)
        path = self.path(image_id)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        self._memory_put(image_id, Features.from_tensors(tensors))
        return path

    def put_many(self, image_ids: Sequence[str], features: Features) -> list[Path]:
        """Store row ``i`` of a batch record under ``image_ids[i]``."""
        if len(features) != len(image_ids):
            raise ValueError(f"{len(image_ids)} image ids for features of {len(features)} images")
        return [
            self.put(image_id, features.select(torch.tensor([i])))
            for i, image_id in enumerate(image_ids)
        ]

    # --- memory ---------------------------------------------------------------------------
    def _memory_get(self, image_id: str) -> Features | None:
        features = self._memory.get(image_id)
        if features is not None:
            self._memory.move_to_end(image_id)
        return features

    def _memory_put(self, image_id: str, features: Features) -> None:
        if self.memory_items <= 0:
            return
        self._memory[image_id] = features.to(self.memory_device, non_blocking=True)
        self._memory.move_to_end(image_id)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)


# --- filling ---------------------------------------------------------------------------
def fill_cache(adapter: Adapter, cache: EmbeddingCache, data, batch_size: int,
               device: str | torch.device = "cpu") -> None:
    """Encode every image of ``data`` not yet in the cache, in batches on ``device``, with a
    progress bar: the only encoder passes of a cached run (later epochs and later runs read
    the cache)."""
    home = adapter.device
    adapter.to(device)
    try:
        _fill(cache, adapter, data, batch_size)
    finally:
        adapter.to(home)  # Lightning moves the module itself when training starts


def _fill(cache: EmbeddingCache, adapter, data, batch_size: int) -> None:
    sources = getattr(data, "sources", [data])  # a MixedSource: every image it may draw
    samples = (sample for source in sources for sample in source)
    total = sum(len(source) for source in sources)
    pending: list[tuple[str, object]] = []
    seen: set[str] = set()
    with tqdm(total=total, desc="caching image embeddings", unit="img") as bar:
        for sample in samples:
            key = image_key(sample.image)
            if key not in seen and cache.get(key) is None:
                pending.append((key, sample.image))
            seen.add(key)
            if len(pending) == batch_size:
                _encode_into_cache(adapter, cache, pending)
                pending = []
            bar.update(1)
        if pending:
            _encode_into_cache(adapter, cache, pending)


def _encode_into_cache(adapter, cache: EmbeddingCache, pending: list) -> None:
    with torch.no_grad():
        features = adapter.encode(adapter.preprocess([image for _, image in pending]).images)
    cache.put_many([key for key, _ in pending], features)


def keep_cache_in_memory(cache: EmbeddingCache, images: int, device: torch.device) -> None:
    """Hold all ``images`` entries in memory when they fit (see ``train.cache_in_memory``)."""
    per_image = _entry_bytes(cache)
    if per_image is None:
        return
    need = per_image * images
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need < free / 3:
            cache.memory_items, cache.memory_device = images, device
            return
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need < ram / 4:
        cache.memory_items, cache.memory_device = images, torch.device("cpu")


def _entry_bytes(cache: EmbeddingCache) -> int | None:
    """Bytes one cached image takes in memory, from the shapes in any entry on disk."""
    entry = next(cache.folder.glob("*/*.safetensors"), None)
    if entry is None:
        return None
    with safe_open(str(entry), framework="pt") as f:
        elements = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    return elements * cache.dtype.itemsize
