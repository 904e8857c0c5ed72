"""samtune: fine-tune, evaluate and serve Segment Anything models on your own data.

The public surface, as the README shows it: :func:`load_model` (a name, run folder or file),
:class:`Predictor` (``SamPredictor``'s contract), :class:`AutomaticMaskGenerator` (the
official generators' records) and :func:`list_models`.
"""

from samtune.errors import SamtuneError
from samtune.models import get_spec, list_models
from samtune.runs import load_model

__version__ = "0.1.0"

__all__ = [
    "AutomaticMaskGenerator",
    "Predictor",
    "SamtuneError",
    "__version__",
    "get_spec",
    "list_models",
    "load_model",
]


def __getattr__(name: str):
    # imported on first use: the generator pulls in torchvision, OpenCV and pycocotools
    # (seconds), which `samtune models` and `--help` do not need
    if name == "AutomaticMaskGenerator":
        from samtune.infer.automatic import AutomaticMaskGenerator

        return AutomaticMaskGenerator
    if name == "Predictor":
        from samtune.infer.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'samtune' has no attribute {name!r}")
