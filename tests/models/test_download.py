"""Downloads against an HTTP server on 127.0.0.1: resume after a dropped connection, checksum,
unreachable host. No other network is touched."""

from __future__ import annotations

import hashlib
import socket
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from samtune import load_model
from samtune.errors import CheckpointError
from samtune.models import load as load_module
from samtune.models.checkpoints import download, fetch_checkpoint
from samtune.models.registry import get_spec


class Server:
    """Serves one payload; the first ``drops`` GETs send half the body and cut the connection."""

    def __init__(self, payload: bytes, drops: int = 1, honour_range: bool = True):
        self.payload, self.drops, self.honour_range = payload, drops, honour_range
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path != "/weights.pth":
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                server.requests.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng and server.honour_range else 0
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drops > 0:
                    server.drops -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights.pth"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload():
    return np.random.default_rng(0).bytes(300_000)


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    monkeypatch.delenv("SAMTUNE_OFFLINE", raising=False)


def test_dropped_connection_resumes_and_verifies(tmp_path, payload):
    server = Server(payload, drops=1)
    try:
        dest = download(server.url, tmp_path / "w.pth", sha256=hashlib.sha256(payload).hexdigest(),
                        progress=False)
    finally:
        server.close()
    assert dest.read_bytes() == payload
    assert server.requests == [None, f"bytes={len(payload) // 2}-"]
    assert not (tmp_path / "w.pth.part").exists()


def test_server_that_ignores_range_restarts_cleanly(tmp_path, payload):
    server = Server(payload, drops=1, honour_range=False)
    try:
        dest = download(server.url, tmp_path / "w.pth", sha256=hashlib.sha256(payload).hexdigest(),
                        progress=False)
    finally:
        server.close()
    assert dest.read_bytes() == payload


def test_checksum_mismatch_is_refused_and_nothing_is_left(tmp_path, payload):
    server = Server(payload, drops=0)
    try:
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            download(server.url, tmp_path / "w.pth", sha256="0" * 64, progress=False)
    finally:
        server.close()
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_gives_one_clear_error(tmp_path):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/sam.pth"
    with pytest.raises(CheckpointError) as err:
        download(url, tmp_path / "sam.pth", progress=False)
    message = str(err.value)
    assert url in message and str(tmp_path / "sam.pth") in message and "by hand" in message


def test_http_error_is_reported(tmp_path, payload):
    server = Server(payload, drops=0)
    try:
        with pytest.raises(CheckpointError, match="HTTP 404"):
            download(server.url.replace("weights.pth", "missing.pth"), tmp_path / "x", progress=False)
    finally:
        server.close()


def test_load_model_auto_downloads_into_the_cache(tmp_path, monkeypatch):
    """load_model(name, "auto") fetches the official file, verifies it and loads it."""
    reference = load_model("sam_tiny")
    weights = tmp_path / "src.pth"
    torch.save(reference.model.state_dict(), weights)
    data = weights.read_bytes()
    server = Server(data, drops=1)
    spec = replace(get_spec("sam_tiny"), filename="sam_tiny.pth", url=server.url,
                   sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(load_module, "get_spec", lambda name: spec)
    home = tmp_path / "home"
    monkeypatch.setenv("SAMTUNE_HOME", str(home))
    try:
        model = load_model("sam_tiny", checkpoint="auto")
    finally:
        server.close()
    assert (home / "sam_tiny.pth").read_bytes() == data
    for k, v in reference.model.state_dict().items():
        assert torch.equal(model.model.state_dict()[k], v)
    assert fetch_checkpoint(spec) == home / "sam_tiny.pth"  # second time: from the cache
