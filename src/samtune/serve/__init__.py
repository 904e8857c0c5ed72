"""``samtune serve``: a local web page to compare a base and a fine-tuned model click by
click, segment everything with both, read a run's eval report, and save corrected masks as a
folder dataset ``samtune train`` reads.

:func:`create_app` gives the FastAPI app (for uvicorn or FastAPI's ``TestClient``);
:func:`build_state` loads what it serves; :func:`serve` runs it (:func:`running`: in a background thread).
"""

from samtune.serve.app import ServeState, create_app
from samtune.serve.server import build_state, check_host, running, serve

__all__ = ["ServeState", "build_state", "check_host", "create_app", "running", "serve"]
