"""Executors: relays by the hundred on one server (local and Temporal), preview tasks on the
cpu slots.

    .venv/bin/python bench/bench_executors.py relays [--tasks 200] [--seconds 10]
    .venv/bin/python bench/bench_executors.py relays --temporal
    .venv/bin/python bench/bench_executors.py preview [--tasks 8] [--rounds 2]

``relays``: a fake upstream on 127.0.0.1 (``opendance.testing.upstream.FakeUpstream``, the
legacy protocol, every task ``--seconds`` upstream) and one ``opendance serve`` (local runner,
SQLite) with one relay model; ``--tasks`` tasks are created at once (16 client threads). It
reports the time from the first create to the last completion, how many tasks were upstream
at once, creates per task seen upstream, and the memory of the process that runs the relays
(the API server; with ``--temporal`` the one ``opendance worker``, beside a Temporal dev
server, PostgreSQL and SeaweedFS S3): resident set size when idle, at its peak while the tasks
are in flight, and the growth per in-flight task.

``preview``: ``--tasks`` preview tasks (jisudance2.0-480p, 5 s each) created at once on a
server with one cpu slot and on one with ``cpu_slots`` = the cores this process may use,
alternating for ``--rounds`` rounds in one run; the time to the last completion of each, and
their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
from temporalio import activity, workflow

from opendance.testing.cluster import WorkerProcess, cluster_env, wait_until
from opendance.testing.server import LiveServer
from opendance.testing.upstream import FakeUpstream

OPEN = {
    "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0",
    "OPENDANCE_MAX_QUEUED_PER_KEY": "0",
    "OPENDANCE_MAX_QUEUED_TOTAL": "0",
    "OPENDANCE_LOG_LEVEL": "warning",
}
RELAY_MODEL = """
[models."relayed"]
resolution = "480p"
fps = 24
[models."relayed".default]
engine = "relay"
protocol = "legacy"
base_url = "{url}"
upstream_model = "up-480p"
poll_interval = {poll}
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssWatch:
    """The peak RSS of one process, sampled every 0.2 s on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def create(url: str, n: int, model: str, **body) -> list[str]:
    with httpx.Client(base_url=url, timeout=60) as c, ThreadPoolExecutor(16) as pool:

        def one(i: int) -> str:
            r = c.post("/v1/video/generations", json={"model": model, "prompt": f"bench {i}", **body})
            r.raise_for_status()
            return r.json()["id"]

        return list(pool.map(one, range(n)))


def all_done(url: str, ids: list[str]) -> bool:
    wanted, done, after = set(ids), 0, None
    with httpx.Client(base_url=url, timeout=60) as c:
        while True:
            page = c.get("/v1/video/generations", params={"limit": 100, **({"after": after} if after else {})}).json()
            for t in page["data"]:
                if t["id"] in wanted:
                    if t["status"] == "failed":
                        raise RuntimeError(f"task {t['id']} failed: {t['error']}")
                    done += t["status"] == "completed"
            if not page["has_more"]:
                return done == len(wanted)
            after = page["data"][-1]["id"]


def relays(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-relays-"))
    servers: list = []
    try:
        with FakeUpstream(seconds=args.seconds) as up:
            config = root / "models.toml"
            config.write_text(RELAY_MODEL.format(url=up.url, poll=args.poll))
            env = dict(OPEN)
            if args.temporal:
                from opendance.testing.servers import PostgresServer, SeaweedS3, TemporalServer
                from opendance.store import TaskStore
                from opendance.store.migrate import upgrade

                pg, tmprl, s3 = (
                    PostgresServer().start(),
                    TemporalServer(root / "temporal").start(),
                    SeaweedS3(root / "s3").start(),
                )
                servers += [s3, tmprl, pg]
                store = TaskStore.from_url(pg.url)
                upgrade(store.engine)
                store.close()
                env.update(cluster_env(pg.url, tmprl, s3))
            api = LiveServer(root / "api", env=env, config=config, startup_timeout=120).start()
            servers.insert(0, api)
            runner_pid = api.process.pid
            if args.temporal:
                worker = WorkerProcess(root / "worker", ["relayed"], env=env, config=config).start(timeout=120)
                servers.insert(0, worker)
                runner_pid = worker.pid
            warm = create(api.url, 4, "relayed")  # warm up: connections, imports, the upstream's video
            wait_until(lambda: all_done(api.url, warm), 120, "warm-up", poll=0.5)
            idle = rss_mib(runner_pid)
            up.peak_in_flight = 0
            with RssWatch(runner_pid) as watch:
                t0 = time.monotonic()
                ids = create(api.url, args.tasks, "relayed")
                created = time.monotonic() - t0
                wait_until(lambda: all_done(api.url, ids), 600, "all relays done", poll=1.0)
                elapsed = time.monotonic() - t0
            creates = [up.creates[tid] for tid in ids]
            if args.temporal:
                for s in servers[:2]:  # the worker and the API server: Temporal alone now
                    s.stop()
                floor = temporal_floor(servers[3].address, args.tasks, args.seconds)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(root, ignore_errors=True)
    where = "opendance worker (Temporal)" if args.temporal else "opendance serve (local runner)"
    print(
        "| runner | tasks | upstream s each | creates took s | last completion s | upstream at once | creates per task "
        "| RSS idle MiB | RSS peak MiB | MiB per in-flight task |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    per_task = (watch.peak - idle) / max(1, up.peak_in_flight)
    print(
        f"| {where} | {args.tasks} | {args.seconds:g} | {created:.1f} | {elapsed:.1f} | {up.peak_in_flight} "
        f"| {min(creates)}-{max(creates)} | {idle:.0f} | {watch.peak:.0f} | {per_task:.2f} |"
    )
    if args.temporal:
        print(
            f"the same Temporal server alone, {args.tasks} plain workflows of that shape (a {args.seconds:g} s "
            f"heartbeating activity between two small ones): {floor:.1f} s"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


@activity.defn(name="floor.wait")
async def _floor_wait(seconds: float) -> float:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        activity.heartbeat()
        await asyncio.sleep(0.5)
    return seconds


@activity.defn(name="floor.note")
async def _floor_note(seconds: float) -> float:
    return seconds


@workflow.defn(name="floor")
class _Floor:
    @workflow.run
    async def run(self, seconds: float) -> float:
        await workflow.execute_activity("floor.note", seconds, start_to_close_timeout=timedelta(seconds=60))
        await workflow.execute_activity(
            "floor.wait",
            seconds,
            task_queue="floor-work",
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=15),
        )
        return await workflow.execute_activity("floor.note", seconds, start_to_close_timeout=timedelta(seconds=60))


def temporal_floor(address: str, tasks: int, seconds: float) -> float:
    """The same shape on the same Temporal server without opendance: ``tasks`` workflows, each a
    small activity, one of ``seconds`` (heartbeating) on another queue, a small one; seconds
    from the first start to the last result. What Temporal itself costs here."""
    from temporalio.client import Client
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    async def main() -> float:
        client = await Client.connect(address)
        control = Worker(
            client,
            task_queue="floor-control",
            workflows=[_Floor],
            activities=[_floor_note],
            workflow_runner=UnsandboxedWorkflowRunner(),
        )
        work = Worker(client, task_queue="floor-work", activities=[_floor_wait], max_concurrent_activities=tasks)
        async with control, work:
            t0 = time.monotonic()
            handles = await asyncio.gather(
                *(
                    client.start_workflow("floor", seconds, id=f"floor-{uuid.uuid4()}", task_queue="floor-control")
                    for _ in range(tasks)
                )
            )
            await asyncio.gather(*(h.result() for h in handles))
            return time.monotonic() - t0

    return asyncio.run(main())


def preview(args: argparse.Namespace) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="bench-preview-"))
    times: dict[int, list[float]] = {1: [], cores: []}
    try:
        servers = {
            slots: LiveServer(root / f"slots-{slots}", env={**OPEN, "OPENDANCE_CPU_SLOTS": str(slots)}).start() for slots in times
        }
        try:
            for slots, server in servers.items():  # warm up: every slot's process and engine
                ids = create(server.url, slots, "jisudance2.0-480p")
                wait_until(lambda: all_done(server.url, ids), 300, "warm-up")
            for _ in range(args.rounds):
                for slots, server in servers.items():
                    t0 = time.monotonic()
                    ids = create(server.url, args.tasks, "jisudance2.0-480p", duration=5)
                    wait_until(lambda: all_done(server.url, ids), 600, "preview tasks", poll=0.2)
                    times[slots].append(time.monotonic() - t0)
        finally:
            for server in servers.values():
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    one, many = statistics.median(times[1]), statistics.median(times[cores])
    print(f"| cpu slots | {args.tasks} preview tasks (480p, 5 s), s, each round | median s |")
    print("| ---: | --- | ---: |")
    for slots, values in times.items():
        print(f"| {slots} | {', '.join(f'{v:.1f}' for v in values)} | {statistics.median(values):.1f} |")
    print(f"ratio {cores} slots / 1 slot: {many / one:.2f} (load average at the end: {os.getloadavg()[0]:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    r = sub.add_parser("relays")
    r.add_argument("--tasks", type=int, default=200)
    r.add_argument("--seconds", type=float, default=10.0, help="seconds each task takes upstream")
    r.add_argument("--poll", type=float, default=1.0, help="the relay model's poll_interval")
    r.add_argument("--temporal", action="store_true", help="one API server and one worker on Temporal, PostgreSQL, S3")
    p = sub.add_parser("preview")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    relays(args) if args.part == "relays" else preview(args)


if __name__ == "__main__":
    main()
