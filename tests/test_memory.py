"""Chunked mask work stays at one chunk's memory however many objects there are: the freed
heap goes back to the system between chunks (``samtune.memory``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from samtune.memory import release_freed_memory

#: scores n random rectangles against n others at 512x384 in a fresh process and prints the
#: peak resident memory above the inputs, in MiB
MEASURE = textwrap.dedent("""
    import resource, sys, torch
    from samtune.metrics import mask_metrics
    torch.set_num_threads(1)
    n, h, w = int(sys.argv[1]), 384, 512
    def masks(seed):
        g = torch.Generator().manual_seed(seed)
        y0, x0 = torch.randint(0, h - 20, (n,), generator=g), torch.randint(0, w - 20, (n,), generator=g)
        size = torch.randint(8, 80, (n, 2), generator=g)
        rows = (torch.arange(h)[None] >= y0[:, None]) & (torch.arange(h)[None] < (y0 + size[:, 0])[:, None])
        cols = (torch.arange(w)[None] >= x0[:, None]) & (torch.arange(w)[None] < (x0 + size[:, 1])[:, None])
        return rows[:, :, None] & cols[:, None, :]
    pred, target = masks(0), masks(1)
    mask_metrics(pred[:2], target[:2])  # first-call allocations are not the chunks'
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mask_metrics(pred, target)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
""")


def _peak_mib(n: int) -> float:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(n)], capture_output=True,
                          text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap; ru_maxrss in KiB")
def test_scoring_peak_does_not_grow_with_the_object_count():
    small, large = _peak_mib(60), _peak_mib(600)  # 3 chunks and 29 chunks of 21 masks
    # before: ~1.7 MiB more per object (about +950 MiB from 60 to 600 objects)
    assert large < small + 100, (small, large)


def test_release_is_safe_to_call_anywhere():
    release_freed_memory()
    release_freed_memory()
