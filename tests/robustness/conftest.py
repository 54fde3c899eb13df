"""Doubles for the robustness suite: a hostile media host, an in-process server whose DNS the
test controls, and the checks every hostile case ends with (nothing left on disk)."""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from opendance.api.app import create_app
from opendance.config import Settings
from opendance.testing.server import LiveServer, free_port

Route = Callable[[BaseHTTPRequestHandler, threading.Event], None]


class HostileHost:
    """An HTTP server on 127.0.0.x that misbehaves on purpose: lies, stalls, never ends.

    Every request is recorded (method, path, headers, body) so a test can prove what reached it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[dict[str, Any]] = []
        self.stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                owner.requests.append({"method": method, "path": self.path, "headers": dict(self.headers), "body": body})
                route = owner.routes.get(self.path.split("?")[0])
                try:
                    if route is None:
                        send(self, 404, b"not found", {"Content-Type": "text/plain"})
                    else:
                        route(self, owner.stop)
                except OSError:
                    pass  # the server hung up on us (a cap or a deadline): expected

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host}:{self.port}{path}" if host else self.base + path

    def add(self, path: str, body: bytes, content_type: str = "application/octet-stream", status: int = 200, headers: dict | None = None) -> str:
        self.routes[path] = lambda h, stop: send(h, status, body, {"Content-Type": content_type, **(headers or {})})
        return self.url(path)

    def redirect(self, path: str, location: str) -> str:
        return self.add(path, b"", "text/plain", 302, {"Location": location})

    def gzip_bomb(self, path: str, size: int) -> str:
        """``size`` zero bytes, sent gzip-compressed although identity was asked for."""
        return self.add(path, gzip.compress(b"\0" * size, 9), "image/png", headers={"Content-Encoding": "gzip"})

    def stall(self, path: str, first: bytes = b"") -> str:
        """Headers promising 100 kB, ``first`` bytes of it, then silence until the test ends."""

        def route(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
            h.send_response(200)
            h.send_header("Content-Length", "100000")
            h.end_headers()
            h.wfile.write(first)
            h.wfile.flush()
            stop.wait(120)

        self.routes[path] = route
        return self.url(path)

    def endless(self, path: str) -> str:
        """A chunked body that never ends (until the client hangs up)."""

        def route(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            chunk = b"%x\r\n%s\r\n" % (65536, b"\x89" * 65536)
            while not stop.is_set():
                h.wfile.write(chunk)

        self.routes[path] = route
        return self.url(path)

    def trickle(self, path: str, interval: float = 0.2) -> str:
        """One byte every ``interval`` s forever: never silent long enough for a read timeout."""

        def route(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            while not stop.wait(interval):
                h.wfile.write(b"1\r\nx\r\n")
                h.wfile.flush()

        self.routes[path] = route
        return self.url(path)

    def paths(self, method: str = "GET") -> list[str]:
        return [r["path"] for r in self.requests if r["method"] == method]

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
    h.send_response(status)
    h.send_header("Content-Length", str(len(body)))
    for k, v in headers.items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


@pytest.fixture(scope="session")
def open_server(tmp_path_factory):
    """An open server with no request rate limit: the fuzzers are each one very busy client."""
    env = {"OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(tmp_path_factory.mktemp("open"), env=env) as server:
        yield server


@pytest.fixture(scope="session")
def hostile_host():
    host = HostileHost()
    yield host
    host.close()


@pytest.fixture(scope="session")
def make_host():
    """More hostile hosts (other loopback addresses, a chosen port); all closed at the end."""
    made: list[HostileHost] = []

    def make(host: str = "127.0.0.1", port: int = 0) -> HostileHost:
        made.append(HostileHost(host, port))
        return made[-1]

    yield make
    for h in made:
        h.close()


class InProcessServer:
    """``create_app(settings, resolver=...)`` served by uvicorn on a thread of the test process:
    a real HTTP server whose DNS answers the test chooses (to play DNS rebinding)."""

    def __init__(self, settings: Settings, resolver: Callable | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, resolver=resolver)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="in-process-server", daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class NameMap:
    """A resolver: host -> a list of answers, one per lookup (the last repeats); lookups recorded."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        await asyncio.sleep(0)
        seq = self.answers.get(host)
        if not seq:
            raise OSError(f"{host} not found")
        return seq[min(self.calls.count(host) - 1, len(seq) - 1)]


def leftovers(*roots: Path) -> list[str]:
    """Files under ``roots`` that a refused request must never leave: task folders, partial
    writes, temporary files. The database, its journal, the server log and the readiness probe's
    marker file (storage `.readyz`) are expected."""
    expected = {"opendance.db", "opendance.db-wal", "opendance.db-shm", "opendance.db-journal", "server.log", ".readyz"}
    found = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if name not in expected:
                    found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# Test modules cannot import this conftest (importlib mode), so its helpers come as fixtures.


@pytest.fixture(scope="session")
def find_leftovers():
    return leftovers


@pytest.fixture(scope="session")
def error_body():
    return error_of


@pytest.fixture(scope="session")
def in_process_server():
    return InProcessServer


@pytest.fixture(scope="session")
def name_map():
    return NameMap
