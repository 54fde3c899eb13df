"""A worker killed mid-task through the real server: the local runner starts a new worker, which
resumes the task from its last checkpoint (LTX-2: video and sound latents), and the video and
its sound are the ones an uninterrupted task with the same seed makes."""

from __future__ import annotations

import os
import re
import signal
import time

import av
import numpy as np
import pytest

from opendance.testing import tiny_pipelines
from opendance.testing.server import LiveServer, wait_for_task

MODEL = "resumable-ltx2"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_folders, tiny_models):
    root = tmp_path_factory.mktemp("resume-http")
    spec = dict(tiny_models["jisudance2.0-fast-720p"]["default"], steps=200)  # the tiny LTX-2, many short steps
    extra = {MODEL: dict(resolution="480p", fps=8, default=spec)}
    config = tiny_pipelines.write_models_toml(root / "models.toml", tiny_folders, extra=extra)
    env = {"OPENDANCE_LOG_LEVEL": "info", "OPENDANCE_CHECKPOINT_EVERY": "5", "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(root / "data", config=config, env=env, startup_timeout=120) as s:
        yield s


def decoded(path) -> tuple[list[np.ndarray], np.ndarray]:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        sound = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    return frames, sound


@pytest.mark.timeout(300)
def test_killed_worker_resumes_from_its_checkpoint_with_the_same_video(server, tmp_path):
    body = {"model": MODEL, "prompt": "a drum solo", "extra_body": {"seed": 5, "generate_audio": True}}
    with server.client() as c:
        straight = c.post("/v1/video/generations", json=body).json()["id"]
        assert wait_for_task(c, straight, timeout=120)["status"] == "completed"

        (worker,) = server.worker_pids()
        resumed = c.post("/v1/video/generations", json=body).json()["id"]
        deadline = time.monotonic() + 120
        while c.get(f"/v1/video/generations/{resumed}").json()["progress"] < 20:  # about step 45 of 200
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(worker, signal.SIGKILL)
        task = wait_for_task(c, resumed, timeout=120)
        assert task["status"] == "completed", task
        assert server.worker_pids() != [worker]  # a new worker finished it

        steps = [int(n) for n in re.findall(rf"task {resumed}: resuming after step (\d+)", server.log_path.read_text())]
        assert len(steps) == 1 and steps[0] >= 5, steps  # not from the start

        videos = {}
        for tid in (straight, resumed):
            path = tmp_path / f"{tid}.mp4"
            path.write_bytes(c.get(f"/v1/video/generations/{tid}/content").content)
            videos[tid] = decoded(path)
    (frames_a, sound_a), (frames_b, sound_b) = videos[straight], videos[resumed]
    assert len(frames_a) == len(frames_b) == 40
    assert max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(frames_a, frames_b)) <= 1
    assert sound_a.shape == sound_b.shape
    np.testing.assert_allclose(sound_a, sound_b, atol=1e-3)
