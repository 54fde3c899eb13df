"""The cpu executor: preview and scenario tasks run side by side, one process per slot, up to
``cpu_slots``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from opendance.testing.cluster import read_runs
from opendance.testing.server import LiveServer, wait_for_task

MODELS = """
[models."slow"]
resolution = "480p"
fps = 8
[models."slow".default]
engine = "scenario"
behaviour = "sleep"
steps = 10
step_seconds = 0.3
record_dir = "{records}"
"""


def test_cpu_tasks_run_side_by_side_up_to_cpu_slots(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    (tmp_path / "models.toml").write_text(MODELS.format(records=records))
    env = {"OPENDANCE_CPU_SLOTS": "2", "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(tmp_path / "data", config=tmp_path / "models.toml", env=env) as server, server.client() as c:
        with ThreadPoolExecutor(3) as pool:
            ids = list(
                pool.map(
                    lambda i: c.post("/v1/video/generations", json={"model": "slow", "prompt": str(i)}).json()["id"], range(3)
                )
            )
        final = [wait_for_task(c, tid, timeout=120) for tid in ids]
        cpu = c.get("/readyz").json()["checks"]["runner"]["executors"]["cpu"]
    assert {t["status"] for t in final} == {"completed"}
    spans = {}
    for tid in ids:
        mine = [r for r in read_runs(records) if r["task"] == tid]
        spans[tid] = (mine[0]["pid"], mine[0]["t"], mine[-1]["t"])
    pids = {pid for pid, _, _ in spans.values()}
    assert len(pids) == 2 and cpu["slots"] == 2 and len(cpu["groups"]) == 2  # two processes, never a third
    (a, b, c_) = sorted(spans.values(), key=lambda s: s[1])
    assert b[1] < a[2]  # the first two ran at once ...
    assert c_[1] >= min(a[2], b[2])  # ... and the third waited for a free slot
