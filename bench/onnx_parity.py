"""ONNX export against samtune's PyTorch adapter, per model: largest differences and file sizes.

For each model (random weights drawn under a fixed seed): export ``encoder.onnx`` and
``decoder.onnx``, run them in onnxruntime on one generated image with three box prompts, and
print the largest absolute difference of the image embeddings and of the low-res logits, the
number of mask pixels (multimask outputs, at the original size) whose sign differs, and the
file sizes. Exports to a temporary folder.

    .venv/bin/python bench/onnx_parity.py sam_tiny mobile_sam_tiny sam2_tiny mobile_sam
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from samtune.models.adapter import Prompts
from samtune.models.load import load_base_model
from samtune.models.onnx_export import export_onnx


def measure(name: str, image: np.ndarray) -> dict:
    import onnxruntime as ort

    adapter = load_base_model(name, seed=5)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        paths = export_onnx(adapter, folder)
        export_s = time.perf_counter() - start
        encoder, decoder = (ort.InferenceSession(str(p)) for p in paths[:2])
        sizes = [p.stat().st_size / 1e6 for p in paths[:2]]
        pre = adapter.preprocess([image])
        with torch.no_grad():
            features = adapter.encode(pre.images)
        onnx_features = encoder.run(None, {"image": pre.images.numpy()})
        boxes = adapter.transform_boxes(
            torch.tensor([[20.0, 30, 150, 170], [100, 10, 230, 120], [5, 5, 200, 170]]), image.shape[:2])
        corners = boxes.reshape(-1, 2, 2).numpy()
        labels = np.tile(np.array([[2.0, 3.0]], np.float32), (3, 1))
        if adapter.spec.family == "sam2":  # SAM 2's prompt encoder pads every object
            corners = np.concatenate([corners, np.zeros((3, 1, 2), np.float32)], 1)
            labels = np.concatenate([labels, -np.ones((3, 1), np.float32)], 1)
        masks, _, low_res = decoder.run(None, {
            "image_embeddings": onnx_features[0],
            **{f"high_res_feats_{i}": f for i, f in enumerate(onnx_features[1:])},
            "point_coords": corners, "point_labels": labels,
            "mask_input": np.zeros((3, 1, *adapter.mask_input_size), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(image.shape[:2], np.float32)})
        with torch.no_grad():
            logits, _ = adapter.decode(features, Prompts(torch.zeros(3, dtype=torch.long), boxes=boxes), True)
            full = adapter.postprocess(logits, pre.input_sizes[0], image.shape[:2]).numpy()
    embed = max(float(np.abs(o - t.numpy()).max())
                for o, t in zip(onnx_features, (features.image_embed, *features.high_res)))
    return {
        "model": name, "export_s": export_s, "embedding_max_diff": embed,
        "logits_max_diff": float(np.abs(low_res[:, 1:] - logits.numpy()).max()),
        "mask_pixels_differ": int(((masks[:, 1:] > 0) != (full > 0)).sum()), "mask_pixels": full.size,
        "encoder_mb": sizes[0], "decoder_mb": sizes[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    image = np.random.default_rng(1).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    print("| model | embeddings max diff | low-res logits max diff | mask pixels differing | "
          "encoder.onnx | decoder.onnx | export |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        r = measure(name, image)
        print(f"| {r['model']} | {r['embedding_max_diff']:.1e} | {r['logits_max_diff']:.1e} | "
              f"{r['mask_pixels_differ']} of {r['mask_pixels']} | {r['encoder_mb']:.1f} MB | "
              f"{r['decoder_mb']:.1f} MB | {r['export_s']:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
