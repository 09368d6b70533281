"""The exec probe of an engine behind the gateway, run for real: bash dials a real HTTP
server on loopback, as the kubelet runs it inside the engine's container."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from modeldeploy.render.workload import engine_health_command

pytestmark = pytest.mark.unit


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        code = {"/health": 200, "/starting": 503}.get(self.path, 404)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def probe(port: int, path: str) -> int:
    return subprocess.run(engine_health_command(port, path), capture_output=True,
                          timeout=10).returncode


def test_a_healthy_engine_passes(port: int) -> None:
    assert probe(port, "/health") == 0


@pytest.mark.parametrize("path", ["/starting", "/missing"])
def test_an_engine_answering_anything_but_200_fails(port: int, path: str) -> None:
    assert probe(port, path) != 0


def test_nothing_listening_fails() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago and is closed now
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert probe(closed, "/health") != 0
