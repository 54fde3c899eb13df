"""Errors of the client library.

::

    OpenDanceAPIError          the server answered with an error: status, type, code, param, message
     ├── BadRequestError       400, 413, 422: the request is wrong (the message names the field)
     ├── AuthenticationError   401, 403: missing or wrong API key
     ├── NotFoundError         404: no such task (or another key's task)
     ├── ConflictError         409: the task is in the wrong state (cancel a finished task ...)
     ├── RateLimitError        429: too many requests or queued tasks (``retry_after`` seconds)
     └── ServerError           5xx: the server failed; retrying later may help
    TaskFailedError            ``wait()``: the task ended ``failed`` (``task``, ``code``, ``message``)
    TimeoutError               ``wait()``: the task was still running at the deadline (``task``);
                               a subclass of the built-in ``TimeoutError``

Transport problems (connection refused, DNS) are httpx's own ``httpx.TransportError``.
"""

from __future__ import annotations

import builtins
import json
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from ._models import Task


class OpenDanceAPIError(Exception):
    """An error answer of the server, in the spec's shape ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.body = body
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" ({self.param})" if self.param else ""
        code = f" {self.code}" if self.code else ""
        return f"{self.status}{code}{where}: {self.message}"


class BadRequestError(OpenDanceAPIError):
    pass


class AuthenticationError(OpenDanceAPIError):
    pass


class NotFoundError(OpenDanceAPIError):
    pass


class ConflictError(OpenDanceAPIError):
    pass


class RateLimitError(OpenDanceAPIError):
    pass


class ServerError(OpenDanceAPIError):
    pass


class TaskFailedError(Exception):
    """``wait()`` saw the task end ``failed`` (which includes cancelled and expired tasks)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.code = task.error.code if task.error else None
        self.message = task.error.message if task.error else "the task failed"
        super().__init__(f"task {task.id} failed ({task.raw_status or 'FAILED'}, {self.code}): {self.message}")


class TimeoutError(builtins.TimeoutError):
    """``wait()`` gave up: the task was still queued or running at the deadline."""

    def __init__(self, task: Task, timeout: float) -> None:
        self.task = task
        self.timeout = timeout
        super().__init__(f"task {task.id} is still {task.status} ({task.progress}%) after {timeout:g} s")


_BY_STATUS: dict[int, type[OpenDanceAPIError]] = {
    400: BadRequestError,
    413: BadRequestError,
    422: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
}


def error_from_response(response: httpx.Response) -> OpenDanceAPIError:
    """The typed error for an error response, from the spec's shape or, for other servers,
    whatever the body holds (FastAPI's ``detail``, plain text)."""
    status = response.status_code
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else OpenDanceAPIError)
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = response.text
    fields: dict[str, Any] = {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        fields = body["error"]
    elif isinstance(body, dict) and "detail" in body:
        fields = {"message": body["detail"] if isinstance(body["detail"], str) else json.dumps(body["detail"])}
    elif isinstance(body, dict) and isinstance(body.get("message"), str):
        fields = body
    message = fields.get("message") or (body.strip()[:500] if isinstance(body, str) and body.strip() else None)
    retry = response.headers.get("retry-after")
    return cls(
        str(message or f"HTTP {status} {response.reason_phrase}"),
        status=status,
        type=_str_or_none(fields.get("type")),
        code=_str_or_none(fields.get("code")),
        param=_str_or_none(fields.get("param")),
        body=body,
        retry_after=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
