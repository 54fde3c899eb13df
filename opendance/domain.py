"""Words of the API that every layer shares: modes, the task lifecycle, output sizes."""

from __future__ import annotations

import enum
import secrets


class Mode(str, enum.Enum):
    TEXT_TO_VIDEO = "text-to-video"
    IMAGE_TO_VIDEO = "image-to-video"
    FIRST_AND_LAST_FRAME = "first-and-last-frame"
    OMNI_REFERENCE = "omni-reference"


class Status(str, enum.Enum):
    """The public lifecycle. ``raw_status`` is finer (``RawStatus``)."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"

    def is_terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED)


class RawStatus(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"

    @property
    def status(self) -> Status:
        return {
            RawStatus.QUEUED: Status.QUEUED,
            RawStatus.RUNNING: Status.IN_PROGRESS,
            RawStatus.COMPLETED: Status.COMPLETED,
        }.get(self, Status.FAILED)

    def is_terminal(self) -> bool:
        return self.status.is_terminal()


# The raw statuses of a task not yet finished (queued, or running): what a runner takes up again,
# what the queue caps count, where progress may still move.
UNFINISHED = (RawStatus.QUEUED.value, RawStatus.RUNNING.value)


# Legal moves of the lifecycle. RUNNING -> RUNNING is a re-run after a crash or restart.
TRANSITIONS: dict[RawStatus, set[RawStatus]] = {
    RawStatus.QUEUED: {RawStatus.RUNNING, RawStatus.CANCELLED, RawStatus.EXPIRED, RawStatus.FAILED},
    RawStatus.RUNNING: {
        RawStatus.RUNNING,
        RawStatus.COMPLETED,
        RawStatus.FAILED,
        RawStatus.CANCELLED,
        RawStatus.EXPIRED,
    },
    RawStatus.COMPLETED: set(),
    RawStatus.FAILED: set(),
    RawStatus.CANCELLED: set(),
    RawStatus.EXPIRED: set(),
}


class IllegalTransition(RuntimeError):
    pass


ASPECT_RATIOS = ("16:9", "1:1", "9:16")

# The spec's output table: resolution -> aspect ratio -> (width, height).
OUTPUT_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "480p": {"16:9": (864, 480), "1:1": (640, 640), "9:16": (480, 864)},
    "720p": {"16:9": (1280, 720), "1:1": (960, 960), "9:16": (720, 1280)},
}

MIN_DURATION, MAX_DURATION, DEFAULT_DURATION = 5, 15, 5


def new_task_id() -> str:
    """``task_`` + 32 random URL-safe characters (192 bits)."""
    # 24 random bytes in base64url: 32 characters of A-Z, a-z, 0-9, "-" and "_", uniformly (one
    # getrandom call; 32 calls of secrets.choice were an eighth of a create's time).
    return "task_" + secrets.token_urlsafe(24)


def nearest_aspect_ratio(width: int, height: int) -> str:
    """The one of the three ratios nearest to ``width/height`` (compared on a log scale)."""
    import math

    r = math.log(width / height)
    return min(ASPECT_RATIOS, key=lambda a: abs(r - math.log(_ratio(a))))


def _ratio(aspect: str) -> float:
    w, h = aspect.split(":")
    return int(w) / int(h)
