"""Wire shapes of the legacy video task API: the create body (documented; parsed by
``validate``), the task object, lists, models and errors, and ``task_object`` which renders a
stored task exactly as spec/api.md shows it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..store import Task


class CreateVideoRequest(BaseModel):
    """``POST /v1/video/generations``. The mode follows from which inputs are given."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="a configured model name, e.g. jisudance2.0-480p")
    prompt: str | None = Field(None, max_length=5000, description="required for text-to-video")
    image: str | None = Field(None, description="first frame: http(s) URL or data:image/...;base64, URI")
    last_image: str | None = Field(None, description="last frame; only together with image")
    images: list[str] | str | None = Field(None, description="1-9 reference images")
    videos: list[str] | str | None = Field(None, description="1-3 reference videos (MP4/MOV), each 2-15 s, together <= 15 s")
    audios: list[str] | str | None = Field(None, description="1-3 reference audios (WAV/MP3/AAC/M4A), each 2-15 s, together <= 15 s")
    duration: int | str | None = Field(None, description="5-15 seconds (default 5)")
    aspect_ratio: Literal["16:9", "1:1", "9:16"] | None = Field(None, description="default 16:9 for text, else nearest to the first image")
    extra_body: dict[str, Any] | None = Field(
        None,
        description="seed, negative_prompt, generate_audio, watermark, camera_fixed, return_last_frame, callback_url",
    )


class TaskError(BaseModel):
    code: str
    message: str
    type: str


class TaskResult(BaseModel):
    outputs: list[str]
    video_url: str
    last_frame_url: str | None = None


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
        error = {"code": task.error_code or "failed", "message": task.error_message or "", "type": task.error_type or "server_error"}
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
    }
