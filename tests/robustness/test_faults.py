"""Faults, made for real: a write that fails, a disk that is full, a worker process killed.

Each must fail only the task it hits (``failed`` with a clear error) or, at create time, be a
503 that leaves nothing behind, while the server keeps serving; a killed worker is restarted
and its task run again.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from opendance.testing import media
from opendance.testing.disk import fill, small_tmpfs
from opendance.testing.server import LiveServer, wait_for_task

CONFIG = """
[models."quick"]
resolution = "480p"
fps = 8
[models."quick".default]
engine = "scenario"
behaviour = "sleep"
steps = 2
step_seconds = 0.01

[models."slow"]
resolution = "480p"
fps = 8
[models."slow".default]
engine = "scenario"
behaviour = "sleep"
steps = 60
step_seconds = 0.1
"""
QUICK = {"model": "quick", "prompt": "x"}


def config_file(root: Path) -> Path:
    path = root / "models.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    with LiveServer(root / "data", config=config_file(root), env={"OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}) as server:
        yield server


def assert_serving(c: httpx.Client) -> None:
    """A fresh task completes and the server says it is ready."""
    task = wait_for_task(c, c.post("/v1/video/generations", json=QUICK).json()["id"], timeout=60)
    assert task["status"] == "completed", task
    assert c.get("/readyz").status_code == 200


def partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith((".part-", "job-"))]


@pytest.mark.timeout(120)
def test_a_failing_output_write_fails_that_task_only(faulty):
    """The worker's scratch folder is replaced by a file: encoding cannot write its MP4."""
    with faulty.client() as c:
        assert_serving(c)  # the worker is up and has made its scratch folder
    scratch = faulty.data_dir / "tmp"
    shutil.rmtree(scratch)
    scratch.write_bytes(b"not a folder")
    try:
        with faulty.client() as c:
            task = wait_for_task(c, c.post("/v1/video/generations", json=QUICK).json()["id"], timeout=60)
            assert (task["status"], task["raw_status"], task["error"]["code"]) == ("failed", "FAILED", "storage_error"), task
            assert task["error"]["message"] in (
                "the video could not be stored: File exists",  # the folder cannot be made
                "the video could not be stored: Not a directory",  # nothing can be made in it
            )
            assert c.get("/healthz").status_code == 200 and c.get(f"/v1/video/generations/{task['id']}").status_code == 200
            # A worker restarted while the folder is broken must not die at birth over and over
            # (leaving tasks queued for ever): it starts, and fails each task the same way.
            (old,) = faulty.worker_pids()
            os.kill(old, signal.SIGKILL)
            task = wait_for_task(c, c.post("/v1/video/generations", json=QUICK).json()["id"], timeout=60)
            assert (task["status"], task["error"]["code"]) == ("failed", "storage_error"), task
            assert faulty.worker_pids() != [old]
    finally:
        scratch.unlink()
        scratch.mkdir()
    with faulty.client() as c:
        assert_serving(c)
    assert partial_files(faulty.data_dir) == []


@pytest.mark.timeout(120)
def test_a_failing_input_write_is_a_503_and_leaves_nothing(faulty, find_leftovers):
    """Stored inputs cannot be written (their folder is a file): 503, no task, nothing on disk."""
    tasks_dir = faulty.data_dir / "files" / "tasks"
    aside = tasks_dir.with_name("tasks-aside")
    tasks_dir.rename(aside)
    tasks_dir.write_bytes(b"not a folder")
    try:
        with faulty.client() as c:
            before = c.get("/v1/video/generations", params={"limit": 100}).json()["data"]
            image = media.data_uri(media.image_bytes(320, 240), "image/png")
            r = c.post("/v1/video/generations", json={"model": "quick", "image": image})
            assert r.status_code == 503, r.text
            assert (
                r.json()["error"]["code"] == "storage_error"
                and "could not store this task's inputs" in r.json()["error"]["message"]
            )
            assert int(r.headers["Retry-After"]) > 0
            assert c.get("/v1/video/generations", params={"limit": 100}).json()["data"] == before
    finally:
        tasks_dir.unlink()
        aside.rename(tasks_dir)
    with faulty.client() as c:
        assert_serving(c)


@pytest.mark.timeout(120)
def test_a_killed_worker_is_restarted_and_its_task_run_again(faulty):
    (old,) = faulty.worker_pids()
    with faulty.client() as c:
        tid = c.post("/v1/video/generations", json={"model": "slow", "prompt": "x"}).json()["id"]
        deadline = time.monotonic() + 60
        while c.get(f"/v1/video/generations/{tid}").json()["progress"] < 10:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(old, signal.SIGKILL)  # as the OOM killer would
        task = wait_for_task(c, tid, timeout=60)
        assert task["status"] == "completed", task
        assert c.get("/readyz").json()["checks"]["runner"]["workers_alive"] == 1
        assert_serving(c)
    (new,) = faulty.worker_pids()
    assert new != old
    with sqlite3.connect(f"file:{faulty.data_dir / 'opendance.db'}?mode=ro", uri=True) as conn:
        (attempts,) = conn.execute("select attempts from tasks where id = ?", (tid,)).fetchone()
    assert attempts == 2  # run once, killed, run again: never twice at once, never lost


@pytest.mark.timeout(180)
def test_a_full_disk_fails_the_task_and_the_server_keeps_serving(tmp_path):
    """Videos on a 32 MiB tmpfs, filled to the last byte; the database lives elsewhere."""
    with small_tmpfs(tmp_path / "disk", "32m") as disk:
        server = LiveServer(
            disk / "data",
            config=config_file(tmp_path),
            env={
                "OPENDANCE_DATABASE_URL": f"sqlite:///{tmp_path / 'opendance.db'}",
                "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0",
            },
        )
        server.log_path = tmp_path / "server.log"  # the log must not need the full disk
        with server:
            fill(disk / "filler")
            with server.client() as c:
                task = wait_for_task(c, c.post("/v1/video/generations", json=QUICK).json()["id"], timeout=60)
                assert (task["status"], task["error"]["code"]) == ("failed", "storage_error"), task
                assert task["error"]["message"] == "the video could not be stored: No space left on device"
                assert c.get("/readyz").status_code == 503  # honest: storage cannot take writes now
                assert c.get("/healthz").status_code == 200 and c.get("/v1/models").status_code == 200
                (disk / "filler").unlink()
                assert_serving(c)
            assert partial_files(disk) == []
