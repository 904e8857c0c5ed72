"""samtune: fine-tune, evaluate and serve Segment Anything models on your own data."""

from samtune.errors import SamtuneError
from samtune.models import get_spec, list_models, load_model

__version__ = "0.1.0"

__all__ = [
    "AutomaticMaskGenerator",
    "SamtuneError",
    "__version__",
    "get_spec",
    "list_models",
    "load_model",
]


def __getattr__(name: str):
    # imported on first use: it pulls in torchvision, OpenCV and pycocotools (seconds)
    if name == "AutomaticMaskGenerator":
        from samtune.infer.automatic import AutomaticMaskGenerator

        return AutomaticMaskGenerator
    raise AttributeError(f"module 'samtune' has no attribute {name!r}")
