"""A fake upstream video API on 127.0.0.1, written from the protocols the relay speaks, for the
relay's concurrency, failover and restart tests and benchmarks.

- legacy (``spec/api.md``): ``POST /v1/video/generations`` answers the task object
  (``id``, ``status`` ``queued``, ``progress`` 0); ``GET /v1/video/generations/{id}``: the task,
  ``in_progress`` with ``progress`` growing with the time since its create, ``completed`` with
  ``video_url`` after ``seconds``; ``POST .../{id}/cancel``: ``failed`` / ``CANCELLED``.
- openai: ``POST /v1/videos`` (JSON or multipart), ``GET /v1/videos/{id}`` (``completed``),
  ``GET /v1/videos/{id}/content``, ``DELETE /v1/videos/{id}``.

A create that carries an ``Idempotency-Key`` already seen answers the first task again, as
opendance and most gateways do. The finished video is a real MP4 of exactly the asked size
(the output table for ``resolution``, by ``aspect_ratio``, or ``size``), duration and ``fps``,
made once per shape, so a relay can store it as it is. ``create_status`` (e.g. 503) makes every
create fail with that status, as an upstream in trouble does.

What the tests read: ``creates`` (create requests per idempotency key), ``tasks``, ``requests``
(method and path of each), ``peak_in_flight`` (the most tasks created and not yet finished at
one moment).
"""

from __future__ import annotations

import collections
import json
import secrets
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from ..domain import OUTPUT_SIZES
from .http import JsonHandler

LEGACY = "/v1/video/generations"
OPENAI = "/v1/videos"


def conforming_mp4(width: int, height: int, duration: int, fps: int) -> bytes:
    """An MP4 exactly as opendance's own encoder writes it (a slow colour ramp)."""
    from ..engines.base import Output
    from ..media.encode import encode_mp4

    n = duration * fps
    frames = (np.full((height, width, 3), (i * 2) % 256, dtype=np.uint8) for i in range(n))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.mp4"
        encode_mp4(Output(frames=frames, fps=fps), path, width=width, height=height, num_frames=n)
        return path.read_bytes()


class FakeUpstream:
    def __init__(
        self,
        *,
        seconds: float = 10.0,
        key: str | None = None,
        resolution: str = "480p",
        fps: int = 24,
        create_status: int | None = None,
    ) -> None:
        self.seconds, self.key, self.resolution, self.fps = seconds, key, resolution, fps
        self.create_status = create_status
        self.tasks: dict[str, dict[str, Any]] = {}
        self.creates: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, str]] = []
        self.peak_in_flight = 0
        self._videos: dict[tuple[int, int, int], bytes] = {}
        self._by_key: dict[str, str] = {}
        self._lock = threading.Lock()
        self._encoding = threading.Lock()
        upstream = self

        class Handler(JsonHandler):
            def handle_any(self, method: str) -> None:
                raw = self.read_body()
                with upstream._lock:
                    upstream.requests.append((method, self.path))
                if (
                    upstream.key
                    and self.headers.get("Authorization") != f"Bearer {upstream.key}"
                    and not self.path.startswith("/files/")
                ):
                    return self.answer(401, {"error": {"message": "invalid API key", "type": "invalid_request_error"}})
                status, body, ctype = upstream.route(method, self.path, raw, self.headers)
                self.answer(status, body, ctype)

            def do_GET(self) -> None:
                self.handle_any("GET")

            def do_POST(self) -> None:
                self.handle_any("POST")

            def do_DELETE(self) -> None:
                self.handle_any("DELETE")

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024  # hundreds of relays connect at once

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up (a killed server's relays): nothing to say

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------------------

    def route(self, method: str, path: str, raw: bytes, headers) -> tuple[int, Any, str]:
        json_type = "application/json"
        if method == "GET" and path.startswith("/files/"):
            video = self._video_bytes(path[len("/files/") :].removesuffix(".mp4"))
            return (200, video, "video/mp4") if video else (404, {"error": {"message": "no such file"}}, json_type)
        if method == "POST" and path in (LEGACY, OPENAI):
            return (*self._create(path, raw, headers), json_type)
        for prefix in (LEGACY, OPENAI):
            if path.startswith(prefix + "/"):
                rest = path[len(prefix) + 1 :].split("/")
                task = self.tasks.get(rest[0])
                if task is None:
                    return 404, {"error": {"message": f"no task {rest[0]!r}"}}, json_type
                if method == "GET" and rest[1:] == ["content"]:
                    video = self._video_bytes(task["id"])
                    return (200, video, "video/mp4") if video else (409, {"error": {"message": "not done"}}, json_type)
                if method == "GET" and len(rest) == 1:
                    return 200, self._view(task), json_type
                if (method, rest[1:]) in (("POST", ["cancel"]), ("DELETE", [])):
                    with self._lock:
                        if self._state(task) != "completed":
                            task["cancelled"] = True
                    return 200, self._view(task), json_type
        return 404, {"error": {"message": f"no route {method} {path}"}}, json_type

    def _create(self, route: str, raw: bytes, headers) -> tuple[int, Any]:
        key = headers.get("Idempotency-Key") or ""
        with self._lock:
            self.creates[key] += 1
        if self.create_status is not None:
            return self.create_status, {"error": {"message": "the upstream is overloaded", "type": "server_error"}}
        body = self._body(raw, headers.get("Content-Type", ""))
        if not isinstance(body.get("model"), str) or not body["model"]:
            return 400, {"error": {"message": "model is required", "param": "model"}}
        if route == OPENAI:
            width, height = (int(x) for x in str(body.get("size", "864x480")).split("x"))
            duration = int(body.get("seconds", 5))
        else:
            width, height = OUTPUT_SIZES[self.resolution][body.get("aspect_ratio", "16:9")]
            duration = int(body.get("duration", 5))
        with self._lock:
            if key and key in self._by_key:
                return 200, self._view(self.tasks[self._by_key[key]])
            task_id = "up_" + secrets.token_hex(8)
            now = time.monotonic()
            self.tasks[task_id] = {
                "id": task_id,
                "route": route,
                "model": body["model"],
                "created": now,
                "shape": (width, height, duration),
                "cancelled": False,
            }
            if key:
                self._by_key[key] = task_id
            in_flight = sum(1 for t in self.tasks.values() if t["created"] + self.seconds > now and not t["cancelled"])
            self.peak_in_flight = max(self.peak_in_flight, in_flight)
        self._video(width, height, duration)  # made now, so that no poll waits on the encoder
        return 200, self._view(self.tasks[task_id])

    @staticmethod
    def _body(raw: bytes, ctype: str) -> dict[str, Any]:
        if ctype.startswith("multipart/form-data"):
            from email.parser import BytesParser
            from email.policy import default

            message = BytesParser(policy=default).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
            return {
                str(part.get_param("name", header="content-disposition")): part.get_content()
                for part in message.iter_parts()
                if not part.get_filename()
            }
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _state(self, task: dict[str, Any]) -> str:
        if task["cancelled"]:
            return "cancelled"
        return "completed" if time.monotonic() - task["created"] >= self.seconds else "in_progress"

    def _view(self, task: dict[str, Any]) -> dict[str, Any]:
        state = self._state(task)
        progress = 100 if state == "completed" else min(99, int(100 * (time.monotonic() - task["created"]) / self.seconds))
        if task["route"] == OPENAI:
            return {"id": task["id"], "object": "video", "model": task["model"], "status": state, "progress": progress}
        view = {
            "id": task["id"],
            "task_id": task["id"],
            "object": "video.generation.job",
            "model": task["model"],
            "status": {"cancelled": "failed"}.get(state, state),
            "raw_status": state.upper(),
            "progress": progress,
            "video_url": f"{self.url}/files/{task['id']}.mp4" if state == "completed" else None,
            "error": None,
        }
        if state == "cancelled":
            view["error"] = {"code": "cancelled", "message": "the task was cancelled by the client"}
        return view

    def _video(self, width: int, height: int, duration: int) -> bytes:
        shape = (width, height, duration)
        with self._encoding:  # once per shape; whoever asks meanwhile waits for it
            if shape not in self._videos:
                self._videos[shape] = conforming_mp4(width, height, duration, self.fps)
            return self._videos[shape]

    def _video_bytes(self, task_id: str) -> bytes | None:
        task = self.tasks.get(task_id)
        if task is None or self._state(task) != "completed":
            return None
        return self._video(*task["shape"])
