"""samtune: fine-tune, evaluate and serve Segment Anything models on your own data."""

from samtune.errors import SamtuneError
from samtune.models import get_spec, list_models, load_model

__version__ = "0.1.0"

__all__ = ["SamtuneError", "get_spec", "list_models", "load_model", "__version__"]
