"""A tiny static HTTP server on 127.0.0.1 for tests: serves registered bytes, redirects, errors."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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

    def add(self, path: str, data: bytes, content_type: str = "application/octet-stream", status: int = 200, headers: dict | None = None) -> str:
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
