"""Tiny real diffusers pipelines, built once per session, and helpers to run the engines on them.

The pipelines are the real classes with random weights (``opendance.testing.tiny_pipelines``),
saved to a temp folder and loaded by the engines through ``from_pretrained(path)``, exactly as a
downloaded checkpoint would be. Output fps is 8 to keep frame counts low.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from opendance.domain import OUTPUT_SIZES, Mode
from opendance.engines.base import Engine, Inputs, Job, StepContext, engine_class
from opendance.media.encode import encode_mp4, probe_mp4
from opendance.testing import media, tiny_pipelines

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    return tiny_pipelines.build_all(tmp_path_factory.mktemp("tiny-pipelines"))


@pytest.fixture(scope="session")
def tiny_models(tiny_folders) -> dict[str, dict[str, Any]]:
    return tiny_pipelines.tiny_models(tiny_folders)


def mode_spec(model: dict[str, Any], mode: Mode) -> dict[str, Any]:
    """The engine spec of one mode, as ``config.load_models`` would resolve it."""
    return {**(model.get("default") or {}), **(model.get("modes") or {}).get(mode.value, {})}


@pytest.fixture(scope="session")
def engines() -> Callable[[dict[str, Any]], Engine]:
    """``engines(spec)``: one engine per distinct spec for the whole session (as a worker keeps them)."""
    built: dict[str, Engine] = {}

    def get(spec: dict[str, Any]) -> Engine:
        key = json.dumps(spec, sort_keys=True)
        if key not in built:
            built[key] = engine_class(spec["engine"])(spec, "cpu")
        return built[key]

    yield get
    for engine in built.values():
        engine.close()


@pytest.fixture(scope="session")
def make_job(tiny_models) -> Callable[..., Job]:
    def make(
        model: str,
        mode: Mode,
        *,
        duration: int = 5,
        seed: int = 7,
        aspect: str = "16:9",
        options: dict[str, Any] | None = None,
        **spec_changes: Any,
    ) -> Job:
        config = tiny_models[model]
        width, height = OUTPUT_SIZES[config["resolution"]][aspect]
        spec = {**mode_spec(config, mode), **spec_changes}
        return Job(
            task_id="task_test",
            model=model,
            mode=mode,
            prompt="a robot dancing in the rain",
            width=width,
            height=height,
            fps=config["fps"],
            duration=duration,
            seed=seed,
            engine=spec,
            options=options or {},
        )

    return make


@pytest.fixture(scope="session")
def media_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    files = {"video": root / "ref.mp4", "video2": root / "ref2.mp4", "audio": root / "ref.wav"}
    files["video"].write_bytes(media.video_bytes(3, width=160, height=96, fps=8, seed=1))
    files["video2"].write_bytes(media.video_bytes(2, width=96, height=160, fps=8, seed=2))
    files["audio"].write_bytes(media.audio_bytes(2.5))
    return files


@pytest.fixture(scope="session")
def inputs_for(media_files) -> Callable[..., Inputs]:
    """The inputs a mode takes; omni-reference gets two images, two videos and (``audio``) an audio."""

    def make(mode: Mode, *, audio: bool = True) -> Inputs:
        if mode == Mode.TEXT_TO_VIDEO:
            return Inputs()
        if mode == Mode.IMAGE_TO_VIDEO:
            return Inputs(image=media.gradient_image(320, 240, seed=1))
        if mode == Mode.FIRST_AND_LAST_FRAME:
            return Inputs(image=media.gradient_image(320, 240, seed=1), last_image=media.gradient_image(240, 240, seed=2))
        return Inputs(
            images=[media.gradient_image(200, 200, seed=3), media.gradient_image(300, 160, seed=4)],
            videos=[media_files["video"], media_files["video2"]],
            audios=[media_files["audio"]] if audio else [],
        )

    return make


class Run:
    """One generation: the frames the engine gave, every progress call, the sound, and the MP4."""

    def __init__(self, engine: Engine, job: Job, inputs: Inputs, *, cancel_after: int | None = None) -> None:
        self.steps: list[tuple[int, int]] = []
        ctx = StepContext(
            progress=lambda done, total: self.steps.append((done, total)),
            cancelled=lambda: cancel_after is not None and len(self.steps) >= cancel_after,
        )
        self.job = job
        self.output = engine.generate(job, inputs, ctx)
        self.frames = [np.asarray(f) for f in self.output.frames]
        self.output.frames = self.frames

    def encode(self, path: Path) -> dict[str, Any]:
        encode_mp4(self.output, path, width=self.job.width, height=self.job.height, num_frames=self.job.num_frames)
        return probe_mp4(path)


@pytest.fixture(scope="session")
def run() -> type[Run]:
    return Run


def assert_mp4(info: dict[str, Any], job: Job, *, audio: bool) -> None:
    """The spec's output: exact size, exact duration and frame count, H.264, AAC only with sound."""
    assert (info["width"], info["height"]) == (job.width, job.height)
    assert info["num_frames"] == job.num_frames == job.duration * job.fps
    assert abs(info["duration"] - job.duration) < 1e-6
    assert info["video_codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    if audio:
        assert info["audio_codec"] == "aac" and abs(info["audio_duration"] - job.duration) <= 0.05
    else:
        assert info["audio_codec"] is None


def assert_progress(steps: list[tuple[int, int]], total: int) -> None:
    """One call per denoising step, counting up to ``total`` across all chunks."""
    assert steps == [(i, total) for i in range(1, total + 1)]


class DecodeCounter:
    """Counts forward calls of VAE decoders (a real torch hook, no patching)."""

    def __init__(self, *modules: torch.nn.Module) -> None:
        self.calls = 0
        self.handles = [m.register_forward_pre_hook(self._count) for m in modules]

    def _count(self, module, args) -> None:
        self.calls += 1

    def __enter__(self) -> DecodeCounter:
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="session")
def decode_counter() -> type[DecodeCounter]:
    return DecodeCounter


@pytest.fixture(scope="session")
def checks() -> Any:
    class Checks:
        mp4 = staticmethod(assert_mp4)
        progress = staticmethod(assert_progress)

    return Checks
