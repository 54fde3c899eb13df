"""What a killed process leaves in the data dir is removed when a server starts: part files
(``.part-*``) of writes that never finished, and task folders that have no task row (a create
killed after storing its inputs, a delete killed between the row and the files).

Only what nobody has written to for an hour: another API server sharing the storage may be in
the middle of a create, so a fresh part file or folder without a row is left alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from opendance.testing.server import LiveServer, wait_for_task

M = "jisudance2.0-480p"
TWO_HOURS_AGO = time.time() - 7200


def leave(path: Path, data: bytes = b"partial", *, old: bool) -> Path:
    """A file as a killed process leaves it; ``old``: untouched for two hours (it and its folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if old:
        for p in (path, path.parent, path.parent.parent):
            os.utime(p, (TWO_HOURS_AGO, TWO_HOURS_AGO))
    return path


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_leftovers_of_killed_processes_are_removed_at_start(tmp_path):
    server = LiveServer(tmp_path / "data")
    tasks = server.data_dir / "files" / "tasks"
    with server, server.client() as c:
        kept = wait_for_task(c, c.post("/v1/video/generations", json={"model": M, "prompt": "kept"}).json()["id"])
    # What SIGKILLs at the wrong moment leave (the server is stopped: nothing else writes).
    killed_create = leave(tasks / ("task_" + "a" * 32) / "inputs" / ".part-x1y2z3", old=True)
    leave(tasks / ("task_" + "a" * 32) / "inputs" / "image.png", b"\x89PNG", old=True)
    killed_delete = leave(tasks / ("task_" + "b" * 32) / "video.mp4", b"mp4", old=True)
    killed_write = leave(tasks / kept["id"] / ".part-q9w8e7", old=True)  # a task that exists: only the part goes
    in_progress = leave(tasks / ("task_" + "c" * 32) / "inputs" / ".part-fresh1", old=False)  # another server's create
    in_progress_input = leave(tasks / ("task_" + "d" * 32) / "inputs" / "image.png", b"\x89PNG", old=False)
    with server, server.client() as c:
        wait_until(lambda: not killed_create.parent.parent.exists())
        assert not killed_delete.parent.exists()
        assert not killed_write.exists()
        assert in_progress.exists() and in_progress_input.exists()  # younger than the grace period: left alone
        # the task that exists is whole
        assert c.get(f"/v1/video/generations/{kept['id']}").json()["status"] == "completed"
        assert httpx.get(kept["video_url"]).status_code == 200
    assert "removed 2 unfinished writes and 2 task folders without a task" in server.log()
