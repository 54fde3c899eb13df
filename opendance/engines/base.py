"""The engine interface: one resolved job in, frames (+ audio) out.

A ``Job`` is plain data (it is stored with the task and crosses process boundaries). The worker
turns its stored media references into ``Inputs`` (decoded images, local video/audio files) and
calls ``engine.generate(job, inputs, ctx)``. The engine reports progress through ``ctx`` after
every step and calls ``ctx.check_cancelled()`` between steps, which raises ``Cancelled``.

An ``Output`` holds exactly ``job.num_frames`` RGB frames of ``job.width`` x ``job.height``
(uint8, H x W x 3), as a sequence or an iterator (so long videos stream into the encoder), and
optional audio. ``media.encode`` checks both and writes the MP4. When the frames go straight to
the encoder (``ctx.yuv420``), an engine that draws its own frames may give ``media.yuv.Yuv420``
frames instead (the planes libx264 encodes), which saves it an RGB frame and the encoder a
colour conversion.
"""

from __future__ import annotations

import copy
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from ..domain import Mode
from ..errors import Cancelled
from ..media.yuv import Yuv420


@dataclass
class MediaRef:
    """One input stored at create time: where its bytes are and what probing found."""

    key: str  # storage key of the original bytes
    kind: str  # "image" | "video" | "audio"
    width: int | None = None
    height: int | None = None
    duration: float | None = None  # seconds (video, audio)
    has_audio: bool = False  # a video with a sound track
    format: str | None = None  # "png", "jpeg", "mp4", "mov", "wav", "mp3", ...


@dataclass
class Job:
    task_id: str
    model: str
    mode: Mode
    prompt: str
    width: int
    height: int
    fps: int
    duration: int  # seconds of output
    seed: int  # 0..4294967295, already resolved (never -1 here)
    engine: dict[str, Any]  # the model's EngineSpec for this mode (engine + options)
    negative_prompt: str = ""
    image: MediaRef | None = None
    last_image: MediaRef | None = None
    images: list[MediaRef] = field(default_factory=list)
    videos: list[MediaRef] = field(default_factory=list)
    audios: list[MediaRef] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # generate_audio, watermark, camera_fixed ...
    input_bytes: int = 0  # bytes of the stored inputs (counted for the per-key cap on stored inputs)
    loras: list[dict[str, Any]] = field(default_factory=list)  # extra_body.loras resolved (engines/lora.py job_lora)

    @property
    def num_frames(self) -> int:
        return self.duration * self.fps

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON values (what the task row stores), sharing nothing mutable with it:
        ``dataclasses.asdict`` field by field, without its generic recursion (a third of the
        CPU time of a create once the rest was made cheap)."""
        d = {name: getattr(self, name) for name in _JOB_FIELDS}
        d["mode"] = self.mode.value
        for name in ("engine", "options", "loras"):
            d[name] = _copied(d[name])
        for one in ("image", "last_image"):
            if d[one] is not None:
                d[one] = asdict(d[one])
        for many in ("images", "videos", "audios"):
            d[many] = [asdict(m) for m in d[many]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        d = dict(d)
        d["mode"] = Mode(d["mode"])
        for one in ("image", "last_image"):
            if d.get(one) is not None:
                d[one] = MediaRef(**d[one])
        for many in ("images", "videos", "audios"):
            d[many] = [MediaRef(**m) for m in d.get(many) or []]
        return cls(**d)


_JOB_FIELDS = tuple(f.name for f in fields(Job))


def _copied(value: Any) -> Any:
    """A copy of a JSON-like value (what a job's engine options, request options and LoRAs are:
    from TOML and JSON) sharing no dict or list with it; anything else is kept as it is, as
    ``copy.deepcopy`` keeps immutable values (a third of its time: its memo and dispatch)."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return copy.deepcopy(value)


@dataclass
class Inputs:
    """A job's media, ready to use: images decoded (RGB, EXIF-rotated), videos/audios as local files."""

    image: Any = None  # PIL.Image.Image
    last_image: Any = None
    images: list[Any] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    audios: list[Path] = field(default_factory=list)


@dataclass
class Audio:
    samples: np.ndarray  # float32, shape (channels, n), values in [-1, 1]
    sample_rate: int


@dataclass
class Output:
    frames: Iterable[np.ndarray | Yuv420]  # exactly job.num_frames frames, uint8 H x W x 3 (or Yuv420, see above)
    fps: int
    audio: Audio | None = None
    # Flat computer graphics (colour fields, text), not pictures of the world: the encoder
    # searches fewer block shapes on them (see media.encode.GRAPHICS_OPTIONS).
    graphics: bool = False


class Checkpoints(Protocol):
    """Where a task's checkpoints live (``runner.checkpoints.TaskCheckpoints`` in storage)."""

    every: int

    def save(self, state: bytes | dict[str, Any], step: int, parts: dict[str, bytes] | None = None) -> bool: ...

    def load(self) -> tuple[bytes | dict[str, Any], int] | None: ...

    def load_part(self, name: str) -> bytes: ...


class StepContext:
    """What an engine may call while it works: progress, cancellation, checkpoints.

    Checkpoints let a task that runs again (a worker died; the scale-out runner retried it
    elsewhere) continue instead of starting over. An engine that supports them calls
    ``load_checkpoint()`` before its first step and resumes after the step it returns, then
    ``save_checkpoint(state, step)`` whenever ``step % checkpoint_every == 0``. ``state`` is
    bytes (e.g. ``torch.save`` of the latents) or a JSON-able dict; ``parts`` are extra
    write-once blobs (``load_checkpoint_part(name)`` reads one back). Without a checkpoint store
    ``checkpoint_every`` is 0, saving does nothing and loading finds nothing.

    ``yuv420`` says that whoever takes the frames (the MP4 encoder) also takes ``Yuv420`` frames;
    RGB frames are always accepted, so an engine may ignore it.
    """

    def __init__(
        self,
        progress: Callable[[int, int], None] = lambda done, total: None,
        cancelled: Callable[[], bool] = lambda: False,
        checkpoints: Checkpoints | None = None,
        yuv420: bool = False,
    ) -> None:
        self._progress = progress
        self._cancelled = cancelled
        self._checkpoints = checkpoints
        self.yuv420 = yuv420

    @property
    def checkpoint_every(self) -> int:
        return self._checkpoints.every if self._checkpoints is not None else 0

    def save_checkpoint(self, state: bytes | dict[str, Any], step: int, parts: dict[str, bytes] | None = None) -> bool:
        """Keep ``state`` as reached after ``step`` steps; True when it was stored."""
        return (
            self._checkpoints.save(state, step, parts) if self._checkpoints is not None and self.checkpoint_every > 0 else False
        )

    def load_checkpoint(self) -> tuple[bytes | dict[str, Any], int] | None:
        """The last saved (state, step) of this task, or None: start from the beginning."""
        return self._checkpoints.load() if self._checkpoints is not None else None

    def load_checkpoint_part(self, name: str) -> bytes:
        if self._checkpoints is None:
            raise FileNotFoundError(name)
        return self._checkpoints.load_part(name)

    def progress(self, done: int, total: int) -> None:
        """``done`` of ``total`` steps are finished (across all chunks of the job)."""
        self._progress(done, total)

    def check_cancelled(self) -> None:
        if self._cancelled():
            raise Cancelled()


class Engine(ABC):
    """Makes videos for one (model, mode) configuration. Built once per worker and kept."""

    name: ClassVar[str]

    def __init__(self, spec: dict[str, Any], device: str = "cpu") -> None:
        self.spec = spec
        self.device = device

    @abstractmethod
    def generate(self, job: Job, inputs: Inputs, ctx: StepContext) -> Output: ...

    def close(self) -> None:  # noqa: B027 (optional: most engines hold nothing)
        """Free what the engine holds (GPU memory)."""


REGISTRY: dict[str, str] = {
    "preview": "opendance.engines.preview:PreviewEngine",
    "scenario": "opendance.testing.scenario:ScenarioEngine",
    "wan": "opendance.engines.wan:WanEngine",
    "ltx": "opendance.engines.ltx:LTXEngine",
    "ltx2": "opendance.engines.ltx2:LTX2Engine",
    "relay": "opendance.engines.relay:RelayEngine",
}


def engine_class(name: str) -> type[Engine]:
    """Resolve a short engine name or a ``module:Class`` path."""
    target = REGISTRY.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown engine {name!r}; one of {sorted(REGISTRY)} or 'package.module:Class'")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
