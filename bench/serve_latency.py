"""Click-to-masks latency of `samtune serve`: the embedding kept (the server's default: each
image encoded once per model, a click runs only the decoder) against recomputed (every click
re-encodes, ``--keep-embeddings 0``), for both models of the page in one request, as the page
sends it.

Two servers run side by side in this process on 127.0.0.1, over the same loaded models; a
client posts the same clicks to both, alternating click by click so that a busy machine slows
both alike, and times each round trip (HTTP, JSON, prediction, RLE encoding). The page's own
decoding and drawing of the masks in the browser is not included.

    .venv/bin/python bench/serve_latency.py                                        # sam_tiny vs sam_tiny
    .venv/bin/python bench/serve_latency.py --base sam_vit_b --model sam_vit_b --clicks 6
    .venv/bin/python bench/serve_latency.py --base litemedsam --base-checkpoint auto --model RUN
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name  # noqa: E402

from samtune.data.synthetic import make_splits  # noqa: E402
from samtune.serve import ServeState, running  # noqa: E402
from samtune.serve.corrections import CorrectionFolder  # noqa: E402
from samtune.serve.images import ImageStore  # noqa: E402
from samtune.serve.models import load_slots  # noqa: E402


def png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def clicks(size: tuple[int, int], n: int, seed: int) -> list[dict]:
    """``n`` prompts as a user builds them: 1, 2, 3 points (the third negative), then again."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for i in range(n):
        k = i % 3 + 1
        points = [[float(rng.uniform(0, w)), float(rng.uniform(0, h))] for _ in range(k)]
        out.append({"points": points, "labels": [1, 1, 0][:k], "multimask": k == 1})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="sam_tiny")
    parser.add_argument("--base-checkpoint", default="random",
                        help="a file, auto or random (speed does not depend on the weights)")
    parser.add_argument("--model", default=None, help="run folder, file or name (default: --base)")
    parser.add_argument("--checkpoint", default="random", help="weights of a --model name")
    parser.add_argument("--size", default="480x640", help="HxW of the synthetic test image")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON file (default bench/results/serve_latency_<models>_<device>.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    model = args.model or args.base

    slots = load_slots([model], args.base, args.checkpoint, args.base_checkpoint, args.device)
    for slot in slots:
        if not slot.ready:
            raise SystemExit(f"{slot.id} did not load: {slot.error}")
    recomputing = [s.sharing_model(keep=0) for s in slots]
    image = make_splits({"x": 1}, seed=0, size=(h, w), n_objects=(3, 3))["x"][0].image
    folder = CorrectionFolder(Path("/nonexistent/serve-bench"))  # nothing is saved
    states = {"kept": ServeState(slots, ImageStore(), folder),
              "recomputed": ServeState(recomputing, ImageStore(), folder)}
    prompts = clicks((h, w), args.clicks, seed=0)
    times: dict[str, list[float]] = {name: [] for name in states}
    parts: dict[str, dict[str, list[float]]] = {name: {} for name in states}

    with running(states["kept"]) as kept_url, running(states["recomputed"]) as recomputed_url:
        urls = {"kept": kept_url, "recomputed": recomputed_url}
        with httpx.Client(timeout=600) as client:
            ids = {}
            for name, url in urls.items():
                ids[name] = client.post(f"{url}/api/images", files={
                    "file": ("bench.png", png_bytes(image), "image/png")}).json()["id"]
                client.post(f"{url}/api/encode", json={"image": ids[name]})  # the page does this on open
                client.post(f"{url}/api/predict", json={"image": ids[name], **prompts[0]})  # warm-up
            for prompt in prompts:
                for name, url in urls.items():
                    start = time.perf_counter()
                    response = client.post(f"{url}/api/predict", json={"image": ids[name], **prompt})
                    times[name].append((time.perf_counter() - start) * 1000)
                    response.raise_for_status()
                    for result in response.json()["results"]:
                        for key in ("encode_ms", "decode_ms"):
                            if result[key] is not None:
                                parts[name].setdefault(f"{result['model']} {key}", []).append(result[key])

    median = {name: statistics.median(t) for name, t in times.items()}
    report = {
        "device": args.device, "device_name": device_name(args.device),
        "threads": torch.get_num_threads(), "python": platform.python_version(),
        "models": {s.id: s.label for s in slots}, "image": [h, w], "clicks": args.clicks,
        "click_to_masks_ms": {name: round(v, 1) for name, v in median.items()},
        "speedup": round(median["recomputed"] / median["kept"], 1),
        "parts_median_ms": {name: {k: round(statistics.median(v), 1) for k, v in p.items()}
                            for name, p in parts.items()},
    }
    print(json.dumps(report, indent=2))
    names = "_".join(dict.fromkeys(s.adapter.spec.name for s in slots))
    out = Path(args.out or Path(__file__).parent / "results" / f"serve_latency_{names}_{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"click to masks, both models, median of {args.clicks}: embedding kept "
          f"{median['kept']:.1f} ms, recomputed {median['recomputed']:.1f} ms "
          f"({report['speedup']}x) -> {out}")


if __name__ == "__main__":
    main()
