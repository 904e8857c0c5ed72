"""The device a command runs on, checked before anything loads: ``--device cuda`` on a machine
without CUDA is one line, not a traceback from deep inside a model's ``.to()``."""

from __future__ import annotations

import torch

from samtune.errors import SamtuneError


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that this machine has; a SamtuneError naming it if not."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SamtuneError(f"--device {device!r}: not a device name; use cpu, cuda, cuda:1, "
                           "mps ...") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SamtuneError(f"--device {device}: this machine has no CUDA device (or this "
                               "PyTorch build lacks CUDA); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise SamtuneError(f"--device {device}: there are only {count} CUDA device(s) "
                               f"(cuda:0 .. cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SamtuneError(f"--device {device}: MPS is not available on this machine; use "
                           "--device cpu")
    return dev
