"""Shared helpers for engine tests: build jobs, render them to MP4, read frames back, compare.

Helpers are fixtures (pytest runs with ``--import-mode=importlib``, so test files do not
import each other).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from opendance.domain import Mode
from opendance.engines.base import Inputs, Job, MediaRef, StepContext
from opendance.engines.preview import PreviewEngine
from opendance.media.encode import EncodeInfo, encode_mp4
from opendance.testing.media import audio_bytes, video_bytes


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture
def psnr() -> Callable[[np.ndarray, np.ndarray], float]:
    return _psnr


@pytest.fixture
def make_job() -> Callable[..., Job]:
    """``make_job(mode, width=864, height=480, duration=5, fps=24, seed=7, prompt=..., **options)``."""

    def make(
        mode: Mode,
        *,
        width: int = 864,
        height: int = 480,
        duration: int = 5,
        fps: int = 24,
        seed: int = 7,
        prompt: str = "A red fox trots through fresh snow at dawn, steam rising from its breath",
        videos: list[MediaRef] | None = None,
        **options: Any,
    ) -> Job:
        return Job(
            task_id="task_test",
            model="jisudance2.0-480p",
            mode=mode,
            prompt=prompt,
            width=width,
            height=height,
            fps=fps,
            duration=duration,
            seed=seed,
            engine={"engine": "preview"},
            videos=videos or [],
            options=options,
        )

    return make


@pytest.fixture
def engine() -> PreviewEngine:
    return PreviewEngine({"engine": "preview"})


@pytest.fixture
def render(engine: PreviewEngine, tmp_path: Path) -> Callable[..., tuple[Path, EncodeInfo]]:
    """Generate ``job`` and encode it to an MP4 in ``tmp_path``; returns (path, EncodeInfo)."""
    counter = iter(range(1_000_000))

    def run(job: Job, inputs: Inputs | None = None, ctx: StepContext | None = None) -> tuple[Path, EncodeInfo]:
        out = engine.generate(job, inputs or Inputs(), ctx or StepContext())
        path = tmp_path / f"out{next(counter)}.mp4"
        info = encode_mp4(out, path, width=job.width, height=job.height, num_frames=job.num_frames)
        return path, info

    return run


@pytest.fixture
def decoded() -> Callable[[Path], list[np.ndarray]]:
    """Every frame of an MP4 as RGB uint8 (converted with the colourspace the file is tagged with)."""

    def read(path: Path) -> list[np.ndarray]:
        import av

        with av.open(str(path)) as c:
            return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

    return read


@pytest.fixture
def media_files(tmp_path: Path) -> Callable[..., list[Path]]:
    """``media_files("video", [5, 5, 5])`` writes reference files of those lengths (seconds)."""

    def write(kind: str, durations: list[float], **kw: Any) -> list[Path]:
        paths = []
        for i, d in enumerate(durations):
            if kind == "video":
                p = tmp_path / f"ref{i}_{d}.mp4"
                p.write_bytes(video_bytes(d, seed=10 + i, **kw))
            else:
                p = tmp_path / f"ref{i}_{d}.wav"
                p.write_bytes(audio_bytes(d, freq=220.0 * (i + 1), **kw))
            paths.append(p)
        return paths

    return write
