"""Checkpoints of the diffusers engines: a job stopped inside a chunk resumes from the saved
latents and scheduler step (and the finished chunks' frames), denoises only the steps left, and
makes the video an uninterrupted run makes."""

from __future__ import annotations

import numpy as np
import pytest

from opendance.domain import Mode
from opendance.engines.base import Inputs, Job, StepContext
from opendance.errors import Cancelled
from opendance.runner.checkpoints import TaskCheckpoints
from opendance.storage import LocalStorage


class PartsRead(TaskCheckpoints):
    """Remembers which checkpoint parts a run read back."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.read: list[str] = []

    def load_part(self, name: str) -> bytes:
        self.read.append(name)
        return super().load_part(name)


def test_wan_resumes_inside_a_chunk_with_the_same_result(tiny_folders, engines, tmp_path):
    # Two chunks of 13 native frames (4 fps, 5 s), 4 steps each: the second one is made by VACE
    # from the tail of the first.
    spec = dict(engine="wan", checkpoint=str(tiny_folders["wan-t2v"]), extend_checkpoint=str(tiny_folders["wan-vace"]),
                steps=4, native_fps=4, dtype="float32", frames=13, overlap=5, guidance=2.0, max_area=32 * 16)
    engine = engines(spec)
    job = Job(task_id="task_w1", model="m", mode=Mode.TEXT_TO_VIDEO, prompt="a cat dancing", width=864, height=480,
              fps=8, duration=5, seed=11, engine=spec)
    straight = list(engine.generate(job, Inputs(), StepContext()).frames)

    storage = LocalStorage(tmp_path / "files")
    steps: list[int] = []
    stopped = StepContext(progress=lambda done, total: steps.append(done), cancelled=lambda: len(steps) >= 7,
                          checkpoints=TaskCheckpoints(storage, "task_w1", every=2))
    with pytest.raises(Cancelled):
        list(engine.generate(job, Inputs(), stopped).frames)
    assert TaskCheckpoints(storage, "task_w1", every=2).load()[1] == 6  # chunk 2, after its step 2 of 4

    steps.clear()
    again = PartsRead(storage, "task_w1", every=2)
    resumed = list(engine.generate(job, Inputs(), StepContext(progress=lambda d, t: steps.append(d), checkpoints=again)).frames)
    assert again.read == ["chunk-000"]  # the first chunk's frames came from the checkpoint
    assert steps == [7, 8]  # only the steps left were denoised
    assert len(resumed) == len(straight) == 40
    assert max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(resumed, straight)) <= 1
