"""Wire shapes of the Ark-native API (BytePlus ModelArk / Volcengine Ark's content-generation
tasks, ``/api/v3/contents/generations/tasks``), as the official ``volcengine-ark-runtime`` SDK
sends and reads them: the create body (documented; translated by ``ark_serving``), the task,
the list, and Ark's error body. docs/ark.md has every field and what differs from Ark.

Ark's error body has the same four keys as ours, in Ark's words: ``code`` is one of Ark's
codes (``InvalidParameter``, ``MissingParameter``, ``AuthenticationError``, ...) and ``type``
a word for the HTTP status (``BadRequest``, ``Unauthorized``, ...). The SDK raises its own
error class per status (``ArkBadRequestError`` for a 400 ...) with this body.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..domain import OUTPUT_SIZES, RawStatus
from ..store import Task

PREFIX = "/api/v3"
TASKS = PREFIX + "/contents/generations/tasks"

STATUS = {
    RawStatus.QUEUED: "queued",
    RawStatus.RUNNING: "running",
    RawStatus.COMPLETED: "succeeded",
    RawStatus.FAILED: "failed",
    RawStatus.CANCELLED: "cancelled",
    RawStatus.EXPIRED: "expired",
}
RAW_STATUS = {word: raw for raw, word in STATUS.items()}
RATIOS = ("16:9", "1:1", "9:16", "adaptive")
DEFAULT_EXPIRES_AFTER = 172800  # Ark's default execution_expires_after (48 h)
TOKEN_PIXELS = 1024  # Ark's video tokens: width x height x fps x seconds / 1024


class MediaUrl(BaseModel):
    url: str = Field(description="http(s) URL or data: URI")


class ContentItem(BaseModel):
    """One ``content`` item: ``text``, or ``image_url`` / ``video_url`` / ``audio_url`` with a role."""

    type: Literal["text", "image_url", "video_url", "audio_url"]
    text: str | None = Field(None, description="the prompt (type text; at most one text item)")
    image_url: MediaUrl | None = None
    video_url: MediaUrl | None = None
    audio_url: MediaUrl | None = None
    role: Literal["first_frame", "last_frame", "reference_image", "reference_video", "reference_audio"] | None = Field(
        None, description="an image without a role is the first frame"
    )


class CreateTaskRequest(BaseModel):
    """``POST /api/v3/contents/generations/tasks``. ``null`` means absent (the SDK sends every
    field it knows, most as ``null``)."""

    model_config = ConfigDict(extra="allow")

    model: str
    content: list[ContentItem]
    resolution: str | None = Field(None, description="the model's own resolution (480p or 720p), or omitted")
    ratio: Literal["16:9", "1:1", "9:16", "adaptive"] | None = Field(None, description="default adaptive")
    duration: int | None = Field(None, description="5-15 seconds, or -1 for the model's default (5)")
    seed: int | None = Field(None, description="-1 to 4294967295; -1 or absent: random")
    camera_fixed: bool | None = None
    watermark: bool | None = Field(None, description="default false")
    generate_audio: bool | None = Field(None, description="default true, as on Ark")
    return_last_frame: bool | None = None
    callback_url: str | None = Field(None, description="gets a POST of the task (this shape) on every status change")
    service_tier: Literal["default", "flex"] | None = None
    execution_expires_after: int | None = Field(
        None, description="seconds after creation when a task not finished is expired (1 to 259200; default 172800)"
    )
    safety_identifier: str | None = Field(None, description="kept with the task and shown back")


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its nested models written in place: an operation's
    ``openapi_extra`` cannot point into pydantic's ``$defs`` (ReDoc refuses such a document)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


class TaskId(BaseModel):
    id: str


class TaskContent(BaseModel):
    video_url: str
    last_frame_url: str | None = None


class Usage(BaseModel):
    completion_tokens: int = Field(description="width x height x fps x seconds / 1024, once succeeded; else 0")
    total_tokens: int


class TaskError(BaseModel):
    code: str
    message: str


class ArkTask(BaseModel):
    id: str
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
    error: TaskError | None
    content: TaskContent | None
    usage: Usage
    created_at: int
    updated_at: int
    seed: int
    resolution: str
    ratio: str
    duration: int
    framespersecond: int
    service_tier: str
    execution_expires_after: int | None
    generate_audio: bool
    draft: bool
    safety_identifier: str | None = None


class ArkTaskList(BaseModel):
    total: int
    items: list[ArkTask]


class ArkErrorBody(BaseModel):
    code: str
    message: str
    param: str | None
    type: str


class ArkErrorResponse(BaseModel):
    error: ArkErrorBody


def resolution_of(task: Task) -> str:
    for resolution, sizes in OUTPUT_SIZES.items():
        if (task.width, task.height) in sizes.values():
            return resolution
    return f"{min(task.width, task.height)}p"


def completion_tokens(task: Task) -> int:
    if task.raw_status is not RawStatus.COMPLETED:
        return 0
    return task.width * task.height * task.fps * task.duration // TOKEN_PIXELS


def ark_task(task: Task, video_url: str | None, last_frame_url: str | None) -> dict[str, Any]:
    """A stored task (made through any route) in Ark's shape."""
    extra = task.extra_body or {}
    succeeded = task.raw_status is RawStatus.COMPLETED
    error = None
    if task.raw_status.is_terminal() and not succeeded:
        error = {"code": task.error_code or "failed", "message": task.error_message or ""}
    content = None
    if succeeded and video_url:
        content = {"video_url": video_url}
        if last_frame_url:
            content["last_frame_url"] = last_frame_url
    tokens = completion_tokens(task)
    expires_after = round(task.expires_at - task.created_at) if task.expires_at is not None else None
    return {
        "id": task.id,
        "model": task.model,
        "status": STATUS[task.raw_status],
        "error": error,
        "content": content,
        "usage": {"completion_tokens": tokens, "total_tokens": tokens},
        "created_at": int(task.created_at),
        "updated_at": int(task.updated_at),
        "seed": task.seed,
        "resolution": resolution_of(task),
        "ratio": task.aspect_ratio,
        "duration": task.duration,
        "framespersecond": task.fps,
        "service_tier": extra.get("service_tier") or "default",
        "execution_expires_after": expires_after,
        "generate_audio": bool(extra.get("generate_audio", False)),
        "draft": False,
        "safety_identifier": extra.get("safety_identifier"),
    }


# Our error code -> Ark's, where a finer one than the status's exists.
_CODES = {
    "missing_field": "MissingParameter",
    "model_not_found": "InvalidEndpointOrModel.NotFound",
    "task_not_found": "ResourceNotFound",
    "quota_exceeded": "QuotaExceeded",
    "rate_limited": "RateLimitExceeded",
    "too_many_queued_tasks": "RateLimitExceeded",
    "queue_full": "ServerOverloaded",
}
# HTTP status -> (Ark's code for it, Ark's type word)
_STATUSES = {
    400: ("InvalidParameter", "BadRequest"),
    401: ("AuthenticationError", "Unauthorized"),
    403: ("AccessDenied", "Forbidden"),
    404: ("NotFound", "NotFound"),
    405: ("MethodNotAllowed", "MethodNotAllowed"),
    409: ("Conflict", "Conflict"),
    413: ("RequestEntityTooLarge", "RequestEntityTooLarge"),
    429: ("RateLimitExceeded", "TooManyRequests"),
    503: ("ServiceUnavailable", "ServiceUnavailable"),
}


def ark_error(status: int, error: dict[str, Any]) -> dict[str, Any]:
    """Our ``{"error": {...}}`` body in Ark's words (the message and param stay ours)."""
    code, kind = _STATUSES.get(status, ("InternalServiceError", "InternalServerError"))
    return {
        "error": {
            "code": _CODES.get(error.get("code") or "", code),
            "message": error.get("message") or "",
            "param": error.get("param"),
            "type": kind,
        }
    }
