"""One local server per data dir (issue 10, item 1).

A second ``opendance serve`` on a data dir a live server holds exits at once, non-zero, with one
line naming the data dir and the holder's PID, before it recovers or sweeps anything: the first
server's running task goes on and completes. The lock is the kernel's (``flock``), so a server
killed with SIGKILL leaves nothing that blocks the next start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opendance.runner.datadir_lock import DataDirBusy, hold
from opendance.testing.server import LiveServer, free_port, wait_for_task

CONFIG = """
[models."slow"]
resolution = "480p"
fps = 8
[models."slow".default]
engine = "scenario"
behaviour = "sleep"
steps = 100
step_seconds = 0.1
"""


def second_serve(data_dir: Path, port: int, config: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "opendance", "serve", "--port", str(port), "--data-dir", str(data_dir), "--config", str(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENDANCE_LOG_LEVEL": "info"}  # info: a recovery would be logged
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def wait_running(c, task_id: str) -> None:
    deadline = time.monotonic() + 60
    while c.get(f"/v1/video/generations/{task_id}").json()["progress"] < 5:
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)


@pytest.mark.timeout(240)
def test_a_second_server_on_the_same_data_dir_exits_and_leaves_the_first_ones_task_alone(tmp_path):
    config = tmp_path / "models.toml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    with LiveServer(data, config=config) as first, first.client() as c:
        task_id = c.post("/v1/video/generations", json={"model": "slow", "prompt": "a"}).json()["id"]
        wait_running(c, task_id)
        # Another port, and the first one's port (the case: it died on "address already in use").
        for port in (free_port(), first.port):
            done = second_serve(data, port, config)
            assert done.returncode == 1, (done.returncode, done.stderr)
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1, done.stderr
            assert str(data.resolve()) in lines[0] and f"PID {first.process.pid}" in lines[0], lines[0]
            assert "recovering" not in done.stdout + done.stderr
            assert c.get(f"/v1/video/generations/{task_id}").json()["status"] in ("in_progress", "completed")
        task = wait_for_task(c, task_id)
        assert task["status"] == "completed", task
        assert "recovering" not in first.log()
    # The lock went with the process (a graceful stop here; a SIGKILL below): the next start works.
    with LiveServer(data, config=config) as again, again.client() as c:
        again.kill()
    with LiveServer(data, config=config) as again, again.client() as c:
        assert (
            wait_for_task(c, c.post("/v1/video/generations", json={"model": "slow", "prompt": "b"}).json()["id"])["status"]
            == "completed"
        )


def test_the_lock_is_per_process_and_names_its_holder(tmp_path):
    lock = hold(tmp_path)
    again = hold(tmp_path)  # the same process: the same lock, one more holder
    assert again is lock
    probe = "from opendance.runner.datadir_lock import hold, DataDirBusy\n" + (
        "import sys\ntry:\n    hold(sys.argv[1])\nexcept DataDirBusy as e:\n    print(e.pid); sys.exit(3)\n"
    )
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert (other.returncode, other.stdout.strip()) == (3, str(os.getpid())), other.stderr
    lock.release()
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert other.returncode == 3, "one holder is left: still locked"
    again.release()
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stdout + other.stderr
    hold(tmp_path).release()  # free again here too


def test_the_busy_message_names_the_data_dir_and_the_pid(tmp_path):
    message = str(DataDirBusy(tmp_path, 4242))
    assert str(tmp_path) in message and "PID 4242" in message and "\n" not in message
