"""SAM families behind one adapter interface; names, checkpoints and loading weights.

Nothing here knows about training, inference or run folders (``samtune.runs``), so every
layer above can use it.
"""

from samtune.models.adapter import Adapter, Features, Preprocessed, Prompts
from samtune.models.load import build_adapter, identify, load_weights
from samtune.models.registry import ModelSpec, get_spec, list_models

__all__ = [
    "Adapter", "Features", "ModelSpec", "Preprocessed", "Prompts", "build_adapter", "get_spec",
    "identify", "list_models", "load_weights",
]
