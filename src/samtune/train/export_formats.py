"""``samtune export RUN --format hf|onnx``: a run's fine-tuned model for other runtimes.

- ``hf``: ``RUN/export/hf/`` with ``config.json`` + ``model.safetensors``, the layout
  ``transformers.SamModel.from_pretrained`` / ``Sam2Model.from_pretrained`` load (SAM, MedSAM,
  SAM 2; transformers has no TinyViT SAM, so not MobileSAM or LiteMedSAM).
- ``onnx``: ``RUN/export/onnx/`` with ``encoder.onnx`` and ``decoder.onnx`` (prompt encoder +
  mask decoder, segment-anything's ONNX inputs) and ``onnx.json`` (sizes, input names, the
  preprocessing to apply) for onnxruntime without samtune or torch; a class head
  (``model.class_head``) adds the decoder output ``category_probs``.

Both start from the same weights as ``--format official`` (LoRA merged, official forwards).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from samtune.errors import CheckpointError, SamtuneWarning
from samtune.models.adapter import Adapter
from samtune.runs import read_training_checkpoint, resolve_checkpoint, restore_adapter, run_config_of

FORMATS = ("official", "hf", "onnx")


@dataclass
class FormatExport:
    """Files one format wrote, and the checkpoint they came from."""

    format: str
    output: Path
    files: list[Path] = field(default_factory=list)
    checkpoint: Path | None = None
    step: int | None = None


def fine_tuned(run_dir: Path, checkpoint: str | Path | None = None) -> tuple[Adapter, Path, int]:
    """The run's fine-tuned model (LoRA merged), its checkpoint file and step."""
    run_config_of(run_dir)  # a one-line error when run_dir is not a run folder
    path = resolve_checkpoint(run_dir, checkpoint)
    state = read_training_checkpoint(path)
    if state is None:
        raise CheckpointError(f"{path}: not a samtune training checkpoint")
    return restore_adapter(state, path), path, int(state.get("global_step", 0))


def export_run_format(
    run_dir: str | Path,
    format: str,
    checkpoint: str | Path | None = None,
    output: str | Path | None = None,
) -> FormatExport:
    """Write a run's model in ``format`` (``hf`` or ``onnx``) to ``output`` (default
    ``RUN/export/<format>``)."""
    run_dir = Path(run_dir)
    adapter, path, step = fine_tuned(run_dir, checkpoint)
    out = Path(output) if output is not None else run_dir / "export" / format
    if format == "hf":
        from samtune.models.hf import save_hf

        if adapter.class_head is not None:
            warnings.warn(f"{run_dir}: transformers' SAM models have no class head; the hf "
                          "export holds the model's masks only (`samtune export` in the official "
                          "format keeps the head, as class_head.safetensors)", SamtuneWarning,
                          stacklevel=2)
        files = list(save_hf(adapter, out))
    elif format == "onnx":
        from samtune.models.onnx_export import export_onnx

        files = export_onnx(adapter, out)
    else:
        raise ValueError(f"unknown export format {format!r}")
    return FormatExport(format, out, files, path, step)
