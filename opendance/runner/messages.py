"""The few typed messages between the dispatcher and a worker process (pickled over a pipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# -- dispatcher -> worker -------------------------------------------------------------------


@dataclass
class RunJob:
    task_id: str
    job: dict[str, Any]  # Job.to_dict()


@dataclass
class CancelJob:
    task_id: str


@dataclass
class Shutdown:
    pass


# -- worker -> dispatcher -------------------------------------------------------------------


@dataclass
class Ready:
    device: str
    pid: int
    rank: int = 0  # in a device group of several ranks; 0 alone reports


@dataclass
class Progress:
    task_id: str
    progress: int  # 0..99


@dataclass
class Checkpointed:
    task_id: str
    step: int  # the engine saved its state after this many steps


@dataclass
class ModelLoaded:
    engine: str
    seconds: float
    model: str = ""  # the model name whose task loaded it
    error: str | None = None  # the load failed (tasks within retry_in seconds fail at once)
    retry_in: float | None = None


@dataclass
class Done:
    task_id: str
    video_key: str
    last_frame_key: str | None
    engine_seconds: float
    wall_seconds: float


@dataclass
class Idle:
    """A rank other than 0 finished its part of a job (``error`` when it raised): it sends no
    task events, only this, so that its group knows every rank is free again."""

    task_id: str
    rank: int
    error: str | None = None


@dataclass
class Failed:
    task_id: str
    code: str
    message: str
    cancelled: bool = False
    details: dict[str, Any] = field(default_factory=dict)


# -- what executors see, for metrics (never crosses a pipe) -------------------------------------


@dataclass
class UpstreamRequest:
    channel: str
    op: str  # create | status | cancel | download
    seconds: float
    failed: bool  # a network error, a timeout, HTTP 429 or 5xx
