"""What every upstream protocol class says: how to create a task, ask its status, find its
video and cancel it. The classes make requests and read answers; they do no I/O (the relay job
sends what they make through its channel), so each is a page of plain code.
"""

from __future__ import annotations

import base64
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from ...domain import Mode
from ...errors import EngineError
from ..base import Inputs, Job

PASSED_OPTIONS = ("generate_audio", "watermark", "camera_fixed")  # extra_body keys sent upstream
DONE_WORDS = ("completed", "succeeded")
FAILED_WORDS = ("failed", "cancelled", "canceled", "expired")


@dataclass
class Request:
    """One HTTP request to a channel: ``path`` is under the channel's ``base_url``."""

    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)  # json=, data=, files=


@dataclass
class UpstreamState:
    status: str  # the upstream's own word, lower case
    progress: int | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in DONE_WORDS

    @property
    def failed(self) -> bool:
        return self.status in FAILED_WORDS


class UpstreamProtocol(ABC):
    name: ClassVar[str]
    modes: ClassVar[tuple[str, ...]] = tuple(m.value for m in Mode)

    def __init__(self, upstream_model: str) -> None:
        self.upstream_model = upstream_model

    def check(self, job: Job) -> None:
        if job.mode.value not in self.modes:
            raise EngineError(f"the {self.name} protocol cannot relay {job.mode.value}")

    @abstractmethod
    def create(self, job: Job, inputs: Inputs) -> Request: ...

    def task_id(self, answer: dict[str, Any]) -> str | None:
        upstream = answer.get("id") or answer.get("task_id")
        return upstream if isinstance(upstream, str) and upstream else None

    @abstractmethod
    def status(self, upstream_id: str) -> Request: ...

    def state(self, answer: dict[str, Any]) -> UpstreamState:
        progress = answer.get("progress")
        if not isinstance(progress, (int, float)) or isinstance(progress, bool):
            progress = None
        error = answer.get("error") or {}
        reason = error.get("message") if isinstance(error, dict) else str(error)
        return UpstreamState(
            str(answer.get("status", "")).lower(), None if progress is None else int(max(0, min(99, progress))), reason or None
        )

    @abstractmethod
    def video_link(self, upstream_id: str, answer: dict[str, Any], base_url: str) -> str | None:
        """Where the finished video is (an absolute http(s) URL), from the status answer."""

    @abstractmethod
    def cancel(self, upstream_id: str) -> Request: ...


def read_answer(r: httpx.Response, what: str) -> dict[str, Any]:
    """The upstream's answer as a dict, or an EngineError with the upstream's own message."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code >= 400 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else r.text[:300]
        raise EngineError(f"the upstream refused the {what} request (HTTP {r.status_code}): {message}")
    return body


def link_in(answer: dict[str, Any]) -> str | None:
    """``video_url`` at the top, or under ``result`` or ``content``."""
    url = answer.get("video_url")
    for holder in ("result", "content"):
        if not url and isinstance(answer.get(holder), dict):
            url = answer[holder].get("video_url")
    return url if isinstance(url, str) else None


def png(image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def media_type(data: bytes, field: str) -> str:
    """The MIME type of a stored reference video or audio, from its first bytes."""
    if data[4:8] == b"ftyp":
        if data[8:10] == b"qt":
            return "video/quicktime"
        return "video/mp4" if field == "videos" else "audio/mp4"
    if data[:4] == b"RIFF":
        return "audio/wav"
    if data[:3] == b"ID3" or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    if data[:2] in (b"\xff\xf1", b"\xff\xf9"):
        return "audio/aac"
    return "application/octet-stream"


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
