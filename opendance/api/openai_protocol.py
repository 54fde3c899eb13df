"""Wire shapes of OpenAI's Videos API (``/v1/videos``) and how its words map onto ours.

``seconds`` -> ``duration``: whole seconds 5 to 15 are taken as they are; ``4`` (OpenAI's
default and shortest clip) becomes 5, our shortest, and the video object then says ``"5"``;
anything else (``16``, ``20``, ``7.5``) is a 400 naming ``seconds``.

``size`` -> resolution and aspect ratio: a size is accepted only if the model makes exactly it
(the output table of spec/api.md); there is no rescaling. ``1280x720``/``720x1280``/``960x960``
on 720p models, ``864x480``/``480x864``/``640x640`` on 480p models. With no ``model``, the first
configured model that makes the size is used. docs/openai.md has the table.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..config import ModelConfig
from ..domain import MAX_DURATION, MIN_DURATION, OUTPUT_SIZES
from ..errors import InvalidRequest
from ..store import Task
from .protocol import TaskObject

OPENAI_SHORTEST = 4  # OpenAI's shortest clip (and its default); lifted to MIN_DURATION
_SIZE = re.compile(r"^\s*([0-9]{1,5})\s*[xX]\s*([0-9]{1,5})\s*$", re.ASCII)  # ASCII digits only


class VideoError(BaseModel):
    code: str
    message: str
    type: str | None = None
    param: str | None = None


class Video(BaseModel):
    """OpenAI's ``video`` object."""

    id: str
    object: Literal["video"]
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(ge=0, le=100)
    created_at: int
    completed_at: int | None
    expires_at: int | None = Field(description="always null: videos stay until deleted or the retention ends")
    error: VideoError | None
    seconds: str = Field(description="the clip's length in whole seconds")
    size: str = Field(description="WIDTHxHEIGHT of the MP4")
    prompt: str | None
    remixed_from_video_id: str | None


class VideoOrTask(TaskObject):
    """``GET /v1/videos/{id}``: the legacy task object and the ``video`` object in one; only
    ``object`` depends on the caller (docs/openai.md)."""

    object: Literal["video", "video.generation.job"]  # type: ignore[assignment]
    error: VideoError | None  # type: ignore[assignment]
    seconds: str
    size: str
    prompt: str | None
    expires_at: int | None
    remixed_from_video_id: str | None


class VideoList(BaseModel):
    object: Literal["list"]
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"]
    deleted: bool


class CreateVideoForm(BaseModel):
    """``POST /v1/videos``: JSON, or multipart/form-data with ``input_reference`` as a file."""

    prompt: str = Field(description="what the video shows; at most 5000 characters")
    model: str | None = Field(None, description="a configured model name; default: the first that makes `size`")
    seconds: str | int | None = Field(None, description="4 (made as 5) or 5-15; default 5")
    size: str | None = Field(None, description="WIDTHxHEIGHT from the model's output table")
    input_reference: str | dict[str, str] | None = Field(
        None, description="the first frame: a file part, an http(s) URL or data: URI, or {image_url}"
    )
    seed: int | None = Field(None, description="opendance extension: the same seed gives the same video")
    negative_prompt: str | None = Field(None, description="opendance extension")


def parse_seconds(value: Any) -> int | None:
    """OpenAI's ``seconds`` (a string, or a number from JSON clients) -> our duration."""
    if value is None or value == "":
        return None
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is None or not (text.isascii() and text.isdigit()):  # not "٥" nor "５" nor "²"
        raise InvalidRequest(f"seconds must be a whole number of seconds; got {value!r}", param="seconds", code="invalid_type")
    n = int(text)
    if n == OPENAI_SHORTEST:
        return MIN_DURATION
    if not MIN_DURATION <= n <= MAX_DURATION:
        raise InvalidRequest(
            f"seconds must be {OPENAI_SHORTEST} (made as {MIN_DURATION}) or {MIN_DURATION} to {MAX_DURATION}; got {n}",
            param="seconds",
        )
    return n


def sizes_of(model: ModelConfig) -> dict[str, str]:
    """``{"1280x720": "16:9", ...}``: the sizes a model makes and their aspect ratios."""
    return {f"{w}x{h}": aspect for aspect, (w, h) in OUTPUT_SIZES[model.resolution].items()}


def resolve_size(size: Any, model: str | None, models: dict[str, ModelConfig]) -> tuple[str | None, str | None]:
    """(model name, aspect ratio) for OpenAI's ``model`` and ``size``.

    An unknown model is returned as is, for the create validator to name it.
    """
    if model is not None and not isinstance(model, str):  # {} or 0 must not pick the default model
        raise InvalidRequest(f"model must be a string, not {type(model).__name__}", param="model", code="invalid_type")
    if size is None or size == "":
        return (model or next(iter(models), None)), None
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match is None:
        raise InvalidRequest(f"size must be WIDTHxHEIGHT, e.g. 1280x720; got {size!r}", param="size", code="invalid_type")
    wanted = f"{int(match[1])}x{int(match[2])}"
    if model is not None:
        config = models.get(model)
        if config is None:
            return model, None
        aspect = sizes_of(config).get(wanted)
        if aspect is None:
            can = ", ".join(sizes_of(config))
            raise InvalidRequest(
                f"the model {model!r} cannot make {wanted}; its sizes are {can}", param="size", code="unsupported_size"
            )
        return model, aspect
    for config in models.values():
        aspect = sizes_of(config).get(wanted)
        if aspect is not None:
            return config.name, aspect
    every = sorted({s for config in models.values() for s in sizes_of(config)})
    raise InvalidRequest(
        f"no configured model makes {wanted}; the sizes made here are {', '.join(every)}", param="size", code="unsupported_size"
    )


def video_object(task: Task) -> dict[str, Any]:
    """A stored task as OpenAI's ``video`` object."""
    completed = task.raw_status.value == "COMPLETED"
    error = None
    if task.status.value == "failed":
        error = {
            "code": task.error_code or "failed",
            "message": task.error_message or "",
            "type": task.error_type or "server_error",
            "param": None,
        }
    return {
        "id": task.id,
        "object": "video",
        "model": task.model,
        "status": task.status.value,
        "progress": 100 if completed else min(task.progress, 99),
        "created_at": int(task.created_at),
        "completed_at": int(task.completed_at) if task.completed_at is not None else None,
        "expires_at": None,
        "error": error,
        "seconds": str(task.duration),
        "size": f"{task.width}x{task.height}",
        "prompt": (task.job or {}).get("prompt"),
        "remixed_from_video_id": None,
    }


def dual_object(task: Task, legacy: dict[str, Any], openai: bool) -> dict[str, Any]:
    """``GET /v1/videos/{id}``: every field of both the legacy task object and the ``video``
    object (they agree wherever they share a name), with ``object`` telling which one the
    caller asked for. So a caller put in the wrong camp still finds every field it reads."""
    return {**legacy, **video_object(task), "object": "video" if openai else legacy["object"]}
