"""Real local upstreams for the media tests (127.0.0.x only, no patching) and small helpers.

``upstream`` is a threaded HTTP server whose routes can serve bytes, redirect, stall, trickle or
stream forever; it records every request with the local address it arrived at, so tests can
see which address a fetch really connected to.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from opendance.media.fetch import SafeFetcher

Route = Callable[[BaseHTTPRequestHandler, threading.Event], None]


class Upstream:
    """``up.add("/a.png", data)`` then fetch ``up.url("/a.png")``."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[dict[str, Any]] = []  # method, path, headers, local (address:port it reached), body
        self.sni: list[str | None] = []
        self.stop = threading.Event()
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                up.requests.append(
                    {"method": method, "path": self.path, "headers": dict(self.headers), "local": self.connection.getsockname()[0], "body": body}
                )
                route = up.routes.get(self.path.split("?")[0])
                try:
                    if route is None:
                        self._send(404, b"not found")
                    else:
                        route(self, up.stop)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                    pass  # the client hung up (byte cap, deadline): expected

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            def remember_sni(sock: ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
                up.sni.append(name)

            tls.sni_callback = remember_sni
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, self.server.server_address[1]
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def add(self, path: str, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> str:
        self.routes[path] = lambda h, stop: h._send(status, body, headers)
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        return self.add(path, b"", status, {"Location": location})

    def endless(self, path: str) -> str:
        """A chunked response that never ends (until the client hangs up)."""

        def route(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            chunk = b"%x\r\n%s\r\n" % (65536, b"\0" * 65536)
            while not stop.is_set():
                h.wfile.write(chunk)

        self.routes[path] = route
        return self.url(path)

    def stall(self, path: str, after: bytes = b"") -> str:
        """Headers (and ``after``), then silence until the test ends."""

        def route(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
            h.send_response(200)
            h.send_header("Content-Length", "100000")
            h.end_headers()
            h.wfile.write(after)
            h.wfile.flush()
            stop.wait(60)

        self.routes[path] = route
        return self.url(path)

    def hang(self, path: str) -> str:
        """No answer at all until the test ends."""
        self.routes[path] = lambda h, stop: stop.wait(60)
        return self.url(path)

    def trickle(self, path: str, interval: float = 0.05) -> str:
        """One byte every ``interval`` seconds, forever: never silent long enough for a read timeout."""

        def route(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            while not stop.wait(interval):
                h.wfile.write(b"1\r\nx\r\n")
                h.wfile.flush()

        self.routes[path] = route
        return self.url(path)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    up = Upstream()
    yield up
    up.close()


@pytest.fixture
def make_upstream():
    """Start more upstreams (other loopback addresses, TLS); all closed at the end."""
    made: list[Upstream] = []

    def make(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Upstream:
        made.append(Upstream(host, tls))
        return made[-1]

    yield make
    for up in made:
        up.close()


class NameMap:
    """A resolver test double: host name -> answers, each call answered by the next one
    (the last repeats), every call recorded. Lets a test play DNS rebinding for real."""

    def __init__(self, answers: dict[str, list[list[str]]], delay: float = 0.0) -> None:
        self.answers = answers
        self.delay = delay
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if self.delay:
            await asyncio.sleep(self.delay)
        seq = self.answers.get(host)
        if not seq:
            raise OSError(f"{host} not found")
        n = sum(1 for c in self.calls if c == host) - 1
        return seq[min(n, len(seq) - 1)]


@pytest.fixture
def name_map():
    """``name_map({"a.test": [["127.0.0.2"], ["10.0.0.1"]]})``: a ``NameMap`` resolver."""
    return NameMap


@pytest.fixture
def run_fetcher():
    """``run_fetcher(lambda f: f.fetch(...), allow_hosts=[...])``: build a SafeFetcher with short
    test timeouts inside a fresh event loop, run the coroutine, close the fetcher."""

    def run(use: Callable[[SafeFetcher], Any], **overrides: Any) -> Any:
        options: dict[str, Any] = dict(allow_hosts=[], connect_timeout=2.0, read_timeout=2.0, total_timeout=10.0, max_redirects=3)
        options.update(overrides)

        async def main() -> Any:
            fetcher = SafeFetcher(**options)
            try:
                return await use(fetcher)
            finally:
                await fetcher.aclose()

        return asyncio.run(main())

    return run


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for the name ``media.test`` (made with the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=media.test",
         "-addext", "subjectAltName=DNS:media.test"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key

