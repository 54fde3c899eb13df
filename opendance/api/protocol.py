"""Wire shapes of the legacy video task API: the create body (documented; parsed by
``validate``), the task object, lists, models and errors, and ``task_object`` which renders a
stored task exactly as spec/api.md shows it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ..domain import MAX_DURATION, MIN_DURATION
from ..engines.lora import reported
from ..store import Task
from .validate import LIMITS, MAX_PROMPT, MAX_SEED


# What ``validate`` accepts, written as JSON schema (the OpenAPI document is as strict as it).
_DURATION_TEXT = r"^\s*[+-]?[0-9]+(\.0*)?\s*$"
Duration = Annotated[
    int | str | None,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": MIN_DURATION, "maximum": MAX_DURATION},
                {"type": "string", "pattern": _DURATION_TEXT},
                {"type": "null"},
            ]
        }
    ),
]


def _urls(low: int, high: int) -> Any:
    """An array of 1..n URLs, or a bare string (one item)."""
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "string"}, "minItems": low, "maxItems": high},
                {"type": "string"},
                {"type": "null"},
            ]
        }
    )


def _maybe(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


# ``extra_body``: the known keys (a wrong type is a 400); unknown keys are kept on the task.
# Inline (no $defs), because the create body's schema is placed into the OpenAPI document by hand.
EXTRA_BODY = WithJsonSchema(
    _maybe(
        {
            "type": "object",
            "additionalProperties": True,
            "properties": {
                "seed": _maybe({"type": "integer", "minimum": -1, "maximum": MAX_SEED, "description": "-1 or absent: random"}),
                "negative_prompt": _maybe({"type": "string", "maxLength": MAX_PROMPT}),
                "generate_audio": _maybe({"type": "boolean"}),
                "watermark": _maybe({"type": "boolean"}),
                "camera_fixed": _maybe({"type": "boolean"}),
                "return_last_frame": _maybe({"type": "boolean", "description": "also store the last frame as a PNG"}),
                "callback_url": _maybe({"type": "string", "description": "http(s) URL: a POST of the task object per change"}),
                "loras": _maybe(
                    {
                        "type": "array",
                        "maxItems": 4,
                        "description": "up to 4 of the model's LoRAs (its card's loras), applied to this task only",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string"},
                                "scale": {
                                    "type": "number",
                                    "minimum": -4,
                                    "maximum": 4,
                                    "description": "default: the adapter's own",
                                },
                            },
                        },
                    }
                ),
            },
        }
    )
)


class CreateVideoRequest(BaseModel):
    """``POST /v1/video/generations``. The mode follows from which inputs are given."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="a configured model name, e.g. jisudance2.0-480p")
    prompt: str | None = Field(None, max_length=MAX_PROMPT, description="required for text-to-video")
    image: str | None = Field(None, description="first frame: http(s) URL or data:image/...;base64, URI")
    last_image: str | None = Field(None, description="last frame; only together with image")
    images: Annotated[list[str] | str | None, _urls(1, LIMITS["images"])] = Field(None, description="1-9 reference images")
    videos: Annotated[list[str] | str | None, _urls(1, LIMITS["videos"])] = Field(
        None, description="1-3 reference videos (MP4/MOV), each 2-15 s, together <= 15 s"
    )
    audios: Annotated[list[str] | str | None, _urls(1, LIMITS["audios"])] = Field(
        None, description="1-3 reference audios (WAV/MP3/AAC/M4A), each 2-15 s, together <= 15 s"
    )
    duration: Duration = Field(None, description="5-15 seconds (default 5)")
    aspect_ratio: Literal["16:9", "1:1", "9:16"] | None = Field(
        None, description="default 16:9 for text, else nearest to the first image"
    )
    extra_body: Annotated[dict[str, Any] | None, EXTRA_BODY] = Field(
        None,
        description="seed, negative_prompt, generate_audio, watermark, camera_fixed, return_last_frame, callback_url, loras",
    )


class TaskError(BaseModel):
    code: str
    message: str
    type: str


class TaskResult(BaseModel):
    outputs: list[str]
    video_url: str
    last_frame_url: str | None = None


class AppliedLora(BaseModel):
    name: str
    scale: float


class TaskObject(BaseModel):
    id: str
    task_id: str
    object: Literal["video.generation.job"]
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    raw_status: str
    progress: int = Field(ge=0, le=100)
    created_at: int
    error: TaskError | None
    result: TaskResult | None
    video_url: str | None
    mode: str
    duration: int
    aspect_ratio: str
    width: int
    height: int
    seed: int
    engine: str
    started_at: int | None
    completed_at: int | None
    extra_body: dict[str, Any]
    loras: list[AppliedLora] = Field(description="the LoRAs applied to this task (extra_body.loras), with the scale used")
    ignored_fields: list[str] = Field(description="top-level fields of the create request that are not part of the API (ignored)")


class TaskList(BaseModel):
    object: Literal["list"]
    data: list[TaskObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    resolution: str
    modes: list[str]
    loras: list[str] = Field(description="LoRA names a request may ask for with extra_body.loras")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def task_object(task: Task, video_url: str | None, last_frame_url: str | None) -> dict[str, Any]:
    """The task object of spec/api.md, plus the documented extra fields."""
    completed = task.raw_status.value == "COMPLETED"
    result = None
    if completed and video_url:
        result = {"outputs": [video_url], "video_url": video_url}
        if last_frame_url:
            result["last_frame_url"] = last_frame_url
    error = None
    if task.status.value == "failed":
        error = {
            "code": task.error_code or "failed",
            "message": task.error_message or "",
            "type": task.error_type or "server_error",
        }
    return {
        "id": task.id,
        "task_id": task.id,
        "object": "video.generation.job",
        "model": task.model,
        "status": task.status.value,
        "raw_status": task.raw_status.value,
        "progress": 100 if completed else min(task.progress, 99),
        "created_at": int(task.created_at),
        "error": error,
        "result": result,
        "video_url": video_url if completed else None,
        "mode": task.mode,
        "duration": task.duration,
        "aspect_ratio": task.aspect_ratio,
        "width": task.width,
        "height": task.height,
        "seed": task.seed,
        "engine": task.engine,
        "started_at": _ts(task.started_at),
        "completed_at": _ts(task.completed_at),
        "extra_body": task.extra_body,
        "loras": reported(task.job.get("loras") or []),
        # Unknown top-level fields of the create request: ignored, as the spec says, and said.
        "ignored_fields": list(task.ignored_fields),
    }
