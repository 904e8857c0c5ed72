"""Peak memory of evaluation metrics and prompted prediction for 10, 400 and 4000 objects in
one image: processed in object chunks (samtune) against one pass over all objects (how both
ran before), side by side.

Each measurement runs in a fresh process and reports its peak resident memory above what the
process held once its inputs were built (the (N, H, W) masks or the model and image), so the
figure is the working memory the computation adds. One pass at 4000 objects is not run: it
would need tens of GB (the figure from 400 objects times ten).

    PYTHONPATH=src python bench/memory.py            # writes bench/results/memory_cpu.json
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

HEIGHT, WIDTH = 384, 512
COUNTS = (10, 400, 4000)
ONE_PASS_UP_TO = 400


def rss_mib() -> float:
    """This process's current resident memory, from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def masks(n: int, seed: int):
    """``n`` rectangles of random size and place on an H x W image, as a bool tensor."""
    import torch

    g = torch.Generator().manual_seed(seed)
    y0 = torch.randint(0, HEIGHT - 20, (n,), generator=g)
    x0 = torch.randint(0, WIDTH - 20, (n,), generator=g)
    size = torch.randint(8, 80, (n, 2), generator=g)
    ys, xs = torch.arange(HEIGHT), torch.arange(WIDTH)
    rows = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + size[:, 0])[:, None])
    cols = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + size[:, 1])[:, None])
    return rows[:, :, None] & cols[:, None, :]


def measure_metrics(n: int, chunked: bool) -> float:
    from samtune import metrics

    pred, target = masks(n, 0), masks(n, 1)
    base = max(rss_mib(), peak_mib())
    if chunked:
        metrics.mask_metrics(pred, target)
    else:  # one pass over every object, as before
        counts = metrics.confusion_counts(pred, target)
        metrics._values(counts, pred, target, None, 0, 1.0, 0.0)
    return peak_mib() - base


def measure_predict(n: int, chunked: bool) -> float:
    import numpy as np

    from samtune import load_model
    from samtune.infer.predictor import Predictor
    from samtune.infer.prompted import predict_objects
    from samtune.prompts import ObjectPrompt

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    predictor = Predictor(load_model("sam_tiny"))
    predictor.set_image(image)
    x0, y0 = rng.integers(0, WIDTH - 90, n), rng.integers(0, HEIGHT - 90, n)
    objects = [ObjectPrompt(box=np.array([x, y, x + 80, y + 80], dtype=np.float64))
               for x, y in zip(x0, y0)]
    predict_objects(predictor, objects[:2])  # warm up: first-call allocations not counted
    base = max(rss_mib(), peak_mib())
    predict_objects(predictor, objects, chunk=64 if chunked else n)
    return peak_mib() - base


def run_one(kind: str, n: int, chunked: bool) -> float:
    """The measurement in a fresh process (peak RSS is per process)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import memory; "
            f"print(memory.measure_{kind}({n}, {chunked}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(done.stdout.strip().splitlines()[-1]), 1)


def main() -> None:
    results = {"image": f"{WIDTH}x{HEIGHT}", "unit": "MiB of peak RSS above the inputs", "rows": []}
    for kind in ("metrics", "predict"):
        for n in COUNTS:
            row = {"what": kind, "objects": n, "chunked": run_one(kind, n, True)}
            row["one_pass"] = run_one(kind, n, False) if n <= ONE_PASS_UP_TO else None
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    out = Path(__file__).parent / "results" / "memory_cpu.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
