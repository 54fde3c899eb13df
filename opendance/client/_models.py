"""The task object of spec/api.md as a typed, read-only value.

Only ``id`` and ``status`` are required, so that tasks of any server speaking the seed's API
parse; every field the server sent, known or not, stays in ``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TaskStatus = Literal["queued", "in_progress", "completed", "failed"]


@dataclass(frozen=True)
class TaskError:
    code: str
    message: str
    type: str | None = None


@dataclass(frozen=True)
class Task:
    """A snapshot of one video task, as the server reported it."""

    id: str
    status: TaskStatus
    progress: int = 0
    model: str | None = None
    raw_status: str | None = None
    created_at: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    error: TaskError | None = None
    video_url: str | None = None
    outputs: tuple[str, ...] = ()
    last_frame_url: str | None = None
    mode: str | None = None
    duration: int | None = None
    aspect_ratio: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    engine: str | None = None
    loras: tuple[dict[str, Any], ...] = ()  # the LoRAs applied: {"name": ..., "scale": ...}
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """True once the task is completed or failed; it never changes again."""
        return self.status in ("completed", "failed")

    @property
    def is_completed(self) -> bool:
        return self.status == "completed"

    @property
    def is_failed(self) -> bool:
        return self.status == "failed"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        result: dict[str, Any] = data["result"] if isinstance(data.get("result"), dict) else {}
        error = data.get("error")
        video_url = data.get("video_url") or result.get("video_url")
        return cls(
            id=str(data.get("id") or data.get("task_id")),
            status=data.get("status", "queued"),
            progress=int(data.get("progress") or 0),
            model=data.get("model"),
            raw_status=data.get("raw_status"),
            created_at=data.get("created_at"),
            started_at=data.get("started_at"),
            completed_at=data.get("completed_at"),
            error=TaskError(str(error.get("code") or "failed"), str(error.get("message") or ""), error.get("type"))
            if isinstance(error, dict)
            else None,
            video_url=video_url,
            outputs=tuple(result.get("outputs") or ([video_url] if video_url else [])),
            last_frame_url=result.get("last_frame_url"),
            mode=data.get("mode"),
            duration=data.get("duration"),
            aspect_ratio=data.get("aspect_ratio"),
            width=data.get("width"),
            height=data.get("height"),
            seed=data.get("seed"),
            engine=data.get("engine"),
            loras=tuple(item for item in data.get("loras") or () if isinstance(item, dict)),
            raw=dict(data),
        )
