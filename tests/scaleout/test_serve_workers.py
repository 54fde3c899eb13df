"""``opendance serve --workers 2`` in Temporal mode: two API processes on one port, each a full
API server of the cluster: tasks created through the port run on a worker and complete, and
every GET through the port sees them, whichever process answers."""

from __future__ import annotations

from pathlib import Path

from opendance.testing.cluster import WorkerProcess, wait_until
from opendance.testing.server import LiveServer


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_two_api_processes_on_one_port_serve_the_cluster(scaleout_env):
    env = {
        **scaleout_env.env,
        "OPENDANCE_TEMPORAL_CONTROL_QUEUE": "workers-control",
        "OPENDANCE_TEMPORAL_QUEUE_PREFIX": "workers-",
    }
    worker = WorkerProcess(scaleout_env.root / "workers-worker", ["steady"], env=env, config=scaleout_env.config).start()
    try:
        with LiveServer(scaleout_env.root / "workers-api", env=env, config=scaleout_env.config, args=["--workers", "2"]) as api:
            # uvicorn's supervisor and its two API processes (each with the multiprocessing
            # resource tracker of spawn at most: count the ones running opendance's app).
            wait_until(lambda: len(children(api.process.pid)) >= 2, 30, "two worker processes")
            with api.client() as c:
                ids = [
                    c.post("/v1/video/generations", json={"model": "steady", "prompt": f"w {i}"}).json()["id"] for i in range(6)
                ]
                for task_id in ids:
                    done = wait_until(
                        lambda t=task_id: (r := c.get(f"/v1/video/generations/{t}").json())["status"] == "completed" and r,
                        120,
                        f"{task_id} completed",
                    )
                    assert done["progress"] == 100
                # Fresh connections (each may land on either process) all see every task.
                for _ in range(8):
                    with api.client() as fresh:
                        listed = {t["id"] for t in fresh.get("/v1/video/generations", params={"limit": 20}).json()["data"]}
                    assert set(ids) <= listed
    finally:
        worker.stop()
