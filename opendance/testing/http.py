"""HTTP servers for tests, on 127.0.0.x.

``MediaHost`` is a tiny static server: registered bytes, redirects, errors, and it collects
callback POSTs. ``HostileHost`` is an upstream that misbehaves on purpose (stalls, trickles,
never ends, lies about its encoding) for the fetch and robustness tests.
"""

from __future__ import annotations

import gzip
import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 handler for the fake servers: ``answer`` writes JSON (or bytes) with its
    length, ``read_body`` reads the request body by its Content-Length."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def answer(self, status: int, body: Any, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""


class MediaHost:
    """``host.add("/a.png", data, "image/png")`` then fetch ``host.url + "/a.png"``.

    Also records every request (path, headers) so tests can see what reached it, and collects
    JSON POSTs (callbacks) in ``posts``.
    """

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, bytes, str, dict[str, str]]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.posts: list[tuple[str, bytes]] = []
        self.post_status = 200
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                host.requests.append(("GET", self.path, dict(self.headers)))
                status, body, ctype, headers = host.files.get(self.path, (404, b"not found", "text/plain", {}))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                host.requests.append(("POST", self.path, dict(self.headers)))
                host.posts.append((self.path, body))
                self.send_response(host.post_status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(
        self,
        path: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        status: int = 200,
        headers: dict | None = None,
    ) -> str:
        self.files[path] = (status, data, content_type, headers or {})
        return self.url + path

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        return self.add(path, b"", "text/plain", status, {"Location": location})

    def __enter__(self) -> MediaHost:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


Route = Callable[[BaseHTTPRequestHandler, threading.Event], None]


class HostileHost:
    """An HTTP server on 127.0.0.x that misbehaves on purpose: lies, stalls, never ends.

    ``host.add("/a.png", data, "image/png")`` then fetch ``host.url("/a.png")``. Every request is
    recorded (method, path, headers, body, and ``local``: the address it arrived at) so a test can
    prove what reached it and which address a fetch really connected to. With ``tls`` it serves
    HTTPS and records the SNI name of each handshake in ``sni``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[dict[str, Any]] = []
        self.sni: list[str | None] = []
        self.stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                owner.requests.append(
                    {
                        "method": method,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "local": self.connection.getsockname()[0],
                        "body": body,
                    }
                )
                route = owner.routes.get(self.path.split("?")[0])
                try:
                    if route is None:
                        _send(self, 404, b"not found", {"Content-Type": "text/plain"})
                    else:
                        route(self, owner.stop)
                except OSError:
                    pass  # the client hung up (a byte cap or a deadline): expected

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        if tls is not None:

            def remember_sni(sock: ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
                owner.sni.append(name)

            tls.sni_callback = remember_sni  # type: ignore[assignment]  # the callback gets the socket
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, self.server.server_address[1]
        self.scheme = "https" if tls is not None else "http"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def add(
        self,
        path: str,
        body: bytes,
        content_type: str = "application/octet-stream",
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> str:
        """``body`` with a correct Content-Length, the given status and headers."""
        self.routes[path] = lambda h, stop: _send(h, status, body, {"Content-Type": content_type, **(headers or {})})
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        """An empty redirect to ``location`` (absolute or relative)."""
        return self.add(path, b"", "text/plain", status, {"Location": location})

    def gzip_bomb(self, path: str, size: int) -> str:
        """``size`` zero bytes, sent gzip-compressed although identity was asked for."""
        return self.add(path, gzip.compress(b"\0" * size, 9), "image/png", headers={"Content-Encoding": "gzip"})

    def stall(self, path: str, after: bytes = b"", length: int = 100_000) -> str:
        """Headers promising ``length`` bytes, ``after`` (the first of them), then silence until the test ends."""

        def route(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
            h.send_response(200)
            h.send_header("Content-Length", str(length))
            h.end_headers()
            h.wfile.write(after)
            h.wfile.flush()
            stop.wait(120)

        self.routes[path] = route
        return self.url(path)

    def hang(self, path: str) -> str:
        """No answer at all until the test ends."""
        self.routes[path] = lambda h, stop: None if stop.wait(120) else None
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

    def trickle(self, path: str, interval: float = 0.05) -> str:
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
        """The paths of the ``method`` requests received, in order."""
        return [r["path"] for r in self.requests if r["method"] == method]

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
    h.send_response(status)
    h.send_header("Content-Length", str(len(body)))
    for k, v in headers.items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)
