"""Measuring helpers the bench scripts share: timing that is fair on a busy machine, memory
that means the same thing on CPU and GPU, and the device's own peak."""

from __future__ import annotations

import functools
import platform
import statistics
import time
from collections.abc import Callable

import torch

from samtune.models.fast import checkpointed_blocks, saved_tensor_bytes


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"


def images_per_s(fns: dict[str, Callable[[], object]], batch: int, repeats: int, warmup: int,
                 device: str) -> dict[str, float]:
    """Images/s of each function, timed in interleaved rounds (median of ``repeats`` calls),
    so that a busy machine slows every path alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[label].append(time.perf_counter() - start)
    return {label: batch / statistics.median(t) for label, t in times.items()}


def precision_autocast(device: str, precision: str) -> Callable[[], torch.autocast]:
    """A function returning a fresh autocast context: bf16 for ``precision="bf16"``, off for fp32."""
    return functools.partial(torch.autocast, device.split(":")[0], dtype=torch.bfloat16,
                             enabled=precision == "bf16")


def peak_gib(fn: Callable[[], object], device: str) -> float:
    """Peak CUDA memory allocated while ``fn`` runs (weights, optimizer state and all)."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats()
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated() / 2**30


def block_input_bytes(adapter, fn: Callable[[], object]) -> int:
    """Bytes of the inputs that checkpointed encoder blocks keep for their recomputation."""
    total = 0

    def count(_module, inputs):
        nonlocal total
        total += sum(t.untyped_storage().nbytes() for t in inputs if isinstance(t, torch.Tensor))

    handles = [b.register_forward_pre_hook(count) for b in checkpointed_blocks(adapter)]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return total


def activation_mib(adapter, forward: Callable[[], object]) -> float:
    """Activation memory of one forward: tensors autograd saves for backward plus the inputs
    checkpointed blocks hold. The CPU has no peak-memory counter; this is the part of the
    peak that precision, fused attention and checkpointing change."""
    return (saved_tensor_bytes(forward) + block_input_bytes(adapter, forward)) / 2**20


def matmul_peak_tflops(device: str, dtype: torch.dtype, size: int | None = None, repeats: int = 10) -> float:
    """The device's measured dense matmul rate at ``dtype``: the 100% of "share of peak"."""
    size = size or (8192 if device.startswith("cuda") else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12
