"""A disk that fills while tasks run, with SQLite on it too (issue 10, item 2).

The running task's video cannot be stored, nor can its failure be written: the write is tried
again until it is stored, so the task never stays RUNNING with nobody running it; the task queued
behind it waits (its start is retried too) instead of being dropped; ``/readyz`` says the store
cannot write; a create or a cancel is a 503 ``storage_error``. Once there is room again the failure is
stored, the queued task runs, and new tasks run: the dispatcher never stopped.

The disk is a real 32 MiB tmpfs filled to the last byte (mounting needs root; skipped without).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from opendance.testing.disk import fill, small_tmpfs
from opendance.testing.server import LiveServer, wait_for_task

CONFIG = """
[models."slow"]
resolution = "480p"
fps = 8
[models."slow".default]
engine = "scenario"
behaviour = "sleep"
steps = 30
step_seconds = 0.1

[models."quick"]
resolution = "480p"
fps = 8
[models."quick".default]
engine = "scenario"
behaviour = "sleep"
steps = 2
step_seconds = 0.01
"""


def until(what, timeout: float = 120.0, poll: float = 0.1):
    """Wait for ``what()`` to be truthy (a wait, not a timed assertion: the bound is generous)."""
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, f"still not so after {timeout}s"
        time.sleep(poll)
    return value


def status(c: httpx.Client, task_id: str) -> dict:
    return c.get(f"/v1/video/generations/{task_id}").json()


@pytest.mark.timeout(300)
def test_a_disk_that_fills_while_tasks_run_loses_no_task_and_stops_no_dispatching(tmp_path: Path, error_body):
    config = tmp_path / "models.toml"
    config.write_text(CONFIG)
    with small_tmpfs(tmp_path / "disk", "32m") as disk:
        env = {"OPENDANCE_RATE_LIMIT_PER_MINUTE": "0", "OPENDANCE_CPU_SLOTS": "1"}  # one slot: the second task queues
        server = LiveServer(disk / "data", config=config, env=env)
        server.log_path = tmp_path / "server.log"  # the log must not need the full disk
        with server, server.client() as c:
            running = c.post("/v1/video/generations", json={"model": "slow", "prompt": "a"}).json()["id"]
            until(lambda: status(c, running)["progress"] > 0)
            queued = c.post("/v1/video/generations", json={"model": "quick", "prompt": "b"}).json()["id"]
            fill(disk / "filler")

            # The run ends (its video cannot be stored), and its failure cannot be written either.
            until(lambda: f"task {running}: storage error" in server.log_path.read_text())  # the worker's answer
            assert status(c, running)["status"] == "in_progress"  # as stored; its write is being retried
            assert status(c, queued)["status"] == "queued"
            ready = until(lambda: (r := c.get("/readyz")).status_code == 503 and r)
            assert ready.json()["checks"]["store_writable"].startswith("failed"), ready.json()
            r = c.post("/v1/video/generations", json={"model": "quick", "prompt": "text only " + "x" * 4000})
            assert r.status_code == 503 and error_body(r)["code"] == "storage_error", r.text
            r = c.post(f"/v1/video/generations/{queued}/cancel")  # not stored: a 503, and the task stays queued
            assert r.status_code == 503 and error_body(r)["code"] == "storage_error", r.text
            assert int(r.headers["Retry-After"]) > 0

            (disk / "filler").unlink()
            failed = wait_for_task(c, running)
            assert failed["status"] == "failed" and failed["error"]["code"] == "storage_error", failed
            assert wait_for_task(c, queued)["status"] == "completed"
            until(lambda: c.get("/readyz").status_code == 200)
            assert c.get("/readyz").json()["checks"]["store_writable"] == "ok"
            after = c.post("/v1/video/generations", json={"model": "quick", "prompt": "c"}).json()["id"]
            assert wait_for_task(c, after)["status"] == "completed"
        log = server.log_path.read_text()
        assert "the store took the write fail after" in log
        assert "internal server error" not in log and "unhandled error" not in log
