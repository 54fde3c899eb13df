"""Checkpoints: engines keep their state in storage every K steps, and a run that starts again
continues after the last one, on the local disk and on S3, in the local runner as well."""

from __future__ import annotations

import secrets

import pytest

from opendance.domain import Mode
from opendance.engines.base import Job, StepContext
from opendance.errors import Cancelled
from opendance.media.encode import probe_mp4
from opendance.runner.checkpoints import TaskCheckpoints, checkpoint_prefix
from opendance.runner.execute import run_job, video_key
from opendance.storage import LocalStorage
from opendance.storage.s3 import S3Storage
from opendance.testing.checkpoints import PartsRead
from opendance.testing.cluster import read_runs, wait_until
from opendance.testing.scenario import ScenarioEngine
from opendance.testing.server import LiveServer


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "files")
    s3 = request.getfixturevalue("s3")
    return S3Storage(
        s3.bucket,
        prefix=f"ckpt-{secrets.token_hex(3)}/",
        endpoint_url=s3.endpoint,
        region="us-east-1",
        access_key_id=s3.access_key,
        secret_access_key=s3.secret_key,
        addressing_style="path",
    )


def test_save_load_parts_clear(storage):
    saved: list[int] = []
    ck = TaskCheckpoints(storage, "task_c1", every=3, on_saved=saved.append)
    assert ck.load() is None
    assert ck.save({"step": 3, "sigmas": [1.0, 0.5]}, 3)
    assert ck.load() == ({"step": 3, "sigmas": [1.0, 0.5]}, 3)
    latents = bytes(range(256)) * 100
    assert ck.save(latents, 6, parts={"frames-0000": b"chunk0", "frames-0001": b"chunk1"})
    assert ck.load() == (latents, 6)  # the newest state replaces the older one
    assert ck.load_part("frames-0001") == b"chunk1"
    assert saved == [3, 6]
    with pytest.raises(ValueError):
        ck.save({}, 7, parts={"../escape": b"x"})
    ck.clear()
    assert ck.load() is None and not storage.exists(checkpoint_prefix("task_c1") + "parts/frames-0000")


def test_damaged_or_disabled(storage):
    storage.put_bytes(checkpoint_prefix("task_c2") + "state", b"garbage", "application/octet-stream")
    assert TaskCheckpoints(storage, "task_c2", every=3).load() is None  # start over, do not crash
    off = TaskCheckpoints(storage, "task_c3", every=0)
    assert not off.save({"step": 1}, 1) and off.load() is None
    ctx = StepContext()
    assert ctx.checkpoint_every == 0 and not ctx.save_checkpoint({"step": 1}, 1) and ctx.load_checkpoint() is None


def job(task_id: str) -> Job:
    return Job(
        task_id=task_id,
        model="m",
        mode=Mode.TEXT_TO_VIDEO,
        prompt="p",
        width=864,
        height=480,
        fps=8,
        duration=5,
        seed=7,
        engine={"engine": "scenario"},
    )


def test_run_job_resumes_after_the_last_checkpoint(storage, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    engine = ScenarioEngine({"behaviour": "sleep", "steps": 10, "step_seconds": 0.0, "record_dir": str(records)})
    steps_done: list[int] = []

    def progress(p: int) -> None:
        steps_done.append(p)

    # First run: stopped during step 8 (a crash would stop it the same way, minus the cleanup).
    first = TaskCheckpoints(storage, "task_r1", every=3)
    cancel_after = lambda: len([r for r in read_runs(records) if r["event"] == "step"]) >= 8  # noqa: E731
    with pytest.raises(Cancelled):
        run_job(job("task_r1"), engine, storage, progress=progress, cancelled=cancel_after, checkpoints=first)
    assert first.load() == ({"step": 6}, 6)
    # Second run, a new process's view of the same storage: continues after step 6.
    second = TaskCheckpoints(storage, "task_r1", every=3)
    result = run_job(job("task_r1"), engine, storage, progress=progress, cancelled=lambda: False, checkpoints=second)
    starts = [r["step"] for r in read_runs(records) if r["event"] == "start"]
    assert starts == [0, 6]
    assert [r["step"] for r in read_runs(records) if r["event"] == "step"][8:] == [7, 8, 9, 10]
    assert second.load() is None  # dropped once the video is stored
    with storage.local_path(video_key("task_r1")) as path:
        info = probe_mp4(path)
    assert (result.video_key, info["num_frames"], info["width"]) == (video_key("task_r1"), 40, 864)


def test_local_runner_resumes_a_crashed_task(tmp_path):
    records, markers = tmp_path / "records", tmp_path / "markers"
    records.mkdir()
    markers.mkdir()
    config = tmp_path / "models.toml"
    config.write_text(f"""
[models."crashy"]
resolution = "480p"
fps = 8
[models."crashy".default]
engine = "scenario"
behaviour = "crash_once"
steps = 8
step_seconds = 0.05
marker_dir = "{markers}"
record_dir = "{records}"
""")
    with LiveServer(tmp_path / "data", config=config, env={"OPENDANCE_CHECKPOINT_EVERY": "2"}) as server, server.client() as c:
        tid = c.post("/v1/video/generations", json={"model": "crashy", "prompt": "x"}).json()["id"]
        wait_until(lambda: c.get(f"/v1/video/generations/{tid}").json()["status"] == "completed", 60, "completed")
    runs = read_runs(records)
    # The worker process died at step 4 (after the checkpoint of step 4); its successor went on from there.
    assert [r["step"] for r in runs if r["event"] == "start"] == [0, 4]
    assert len({r["pid"] for r in runs if r["event"] == "start"}) == 2


def decoded(path) -> list:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_preview_resumes_from_frame_chunks(tmp_path):
    from opendance.engines.preview import PreviewEngine

    storage = LocalStorage(tmp_path / "files")
    engine = PreviewEngine({"engine": "preview", "checkpoint_frames": 8})
    asked = iter(range(10**6))  # the engine and the encoder each ask once per frame: stop mid-way
    first = TaskCheckpoints(storage, "task_p1", every=5)
    with pytest.raises(Cancelled):
        run_job(job("task_p1"), engine, storage, progress=lambda p: None, cancelled=lambda: next(asked) >= 50, checkpoints=first)
    state, frames_done = first.load()
    assert state["kind"] == "frame-chunks" and frames_done % 8 == 0 and frames_done >= 16
    assert state["parts"] == [f"frames-{i:06d}" for i in range(0, frames_done, 8)]
    second = PartsRead(storage, "task_p1", every=5)
    run_job(job("task_p1"), engine, storage, progress=lambda p: None, cancelled=lambda: False, checkpoints=second)
    assert second.read == state["parts"]  # the resumed run took those frames from the checkpoint
    # The same video as a run that was never interrupted (same seed, same frames).
    run_job(job("task_p2"), engine, storage, progress=lambda p: None, cancelled=lambda: False)
    with storage.local_path(video_key("task_p1")) as resumed, storage.local_path(video_key("task_p2")) as straight:
        a, b = decoded(resumed), decoded(straight)
    assert len(a) == len(b) == 40
    assert all((x == y).all() for x, y in zip(a, b))
    assert first.load() is None  # dropped with the stored video


def test_workers_keep_preview_frame_chunks_unless_the_model_says():
    from opendance.runner.temporal_activity import PREVIEW_CHECKPOINT_FRAMES, with_frame_checkpoints

    job = {"task_id": "t", "engine": {"engine": "preview"}}
    assert with_frame_checkpoints(job)["engine"] == {"engine": "preview", "checkpoint_frames": PREVIEW_CHECKPOINT_FRAMES}
    assert job["engine"] == {"engine": "preview"}  # the stored job is left as it is
    off = {"task_id": "t", "engine": {"engine": "preview", "checkpoint_frames": 0}}
    assert with_frame_checkpoints(off) == off
    other = {"task_id": "t", "engine": {"engine": "scenario", "steps": 4}}
    assert with_frame_checkpoints(other) == other
