"""A stand-in for BytePlus ModelArk / Volcengine Ark's content-generation task API, on 127.0.0.1.

The real service is on the internet, so tests of the relay's ``ark`` protocol talk to this
server instead. It keeps to the public contract of ``/api/v3/contents/generations/tasks`` as
far as the relay uses it, and is strict where the real one is:

- ``POST .../tasks`` with a bearer key: ``model``, a ``content`` array of ``{"type": "text"}``
  and ``{"type": "image_url" | "video_url" | "audio_url", "<type>": {"url": ...}, "role": ...}``
  items (roles ``first_frame``, ``last_frame``, ``reference_image``, ``reference_video``,
  ``reference_audio``), and the top-level ``duration``, ``ratio``, ``resolution``, ``seed``,
  ``generate_audio``, ``watermark``, ``camera_fixed``. Answers ``{"id": "cgt-..."}``; a bad
  request is a 400 ``{"error": {"code", "message"}}``.
- ``GET .../tasks/{id}``: ``{"id", "model", "status", "content", "error", ...}``; ``status`` goes
  ``queued`` -> ``running`` -> ``succeeded`` over ``polls_to_finish`` polls, then ``content``
  holds ``video_url`` (a link on this server's ``/files/`` path, as Ark's links point at its
  object storage) to an MP4 of the asked duration at 24 fps, with sound when
  ``generate_audio`` is true. A model named ``fail-*`` ends ``failed`` with an error.
- ``DELETE .../tasks/{id}``: cancels a queued or running task (``cancelled``).

Every request is kept in ``requests`` (method, path, headers, JSON body) for the tests to read.
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from . import media
from .http import JsonHandler

PREFIX = "/api/v3/contents/generations/tasks"
ROLES = {
    "image_url": ("first_frame", "last_frame", "reference_image"),
    "video_url": ("reference_video",),
    "audio_url": ("reference_audio",),
}
RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive")
SIZES = {"16:9": (160, 90), "1:1": (96, 96), "9:16": (90, 160)}  # small videos: tests fit them


class FakeArk:
    def __init__(self, key: str, polls_to_finish: int = 3) -> None:
        self.key, self.polls_to_finish = key, polls_to_finish
        self.tasks: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        ark = self

        class Handler(JsonHandler):
            def _handle(self, method: str) -> None:
                raw = self.read_body()
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                ark.requests.append({"method": method, "path": self.path, "headers": dict(self.headers), "json": body})
                if self.path.startswith("/files/"):
                    data = ark.files.get(self.path[len("/files/") :])
                    return (
                        self.answer(200, data, "video/mp4")
                        if data
                        else self.answer(404, {"error": {"code": "NotFound", "message": "no such file"}})
                    )
                if self.headers.get("Authorization") != f"Bearer {ark.key}":
                    return self.answer(401, {"error": {"code": "AuthenticationError", "message": "the API key is invalid"}})
                status, answer = ark.route(method, self.path, body, self.headers.get("Host", ""))
                self.answer(status, answer)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.base_url = self.url + "/api/v3"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeArk:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------------------

    def route(self, method: str, path: str, body: Any, host: str) -> tuple[int, Any]:
        if method == "POST" and path == PREFIX:
            return self._create(body)
        if path.startswith(PREFIX + "/"):
            task = self.tasks.get(path[len(PREFIX) + 1 :])
            if task is None:
                return 404, {"error": {"code": "ResourceNotFound", "message": "the task does not exist"}}
            if method == "GET":
                return 200, self._advance(task, host)
            if method == "DELETE":
                if task["status"] in ("queued", "running"):
                    task["status"] = "cancelled"
                return 200, {}
        return 404, {"error": {"code": "NotFound", "message": f"{method} {path}"}}

    def _create(self, body: Any) -> tuple[int, Any]:
        problem = _check(body)
        if problem:
            return 400, {"error": {"code": "InvalidParameter", "message": problem}}
        task_id = "cgt-" + secrets.token_hex(8)
        self.tasks[task_id] = {
            "id": task_id,
            "model": body["model"],
            "status": "queued",
            "polls": 0,
            "request": body,
            "created_at": 0,
        }
        return 200, {"id": task_id}

    def _advance(self, task: dict[str, Any], host: str) -> dict[str, Any]:
        with self._lock:
            if task["status"] in ("queued", "running"):
                task["polls"] += 1
                if task["polls"] >= self.polls_to_finish:
                    if task["model"].startswith("fail-"):
                        task["status"] = "failed"
                        task["error"] = {"code": "OutputVideoSensitiveContentDetected", "message": "the output was refused"}
                    else:
                        self._finish(task)
                elif task["polls"] >= 1:
                    task["status"] = "running"
        out = {k: task.get(k) for k in ("id", "model", "status", "created_at")}
        out["error"] = task.get("error")
        if task["status"] == "succeeded":
            out["content"] = {"video_url": f"http://{host}/files/{task['id']}.mp4"}
        return out

    def _finish(self, task: dict[str, Any]) -> None:
        request = task["request"]
        width, height = SIZES.get(request.get("ratio", "16:9"), SIZES["16:9"])
        self.files[f"{task['id']}.mp4"] = media.video_bytes(
            float(request.get("duration", 5)),
            width,
            height,
            fps=24,
            with_audio=bool(request.get("generate_audio", True)),
            seed=int(request.get("seed", 0)) % 1000,
        )
        task["status"] = "succeeded"


def _check(body: Any) -> str | None:
    """What is wrong with a create body, as Ark would say it, or None."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    content = body.get("content")
    if not isinstance(content, list) or not content:
        return "content must be a non-empty array"
    for i, item in enumerate(content):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            if not isinstance(item.get("text"), str):
                return f"content[{i}].text must be a string"
        elif kind in ROLES:
            url = (item.get(kind) or {}).get("url") if isinstance(item.get(kind), dict) else None
            if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:")):
                return f"content[{i}].{kind}.url must be a URL"
            if item.get("role") not in ROLES[kind]:
                return f"content[{i}].role must be one of {', '.join(ROLES[kind])}"
        else:
            return f"content[{i}].type {kind!r} is not supported"
    duration = body.get("duration", 5)
    if isinstance(duration, bool) or not isinstance(duration, int) or not (duration == -1 or 4 <= duration <= 15):
        return "duration must be an integer from 4 to 15 (or -1)"
    if body.get("ratio", "adaptive") not in RATIOS:
        return f"ratio must be one of {', '.join(RATIOS)}"
    for key in ("generate_audio", "watermark", "camera_fixed"):
        if key in body and not isinstance(body[key], bool):
            return f"{key} must be a boolean"
    return None
