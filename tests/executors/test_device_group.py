"""A device group of 2 CPU ranks (gloo) runs a task end to end through HTTP: both ranks run
the engine, rank 0 alone reports it, and a rank killed mid-task fails nothing for good."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import av
import numpy as np
import pytest

from opendance.testing.cluster import read_runs, wait_until
from opendance.testing.server import LiveServer, wait_for_task

pytest.importorskip("torch.distributed")

STEPS = 12
MODELS = """
[models."pair"]
resolution = "480p"
fps = 8
devices_per_task = 2
[models."pair".default]
engine = "scenario"
behaviour = "sleep"
steps = {steps}
step_seconds = 0.25
record_dir = "{records}"
"""


@pytest.fixture(scope="module")
def group_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("group")
    records = root / "records"
    records.mkdir()
    (root / "models.toml").write_text(MODELS.format(steps=STEPS, records=records))
    env = {"OPENDANCE_DEVICES": "cpu,cpu", "OPENDANCE_CHECKPOINT_EVERY": "3"}
    with LiveServer(root / "data", config=root / "models.toml", env=env) as server:
        server.records = records
        yield server


def runs_of(server, task_id: str) -> list[dict]:
    return [r for r in read_runs(server.records) if r["task"] == task_id]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_both_ranks_run_the_job_and_rank_0_alone_reports(group_server, tmp_path):
    with group_server.client() as c:
        ranks = c.get("/readyz").json()["checks"]["runner"]["executors"]["device"]["groups"]
        assert [g["devices"] for g in ranks] == [["cpu", "cpu"]] and len(ranks[0]["pids"]) == 2
        tid = c.post("/v1/video/generations", json={"model": "pair", "prompt": "two ranks"}).json()["id"]
        seen: list[tuple[int, int]] = []  # (progress read, rank 0's steps recorded right after)
        while (task := c.get(f"/v1/video/generations/{tid}").json())["status"] not in ("completed", "failed"):
            steps0 = [r["step"] for r in runs_of(group_server, tid) if r["event"] == "step" and r.get("rank") == 0]
            seen.append((task["progress"], max(steps0, default=0)))
            time.sleep(0.05)
        assert task["status"] == "completed", task
        video = c.get(f"/v1/video/generations/{tid}/content").content
        (group,) = c.get("/readyz").json()["checks"]["runner"]["executors"]["device"]["groups"]
    # Rank 1 sent no task event, only its Idle: the group ended the job cleanly and stays.
    assert group["stray_events"] == 0 and group["pids"] == ranks[0]["pids"] and group["state"] == "ready"
    runs = runs_of(group_server, tid)
    steps = [r for r in runs if r["event"] == "step"]
    # Both ranks, in two processes, ran every step, each step an all-reduce over both.
    assert {r["rank"] for r in steps} == {0, 1} and len({r["pid"] for r in steps}) == 2
    for rank in (0, 1):
        assert [r["step"] for r in steps if r["rank"] == rank] == list(range(1, STEPS + 1))
    assert {r["sum"] for r in steps} == {3}
    # Rank 1 reports progress STEPS-1 of STEPS from its first step: had it reached the store, the
    # task would have shown ~82 % while rank 0 had done a step or two.
    # (After the last step the encoder moves the bar on to 99.)
    assert any(0 < p < 50 for p, _ in seen) and all(p <= 90 * done // STEPS for p, done in seen if done < STEPS), seen
    # The video is rank 0's frames (rank 1 makes another colour).
    path = tmp_path / "pair.mp4"
    path.write_bytes(video)
    with av.open(str(path)) as f:
        first = next(f.decode(video=0)).to_ndarray(format="rgb24")
    base = np.random.default_rng(task["seed"]).integers(0, 256, size=3, dtype=np.uint8).astype(np.int32)
    assert np.abs(first.reshape(-1, 3).mean(axis=0) - base).max() < 8


def test_a_rank_killed_mid_task_restarts_the_group_and_the_task_completes(group_server):
    with group_server.client() as c:
        before = c.get("/readyz").json()["checks"]["runner"]["executors"]["device"]["groups"][0]["pids"]
        tid = c.post("/v1/video/generations", json={"model": "pair", "prompt": "lose a rank"}).json()["id"]
        wait_until(lambda: any(r["event"] == "step" and r["step"] >= 4 for r in runs_of(group_server, tid)), 60, "step 4")
        rank1 = next(r["pid"] for r in runs_of(group_server, tid) if r["event"] == "step" and r["rank"] == 1)
        assert rank1 in before
        os.kill(rank1, signal.SIGKILL)
        task = wait_for_task(c, tid, timeout=120)
        assert task["status"] == "completed", task
        after = c.get("/readyz").json()["checks"]["runner"]["executors"]["device"]["groups"][0]["pids"]
    # No orphan: both old ranks are gone (rank 0 too, though it was only waiting on rank 1).
    assert not any(alive(pid) for pid in before), before
    assert set(after).isdisjoint(before) and all(alive(pid) for pid in after)
    starts = [r for r in runs_of(group_server, tid) if r["event"] == "start"]
    assert len(starts) == 4  # two ranks, twice: the run was retried on the new group
    second = [r for r in starts if r["pid"] in after]
    assert len(second) == 2 and {r["step"] for r in second} == {3}  # resumed at the last checkpoint (every 3)


def test_a_group_larger_than_the_devices_is_refused_at_start(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "models.toml"
    config.write_text(MODELS.format(steps=2, records=tmp_path).replace("devices_per_task = 2", "devices_per_task = 4"))
    env = {**os.environ, "OPENDANCE_DEVICES": "cpu,cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "opendance", "serve", "--config", str(config), "--data-dir", str(tmp_path / "d"), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "models.pair: devices_per_task = 4, but OPENDANCE_DEVICES lists 2 device(s) (cpu,cpu)" in done.stderr
    assert "Traceback" not in done.stderr
