"""The scale-out runner with real servers: two API servers and two workers on PostgreSQL,
the Temporal dev server and SeaweedFS S3. Nothing a client sees changes when a worker, an
API server or Temporal itself goes away mid-run."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from opendance.media.encode import probe_mp4
from opendance.testing.cluster import Cluster, WorkerProcess, wait_until
from opendance.testing.server import LiveServer

MODELS = ["steady", "long", "fails", "crashes"]


@pytest.fixture(scope="module")
def cluster(scaleout_env):
    c = Cluster(scaleout_env.root / "cluster", scaleout_env.env, scaleout_env.config, models=MODELS).start()
    yield c
    c.stop()


class ProgressWatch:
    """Polls tasks through one API server on a thread and keeps every answer, to show that
    progress never goes down and that the server kept answering."""

    def __init__(self, cluster: Cluster, task_ids: list[str], api: int) -> None:
        self.cluster, self.task_ids, self.api = cluster, task_ids, api
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for tid in self.task_ids:
                try:
                    self.seen[tid].append(self.cluster.get(tid, api=self.api)["progress"])
                except httpx.HTTPError as exc:
                    self.errors.append(f"{tid}: {exc}")
            time.sleep(0.1)

    def __enter__(self) -> ProgressWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def assert_monotonic(self) -> None:
        for tid, values in self.seen.items():
            assert values == sorted(values), f"{tid}: progress went down: {values}"


def device_pid_of(scaleout_env, task_id: str) -> int:
    starts = [r for r in scaleout_env.runs() if r["task"] == task_id and r["event"] == "start"]
    return starts[-1]["pid"]


def parent_pid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def test_a_twenty_tasks_over_two_workers(cluster, scaleout_env):
    ids = [cluster.create("steady", f"task {i}", api=i % 2) for i in range(20)]
    final = cluster.wait_done(ids, timeout=180)
    assert {t["status"] for t in final.values()} == {"completed"}, [t["error"] for t in final.values() if t["error"]]
    store = scaleout_env.store()
    try:
        assert {store.get(tid).attempts for tid in ids} == {1}  # each ran exactly once
    finally:
        store.close()
    runs = [r for r in scaleout_env.runs() if r["task"] in ids]
    starts = [r for r in runs if r["event"] == "start"]
    assert sorted(r["task"] for r in starts) == sorted(ids)  # one run per task
    # One slot per device: a device process never has two tasks in flight at once.
    spans: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for tid in ids:
        mine = [r for r in runs if r["task"] == tid]
        start = next(r for r in mine if r["event"] == "start")
        end = next(r for r in mine if r["event"] == "end")
        assert start["pid"] == end["pid"]
        spans[start["pid"]].append((start["t"], end["t"]))
    assert len(spans) == 2, "both workers took tasks"
    for pid, intervals in spans.items():
        intervals.sort()
        for (_, end1), (start2, _) in zip(intervals, intervals[1:]):
            assert start2 >= end1, f"device process {pid} ran two tasks at once"

    # Each API server sees, through Temporal, the two worker processes polling the model's queue.
    def both_seen(api: int) -> bool:
        ready = httpx.get(f"{cluster.apis[api].url}/readyz").json()["checks"]["runner"]
        return ready["queues"].get("steady", {}).get("workers") == 2 and ready["workers_alive"] == 2

    for api in (0, 1):
        wait_until(lambda: both_seen(api), timeout=30, what=f"API server {api} to see both workers")
    video = cluster.content(ids[0], api=1)
    path = scaleout_env.root / "a.mp4"
    path.write_bytes(video)
    info = probe_mp4(path)
    assert (info["width"], info["height"], info["num_frames"]) == (864, 480, 40)


def test_b_sigkill_worker_mid_task_resumes_elsewhere(cluster, scaleout_env):
    tid = cluster.create("long", "survive a crash")
    # Past the second checkpoint (steps 4 and 8 of 20), the worker machine dies.
    wait_until(
        lambda: any(r["task"] == tid and r["event"] == "step" and r["step"] >= 9 for r in scaleout_env.runs()), 60, "step 9"
    )
    device_pid = device_pid_of(scaleout_env, tid)
    victim = next(w for w in cluster.workers if w.pid == parent_pid(device_pid))
    with ProgressWatch(cluster, [tid], api=1) as watch:
        victim.kill()
        killed_at = time.time()
        final = cluster.wait_done([tid], timeout=90)[tid]
    assert final["status"] == "completed", final
    watch.assert_monotonic()
    runs = [r for r in scaleout_env.runs() if r["task"] == tid]
    starts = [r for r in runs if r["event"] == "start"]
    assert len(starts) == 2
    first, second = starts
    reached = max(r["step"] for r in runs if r["pid"] == first["pid"] and r["event"] == "step")
    assert second["pid"] != device_pid and second["t"] > killed_at
    # Resumed from the last checkpoint (every 4 steps) at or before where the dead run got to.
    assert second["step"] >= 8 and second["step"] % 4 == 0 and second["step"] <= reached
    assert [r["step"] for r in runs if r["pid"] == second["pid"] and r["event"] == "step"] == list(range(second["step"] + 1, 21))
    path = scaleout_env.root / "b.mp4"
    path.write_bytes(cluster.content(tid))
    info = probe_mp4(path)
    assert (info["width"], info["height"], info["num_frames"]) == (864, 480, 40)
    assert abs(info["duration"] - 5.0) <= 1 / 8 + 1e-6
    store = scaleout_env.store()
    try:
        assert store.get(tid).attempts == 2
    finally:
        store.close()
    # The cluster goes on with a fresh worker in place of the dead one.
    cluster.workers.remove(victim)
    cluster.add_worker()


def _without_links(task: dict) -> dict:
    return {k: v for k, v in task.items() if k not in ("video_url", "result")}


def test_c_restart_an_api_server_mid_run(cluster, scaleout_env):
    ids = [cluster.create("long", f"c {i}", api=i % 2) for i in range(3)]
    wait_until(lambda: any(cluster.get(t, api=1)["status"] == "in_progress" for t in ids), 60, "a task running")
    before = {tid: cluster.get(tid, api=1) for tid in ids}
    with ProgressWatch(cluster, ids, api=1) as watch:
        cluster.apis[0].kill()
        # While server 0 is down, server 1 creates, reads and lists as usual.
        late = cluster.create("steady", "made while server 0 was down", api=1)
        listed = httpx.get(f"{cluster.apis[1].url}/v1/video/generations", params={"limit": 100}, timeout=10).json()["data"]
        assert {t["id"] for t in listed} >= set(ids) | {late}
        cluster.apis[0].start()
        final = cluster.wait_done([*ids, late], timeout=120, api=0)
    assert watch.errors == []
    watch.assert_monotonic()
    assert {t["status"] for t in final.values()} == {"completed"}, [t["error"] for t in final.values()]
    for tid in ids:
        # Both servers give the same answer, links on each one's own address, and nothing went
        # backwards across the restart.
        answers = [cluster.get(tid, api=i) for i in (0, 1)]
        for i, answer in enumerate(answers):
            assert answer["video_url"] == f"{cluster.apis[i].url}/v1/video/generations/{tid}/content"
        assert _without_links(answers[0]) == _without_links(answers[1])
        assert final[tid]["created_at"] == before[tid]["created_at"]
    store = scaleout_env.store()
    try:
        assert {store.get(tid).attempts for tid in [*ids, late]} == {1}  # the workers never noticed
    finally:
        store.close()


def test_d_temporal_down_for_a_few_seconds(cluster, scaleout_env, temporal):
    ids = [cluster.create("long", f"d {i}", api=i % 2) for i in range(3)]
    wait_until(lambda: any(cluster.get(t)["progress"] > 20 for t in ids), 60, "work under way")
    with ProgressWatch(cluster, ids, api=0) as watch:
        temporal.stop()
        try:
            # Reads never ask Temporal; a create is stored and gets its workflow later.
            during = cluster.create("steady", "made while Temporal was down", api=1)
            assert {cluster.get(t, api=1)["id"] for t in ids} == set(ids)
            time.sleep(3)
        finally:
            temporal.start()
        final = cluster.wait_done([*ids, during], timeout=180)
    assert watch.errors == []
    watch.assert_monotonic()
    assert {t["status"] for t in final.values()} == {"completed"}, [t["error"] for t in final.values()]
    path = scaleout_env.root / "d.mp4"
    path.write_bytes(cluster.content(ids[0]))
    assert probe_mp4(path)["num_frames"] == 40


def test_cancel_reaches_the_engine(cluster, scaleout_env):
    tid = cluster.create("long", "stop me")
    wait_until(lambda: any(r["task"] == tid and r["event"] == "step" for r in scaleout_env.runs()), 60, "first step")
    r = httpx.post(f"{cluster.apis[1].url}/v1/video/generations/{tid}/cancel", timeout=10)
    assert r.status_code == 200 and r.json()["raw_status"] == "CANCELLED"

    def engine_stopped() -> bool:
        steps = [x for x in scaleout_env.runs() if x["task"] == tid and x["event"] == "step"]
        return time.time() - steps[-1]["t"] > 2.0  # quiet for 8 step lengths

    wait_until(engine_stopped, 30, "the engine stops")
    runs = [x for x in scaleout_env.runs() if x["task"] == tid]
    assert not any(x["event"] == "end" for x in runs)  # stopped between steps, never finished
    assert max(x["step"] for x in runs if x["event"] == "step") < 20
    assert cluster.get(tid, api=0)["raw_status"] == "CANCELLED"
    assert httpx.get(f"{cluster.url}/v1/video/generations/{tid}/content", timeout=10).status_code == 409


def test_an_ark_tasks_execution_expires_after_stops_it_on_a_worker(cluster, scaleout_env):
    """``execution_expires_after`` through /api/v3 on the scale-out runner: an API server's
    expiry sweep marks the running task expired and the engine on the worker stops."""
    body = {"model": "long", "content": [{"type": "text", "text": "too slow"}], "execution_expires_after": 2}
    r = httpx.post(f"{cluster.apis[0].url}/api/v3/contents/generations/tasks", json=body, timeout=10)
    assert r.status_code == 200, r.text
    tid = r.json()["id"]
    wait_until(lambda: any(x["task"] == tid and x["event"] == "step" for x in scaleout_env.runs()), 60, "first step")
    final = wait_until(
        lambda: (
            (t := httpx.get(f"{cluster.apis[1].url}/api/v3/contents/generations/tasks/{tid}", timeout=10).json())["status"]
            == "expired"
            and t
        ),
        30,
        "expired",
    )
    assert final["error"]["code"] == "expired" and final["execution_expires_after"] == 2

    def engine_stopped() -> bool:
        steps = [x for x in scaleout_env.runs() if x["task"] == tid and x["event"] == "step"]
        return time.time() - steps[-1]["t"] > 2.0

    wait_until(engine_stopped, 30, "the engine stops")
    assert not any(x["task"] == tid and x["event"] == "end" for x in scaleout_env.runs())
    assert cluster.get(tid, api=0)["raw_status"] == "EXPIRED"


def test_engine_failure_fails_the_task_once(cluster, scaleout_env):
    tid = cluster.create("fails", "no luck")
    final = cluster.wait_done([tid], timeout=60)[tid]
    assert (final["status"], final["raw_status"], final["error"]["code"]) == ("failed", "FAILED", "scenario_failure")
    store = scaleout_env.store()
    try:
        assert store.get(tid).attempts == 1  # an engine error is not retried
    finally:
        store.close()


def test_sigterm_hands_the_task_over(cluster, scaleout_env):
    """A worker stopped on purpose (a deploy, a scale-down) gives its task back at once, and
    the next worker resumes it from the checkpoint: no heartbeat timeout to wait for."""
    tid = cluster.create("long", "redeploy")
    wait_until(
        lambda: any(r["task"] == tid and r["event"] == "step" and r["step"] >= 5 for r in scaleout_env.runs()), 60, "step 5"
    )
    device_pid = device_pid_of(scaleout_env, tid)
    leaving = next(w for w in cluster.workers if w.pid == parent_pid(device_pid))
    leaving.stop()  # SIGTERM
    assert leaving.process.returncode == 0
    assert not Path(f"/proc/{device_pid}").exists()  # its device process went with it
    final = cluster.wait_done([tid], timeout=90)[tid]
    assert final["status"] == "completed", final
    starts = [r for r in scaleout_env.runs() if r["task"] == tid and r["event"] == "start"]
    assert len(starts) == 2 and starts[1]["step"] >= 4 and starts[1]["pid"] != device_pid
    cluster.workers.remove(leaving)
    cluster.add_worker()


def test_callbacks_in_order(cluster, media_host):
    tid = cluster.create("long", "tell me", extra_body={"callback_url": f"{media_host.url}/cb/{id(cluster)}"})
    assert cluster.wait_done([tid], timeout=90)[tid]["status"] == "completed"

    def statuses() -> list[str]:
        return [json.loads(body)["status"] for path, body in media_host.posts if path == f"/cb/{id(cluster)}"]

    wait_until(lambda: "completed" in statuses(), 30, "the completed callback")
    assert statuses() == ["queued", "in_progress", "completed"]


def test_crashing_engine_is_retried_then_failed(cluster, scaleout_env):
    tid = cluster.create("crashes", "always dies")
    final = cluster.wait_done([tid], timeout=120)[tid]
    assert (final["raw_status"], final["error"]["code"]) == ("FAILED", "interrupted"), final
    starts = [r for r in scaleout_env.runs() if r["task"] == tid and r["event"] == "start"]
    assert len(starts) == 4  # max_attempts runs, each on a fresh device process
    assert len({r["pid"] for r in starts}) == 4
    # The workers replaced their dead device processes and still serve.
    ok = cluster.create("steady", "after the crashes")
    assert cluster.wait_done([ok], timeout=60)[ok]["status"] == "completed"


@pytest.fixture(scope="module")
def short_fuse(scaleout_env, cluster):
    """One API server whose tasks must finish within 6 s of submission, and one worker that
    lets a run last 3 s, on queues of their own. Nobody serves "steady" here."""
    env = {
        **scaleout_env.env,
        "OPENDANCE_TEMPORAL_CONTROL_QUEUE": "fuse-control",
        "OPENDANCE_TEMPORAL_QUEUE_PREFIX": "fuse-",
        "OPENDANCE_TEMPORAL_EXECUTION_DEADLINE": "6",
        "OPENDANCE_TASK_TIMEOUT": "3",
    }
    api = LiveServer(scaleout_env.root / "fuse-api", env=env, config=scaleout_env.config).start()
    worker = WorkerProcess(scaleout_env.root / "fuse-worker", ["long"], env=env, config=scaleout_env.config).start()
    yield api
    worker.stop()
    api.stop()


def test_run_longer_than_task_timeout_expires(short_fuse, scaleout_env):
    tid = httpx.post(f"{short_fuse.url}/v1/video/generations", json={"model": "long", "prompt": "slow"}).json()["id"]
    with short_fuse.client() as c:
        final = wait_until(lambda: (t := c.get(f"/v1/video/generations/{tid}").json())["status"] == "failed" and t, 60, "expired")
    assert (final["raw_status"], final["error"]["code"]) == ("EXPIRED", "expired")
    assert "longer than 3 s" in final["error"]["message"]
    wait_until(lambda: time.time() - max(r["t"] for r in scaleout_env.runs() if r["task"] == tid) > 1.5, 30, "engine stopped")
    assert not any(r["task"] == tid and r["event"] == "end" for r in scaleout_env.runs())


def test_task_nobody_runs_expires_at_the_deadline(short_fuse):
    tid = httpx.post(f"{short_fuse.url}/v1/video/generations", json={"model": "steady", "prompt": "no worker"}).json()["id"]
    with short_fuse.client() as c:
        final = wait_until(lambda: (t := c.get(f"/v1/video/generations/{tid}").json())["status"] == "failed" and t, 60, "expired")
    assert (final["raw_status"], final["error"]["code"]) == ("EXPIRED", "expired")
    assert "within 6 s" in final["error"]["message"]
