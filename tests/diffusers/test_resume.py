"""Checkpoints of the diffusers engines: a job stopped inside a chunk resumes from the saved
latents and scheduler step (and the finished chunks' frames and sound), denoises only the steps
left, and makes the video (and the sound) an uninterrupted run makes.

Every case has two chunks of 4 steps and checkpoints every 2 steps; the first run is stopped
after ``stop`` steps, so the checkpoint holds step ``stop - 1`` rounded down to even."""

from __future__ import annotations

import numpy as np
import pytest

from opendance.domain import Mode
from opendance.engines.base import Inputs, Job, StepContext
from opendance.errors import Cancelled, EngineError
from opendance.runner.checkpoints import TaskCheckpoints
from opendance.storage import LocalStorage
from opendance.testing.checkpoints import PartsRead

STEPS, EVERY = 4, 2


def specs(folders):
    """Engine specs that cut 5 s at 4 native fps into two chunks."""
    ltx_like = dict(steps=STEPS, native_fps=4, dtype="float32", frames=17, overlap=9, guidance=1.0, max_area=32 * 32)
    return {
        # 13-frame chunks; the second one is made by VACE from the tail of the first.
        "wan": dict(
            engine="wan",
            checkpoint=str(folders["wan-t2v"]),
            extend_checkpoint=str(folders["wan-vace"]),
            steps=STEPS,
            native_fps=4,
            dtype="float32",
            frames=13,
            overlap=5,
            guidance=2.0,
            max_area=32 * 16,
        ),
        # Hard conditions (the image, the previous chunk's tail) re-noised at every step.
        "ltx": dict(ltx_like, engine="ltx", checkpoint=str(folders["ltx"]), image_cond_noise_scale=0.15),
        "ltx2": dict(
            ltx_like,
            engine="ltx2",
            checkpoint=str(folders["ltx2"]),
            call_kwargs={"stg_scale": 0.0, "modality_scale": 1.0, "audio_guidance_scale": 1.0},
        ),
    }


CASES = [
    # (engine, mode, stop after, saved at, chunk parts read back)
    ("wan", Mode.TEXT_TO_VIDEO, 7, 6, ["chunk-000"]),
    ("ltx", Mode.IMAGE_TO_VIDEO, 7, 6, ["chunk-000"]),  # inside the second chunk
    ("ltx", Mode.IMAGE_TO_VIDEO, 3, 2, []),  # inside the first
    ("ltx2", Mode.TEXT_TO_VIDEO, 7, 6, ["chunk-000"]),  # LTX2ConditionPipeline, video and sound
    ("ltx2", Mode.IMAGE_TO_VIDEO, 3, 2, []),  # LTX2ImageToVideoPipeline
]


@pytest.mark.parametrize(
    ("name", "mode", "stop", "saved_at", "parts"), CASES, ids=[f"{c[0]}-{c[1].value}-stop{c[2]}" for c in CASES]
)
def test_resumes_inside_a_chunk_with_the_same_result(
    name, mode, stop, saved_at, parts, tiny_folders, engines, inputs_for, tmp_path
):
    spec = specs(tiny_folders)[name]
    engine = engines(spec)
    job = Job(
        task_id="task_r1",
        model="m",
        mode=mode,
        prompt="a cat dancing",
        width=864,
        height=480,
        fps=8,
        duration=5,
        seed=11,
        engine=spec,
        options={"generate_audio": True},
    )
    inputs = inputs_for(mode)
    straight = engine.generate(job, inputs, StepContext())

    storage = LocalStorage(tmp_path / "files")
    steps: list[int] = []
    stopped = StepContext(
        progress=lambda done, total: steps.append(done),
        cancelled=lambda: len(steps) >= stop,
        checkpoints=TaskCheckpoints(storage, "task_r1", every=EVERY),
    )
    with pytest.raises(Cancelled):  # the frames pulled: a long video's later chunks run while they are
        list(engine.generate(job, inputs, stopped).frames)
    assert TaskCheckpoints(storage, "task_r1", every=EVERY).load()[1] == saved_at

    steps.clear()
    again = PartsRead(storage, "task_r1", every=EVERY)
    resumed = engine.generate(job, inputs, StepContext(progress=lambda d, t: steps.append(d), checkpoints=again))
    resumed_frames, straight_frames = list(resumed.frames), list(straight.frames)
    assert again.read == parts  # finished chunks came from the checkpoint
    assert steps == list(range(saved_at + 1, 2 * STEPS + 1))  # only the steps left were denoised
    assert len(resumed_frames) == len(straight_frames) == 40
    diff = max(int(np.abs(np.asarray(a, int) - np.asarray(b, int)).max()) for a, b in zip(resumed_frames, straight_frames))
    assert diff <= 1
    if name == "ltx2":  # the generated sound too
        assert resumed.audio is not None and straight.audio is not None
        np.testing.assert_allclose(resumed.audio.samples, straight.audio.samples, atol=1e-4)


def test_a_checkpoint_of_another_configuration_is_refused(tiny_folders, engines, inputs_for, tmp_path):
    """Latents saved at one grid cannot seed a call at another: a clear engine error, not a crash
    deep in the transformer."""
    spec = specs(tiny_folders)["ltx"]
    job = Job(
        task_id="task_r2",
        model="m",
        mode=Mode.TEXT_TO_VIDEO,
        prompt="x",
        width=864,
        height=480,
        fps=8,
        duration=5,
        seed=1,
        engine=spec,
    )
    storage = LocalStorage(tmp_path / "files")
    steps: list[int] = []
    with pytest.raises(Cancelled):
        engines(spec).generate(
            job,
            Inputs(),
            StepContext(
                progress=lambda d, t: steps.append(d),
                cancelled=lambda: len(steps) >= 3,
                checkpoints=TaskCheckpoints(storage, "task_r2", every=EVERY),
            ),
        )
    other = dict(spec, max_area=64 * 32)
    with pytest.raises(EngineError, match="another configuration"):
        engines(other).generate(job, Inputs(), StepContext(checkpoints=TaskCheckpoints(storage, "task_r2", every=EVERY)))
