"""``python -m samtune``: the ``samtune`` command (the form DDP's launcher re-runs per process)."""

from samtune.cli import app

app()
