"""What the client does, written once with no I/O in it (sans-IO).

Every operation is a generator that *yields* the effects it needs (an HTTP request, a sleep, a
progress callback, a download to a file) and *receives* their results; ``Client`` and
``AsyncClient`` only perform those effects, one with httpx's sync calls, the other with its
async ones. So request building, response parsing, pagination, polling with backoff and error
handling exist exactly once, and the two clients cannot drift apart.
"""

from __future__ import annotations

import base64
import mimetypes
import os
import re
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from ._errors import RateLimitError, ServerError, TaskFailedError, TimeoutError
from ._models import Task

T = TypeVar("T")
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
MediaInput = str | os.PathLike | bytes


@dataclass
class Request:
    method: str
    url: str  # a path under the base URL (``/v1/...``) or an absolute URL
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Sleep:
    seconds: float


@dataclass
class Notify:
    callback: Callable[[Task], Any]
    task: Task


@dataclass
class Download:
    url: str
    headers: dict[str, str]
    path: Path


Effect = Request | Sleep | Notify | Download
Op = Generator[Effect, Any, T]

# A scheme ("https:", "data:", "ftp:") but not a Windows drive ("C:\").
_SCHEME = re.compile(r"^(?![A-Za-z]:[\\/])[A-Za-z][A-Za-z0-9+.-]*:")


def media_value(value: MediaInput, param: str) -> str:
    """A URL or data: URI passes through; a local file (path or bytes) becomes a data: URI.

    Strings with any other scheme also pass through, so the server names the problem.
    """
    if isinstance(value, bytes):
        return f"data:application/octet-stream;base64,{base64.b64encode(value).decode()}"
    if isinstance(value, str) and _SCHEME.match(value):
        return value
    path = Path(os.fspath(value)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{param}: {str(path)!r} is neither a URL nor a readable file")
    # The server reads the format from the bytes; the type here is only a label.
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _media_list(value: MediaInput | Sequence[MediaInput] | None, param: str) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, (str, bytes, os.PathLike)) else list(value)
    return [media_value(item, f"{param}[{i}]") for i, item in enumerate(items)]


class CreateOptions(TypedDict, total=False):
    """Every optional field of the create body (spec/api.md); the extras go to ``extra_body``."""

    image: MediaInput
    last_image: MediaInput
    images: MediaInput | Sequence[MediaInput]
    videos: MediaInput | Sequence[MediaInput]
    audios: MediaInput | Sequence[MediaInput]
    duration: int
    aspect_ratio: str
    seed: int
    negative_prompt: str
    generate_audio: bool
    watermark: bool
    camera_fixed: bool
    return_last_frame: bool
    callback_url: str
    loras: Sequence[str | Mapping[str, Any]]
    extra_body: dict[str, Any]


def _loras(loras: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``extra_body.loras``: each item a name (the model's scale) or ``{"name": ..., "scale": ...}``."""
    if isinstance(loras, (str, Mapping)):
        raise TypeError("loras takes a list of names or {'name': ..., 'scale': ...} mappings")
    return [{"name": item} if isinstance(item, str) else dict(item) for item in loras]


def create_body(
    model: str,
    prompt: str | None = None,
    *,
    image: MediaInput | None = None,
    last_image: MediaInput | None = None,
    images: MediaInput | Sequence[MediaInput] | None = None,
    videos: MediaInput | Sequence[MediaInput] | None = None,
    audios: MediaInput | Sequence[MediaInput] | None = None,
    duration: int | None = None,
    aspect_ratio: str | None = None,
    seed: int | None = None,
    negative_prompt: str | None = None,
    generate_audio: bool | None = None,
    watermark: bool | None = None,
    camera_fixed: bool | None = None,
    return_last_frame: bool | None = None,
    callback_url: str | None = None,
    loras: Sequence[str | Mapping[str, Any]] | None = None,
    extra_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/video/generations``; fields left None are not sent."""
    body: dict[str, Any] = {"model": model}
    fields = {
        "prompt": prompt,
        "image": media_value(image, "image") if image is not None else None,
        "last_image": media_value(last_image, "last_image") if last_image is not None else None,
        "images": _media_list(images, "images"),
        "videos": _media_list(videos, "videos"),
        "audios": _media_list(audios, "audios"),
        "duration": duration,
        "aspect_ratio": aspect_ratio,
    }
    body.update({k: v for k, v in fields.items() if v is not None})
    extras = {
        "seed": seed,
        "negative_prompt": negative_prompt,
        "generate_audio": generate_audio,
        "watermark": watermark,
        "camera_fixed": camera_fixed,
        "return_last_frame": return_last_frame,
        "callback_url": callback_url,
        "loras": _loras(loras) if loras is not None else None,
    }
    extra = {**(extra_body or {}), **{k: v for k, v in extras.items() if v is not None}}
    if extra:
        body["extra_body"] = extra
    return body


def _task_id(task: Task | str) -> str:
    task_id = task.id if isinstance(task, Task) else task
    if not task_id:
        raise ValueError("a task id is required")
    return quote(task_id, safe="")


class Core:
    """Connection settings and the operations, shared by ``Client`` and ``AsyncClient``."""

    def __init__(self, base_url: str | None, api_key: str | None) -> None:
        # The client library's own defaults; the server's settings live in opendance.config.
        base = base_url or os.environ.get("OPENDANCE_BASE_URL") or DEFAULT_BASE_URL
        base = base.rstrip("/")
        self.base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self.api_key = api_key if api_key is not None else os.environ.get("OPENDANCE_API_KEY") or None
        from .. import __version__

        # Sent with every request; the key is not among them (see ``auth_for``).
        self.headers = {"User-Agent": f"opendance-python/{__version__}", "Accept": "application/json"}

    def url(self, path_or_url: str) -> str:
        return path_or_url if "://" in path_or_url else self.base_url + path_or_url

    def auth_for(self, url: str) -> dict[str, str]:
        """The key goes only to the API's own origin, never to a CDN a video_url points at."""
        a, b = urlsplit(url), urlsplit(self.base_url)
        if not self.api_key or (a.scheme, a.netloc) != (b.scheme, b.netloc):
            return {}
        return {"Authorization": f"Bearer {self.api_key}"}

    # -- operations ----------------------------------------------------------------------

    def create(self, body: dict[str, Any], idempotency_key: str | None) -> Op[Task]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Task.from_dict((yield Request("POST", "/v1/video/generations", json=body, headers=headers)))

    def get(self, task: Task | str) -> Op[Task]:
        return Task.from_dict((yield Request("GET", f"/v1/video/generations/{_task_id(task)}")))

    def cancel(self, task: Task | str) -> Op[Task]:
        return Task.from_dict((yield Request("POST", f"/v1/video/generations/{_task_id(task)}/cancel")))

    def delete(self, task: Task | str) -> Op[None]:
        yield Request("DELETE", f"/v1/video/generations/{_task_id(task)}")

    def models(self) -> Op[list[dict[str, Any]]]:
        data = yield Request("GET", "/v1/models")
        return list(data.get("data") or []) if isinstance(data, dict) else []

    def list_page(
        self, after: str | None, status: str | None, model: str | None, order: str, page_size: int
    ) -> Op[tuple[list[Task], str | None]]:
        """One page of the caller's tasks and the cursor of the next page (None: last page)."""
        params = {"limit": page_size, "order": order, "after": after, "status": status, "model": model}
        data = yield Request("GET", "/v1/video/generations", params={k: v for k, v in params.items() if v is not None})
        tasks = [Task.from_dict(item) for item in data.get("data") or []]
        if not data.get("has_more") or not tasks:
            return tasks, None
        return tasks, data.get("last_id") or tasks[-1].id

    def wait(
        self,
        task: Task | str,
        timeout: float,
        poll_interval: float,
        max_interval: float,
        on_progress: Callable[[Task], Any] | None,
        raise_on_failure: bool,
    ) -> Op[Task]:
        """Poll until the task is terminal. The interval starts at ``poll_interval`` and grows
        1.5x per poll while nothing changes (up to ``max_interval``); any change resets it.
        A 5xx, a 429 or a dropped connection is retried until the deadline: a long wait should
        not die of one hiccup."""
        deadline = time.monotonic() + timeout
        interval, seen = poll_interval, None
        while True:
            try:
                current = yield from self.get(task)
            except (ServerError, RateLimitError, httpx.TransportError) as exc:
                pause = max(interval, getattr(exc, "retry_after", None) or 0)
                if time.monotonic() + pause > deadline:
                    raise
                yield Sleep(pause)
                interval = min(interval * 2, max_interval)
                continue
            if on_progress is not None:
                yield Notify(on_progress, current)
            if current.is_terminal:
                if current.is_failed and raise_on_failure:
                    raise TaskFailedError(current)
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(current, timeout)
            changed = seen is None or (current.status, current.progress) != (seen.status, seen.progress)
            interval = poll_interval if changed else min(interval * 1.5, max_interval)
            seen = current
            yield Sleep(min(interval, remaining))

    def download(self, task: Task | str, path: str | os.PathLike | None, variant: str) -> Op[Path]:
        """Save the task's video (or ``last_frame``) to ``path`` (default ``<task id>.mp4``)."""
        if not (isinstance(task, Task) and task.is_completed):
            task = yield from self.get(task)
        url = task.video_url if variant == "video" else task.last_frame_url
        if url is None:
            # Not completed, or no such file: the content route answers with the reason (409/404).
            url = f"/v1/video/generations/{_task_id(task)}/content" + ("" if variant == "video" else f"?variant={variant}")
        suffix = ".mp4" if variant == "video" else ".png"
        dest = (
            Path(path)
            if path is not None
            else Path(f"{task.id}{suffix}" if variant == "video" else f"{task.id}-{variant}{suffix}")
        )
        url = self.url(url)
        yield Download(url, {**self.auth_for(url), "Accept": "*/*"}, dest)
        return dest
