"""Starting the page: build the state from the command's options and run uvicorn.

The server binds to 127.0.0.1 unless told otherwise: the page reads the dataset and writes a
folder with no login, which is fine on one's own machine and not on a network. Another host
needs ``allow_remote=True`` (``--allow-remote``) and prints a warning.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from samtune.errors import SamtuneError
from samtune.serve.app import ServeState
from samtune.serve.corrections import CorrectionFolder
from samtune.serve.images import ImageStore
from samtune.serve.models import KEEP_EMBEDDINGS, load_slots


def build_state(models: Sequence[str], base: str | None = None, checkpoint: str | None = None,
                base_checkpoint: str | None = None, data: str | Path | None = None,
                split: str | None = None, save_to: str | Path = "corrections",
                device: str = "cpu", keep_embeddings: int = KEEP_EMBEDDINGS) -> ServeState:
    """Models (load errors kept in their slots), the dataset (``data``, else the validation
    data of the first run folder among ``models``, else none: uploads only) and the
    corrections folder."""
    from samtune.infer.evaluate import resolve_data

    given = resolve_data(data, split) if data is not None else None  # a bad path fails first
    slots = load_slots(models, base, checkpoint, base_checkpoint, device, keep_embeddings)
    dataset, described = (given[0], f"{given[1]} (split {given[2]})") if given else (None, None)
    extra = {}
    run = next((s.run_dir for s in slots if s.run_dir is not None), None)
    if dataset is None and run is not None:
        from samtune.runs import run_config_of

        try:
            dataset, described, _ = resolve_data(None, split, run_config_of(run))
        except SamtuneError as e:  # the run's data moved: the page still works with uploads
            extra["data_error"] = f"the validation data of {run} cannot be read: {e}"
    return ServeState(slots, ImageStore(dataset), CorrectionFolder(save_to), described, extra)


def check_host(host: str, allow_remote: bool) -> str | None:
    """None for a loopback host; the warning to print for another one when allowed; a
    SamtuneError when not."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    if not allow_remote:
        raise SamtuneError(f"--host {host} would open the page (which reads your data and writes "
                           "files, with no login) to other machines; add --allow-remote if you "
                           "mean it, or keep the default 127.0.0.1")
    return (f"warning: serving on {host}: anyone who can reach this machine can use the page, "
            "read the dataset's images and write into the corrections folder")


def serve(state: ServeState, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "warning") -> None:
    """Run the page until interrupted (Ctrl-C)."""
    import uvicorn

    from samtune.serve.app import create_app

    uvicorn.run(create_app(state), host=host, port=port, log_level=log_level)


@contextmanager
def running(state: ServeState, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve in a background thread for the duration of a ``with`` block and yield the
    page's URL; ``port=0`` takes a free port. For notebooks, tests and benchmarks."""
    import uvicorn

    from samtune.serve.app import create_app

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
