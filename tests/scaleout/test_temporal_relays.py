"""Relays in Temporal mode: one ``opendance worker`` serves a relay model with async
activities on its upstream executor, hundreds at once, in its own process (no device process)."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from opendance.testing.cluster import WorkerProcess, wait_until
from opendance.testing.server import LiveServer
from opendance.testing.upstream import FakeUpstream

MODEL = """
[models."relayed"]
resolution = "480p"
fps = 24
[models."relayed".default]
engine = "relay"
protocol = "legacy"
base_url = "{url}"
upstream_model = "up-480p"
poll_interval = 1.0
"""


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_two_hundred_relays_on_one_worker(scaleout_env):
    root = scaleout_env.root / "relays"
    root.mkdir()
    env = {
        **scaleout_env.env,
        "OPENDANCE_TEMPORAL_CONTROL_QUEUE": "relays-control",
        "OPENDANCE_TEMPORAL_QUEUE_PREFIX": "relays-",
        "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0",
        "OPENDANCE_MAX_QUEUED_PER_KEY": "0",
        "OPENDANCE_MAX_QUEUED_TOTAL": "0",
        "OPENDANCE_LOG_LEVEL": "warning",
        # The default heartbeat timeout (the module's 2 s is for its crash tests): 200 activities
        # heartbeating every 1.6 s would keep the Temporal dev server busy with nothing else.
        "OPENDANCE_TEMPORAL_HEARTBEAT_TIMEOUT": "15",
    }
    with FakeUpstream(seconds=10.0) as up:
        config = root / "models.toml"
        config.write_text(MODEL.format(url=up.url))
        api = LiveServer(root / "api", env=env, config=config).start()
        worker = WorkerProcess(root / "worker", ["relayed"], env=env, config=config).start()
        try:
            assert "relayed (256 slots: upstream)" in worker.log()
            started = time.monotonic()
            with api.client() as c, ThreadPoolExecutor(16) as pool:
                ids = list(
                    pool.map(
                        lambda i: c.post("/v1/video/generations", json={"model": "relayed", "prompt": str(i)}).json()["id"],
                        range(200),
                    )
                )
            wait_until(lambda: len(up.tasks) >= 20, 60, "relays under way upstream")
            assert children(worker.pid) == []  # the relays are asyncio activities of the worker itself

            def done() -> bool:
                tasks, after = [], None
                while True:  # the list, 100 a page, instead of 200 GETs a round
                    params = {"limit": 100, **({"after": after} if after else {})}
                    page = httpx.get(f"{api.url}/v1/video/generations", params=params, timeout=10).json()
                    tasks += page["data"]
                    if not page["has_more"]:
                        break
                    after = page["data"][-1]["id"]
                assert not [t for t in tasks if t["status"] == "failed"], [t["error"] for t in tasks if t["error"]][:3]
                return sum(t["status"] == "completed" for t in tasks if t["id"] in ids) == 200

            # One by one they would take 2000 s. The goal is 90 s (this test: 85.9 s at load average
            # 6; the bench: 65-74 s, docs/benchmarks.md#executors), but the Temporal dev server
            # alone, running 200 plain workflows of the same shape, takes 35-63 s of that on this
            # shared machine and more under heavier load, so the bound leaves room for it.
            wait_until(done, 180 - (time.monotonic() - started), "200 completed", poll=2.0)
            elapsed = time.monotonic() - started
        finally:
            worker.stop()
            api.stop()
    assert sorted(up.creates.values()) == [1] * 200
    assert up.peak_in_flight >= 50, up.peak_in_flight
    print(
        f"Temporal, one worker: 200 relay tasks of 10 s upstream completed {elapsed:.1f} s after the first create, "
        f"{up.peak_in_flight} upstream at once"
    )
