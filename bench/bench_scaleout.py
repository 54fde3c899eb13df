"""Scale-out: throughput with 1, 2 and 4 workers, and recovery from a worker killed mid-task.

    .venv/bin/python bench/bench_scaleout.py [--tasks 16] [--steps 10] [--step-seconds 0.3]
                                             [--kills 4] [--heartbeat 3] [--checkpoint-every 5]

Everything is real and on 127.0.0.1: a private PostgreSQL, the Temporal dev server, SeaweedFS
S3, one API server (runner=temporal, storage=s3) and ``opendance worker`` processes (one
device each) running a fixed-duration scenario model: ``steps`` x ``step_seconds`` of sleep,
then 40 frames encoded to MP4 and uploaded to S3.

Part 1 submits ``--tasks`` tasks at once with 1, then 2, then 4 workers, and measures from the
first create to the last completion: tasks per minute, and scaling efficiency = rate(N) /
(N x rate(1)).

Part 2 kills (SIGKILL, the worker and its device process) the worker running a long task
after it passed a random step, ``--kills`` times, and reads the scenario engine's step records:
recovery = time from the kill to the first step of the resumed run on another worker; steps
lost = steps the dead run had finished minus the step the new run resumed from.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from opendance.store import TaskStore
from opendance.store.migrate import upgrade
from opendance.testing.cluster import Cluster, cluster_env, read_runs, wait_until
from opendance.testing.servers import PostgresServer, SeaweedS3, TemporalServer

MODELS = """
[models."fixed"]
resolution = "480p"
fps = 8
[models."fixed".default]
engine = "scenario"
behaviour = "sleep"
steps = {steps}
step_seconds = {step_seconds}
record_dir = "{records}"

[models."victim"]
resolution = "480p"
fps = 8
[models."victim".default]
engine = "scenario"
behaviour = "sleep"
steps = 40
step_seconds = 0.2
record_dir = "{records}"
"""


def throughput(cluster: Cluster, tasks: int) -> float:
    t0 = time.monotonic()
    ids = [cluster.create("fixed", f"bench {i}") for i in range(tasks)]
    final = cluster.wait_done(ids, timeout=60 + tasks * 60)
    elapsed = time.monotonic() - t0
    bad = [t["error"] for t in final.values() if t["status"] != "completed"]
    if bad:
        raise SystemExit(f"tasks failed: {bad}")
    return tasks / elapsed * 60


def parent_pid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def one_kill(cluster: Cluster, records: Path, rng: random.Random) -> tuple[float, int, int, int]:
    """(seconds from kill to the resumed run's first step, steps lost, killed at, resumed at)."""
    tid = cluster.create("victim", "kill me")
    kill_after = rng.randint(6, 30)

    def mine() -> list[dict]:
        return [r for r in read_runs(records) if r["task"] == tid]

    wait_until(lambda: any(r["event"] == "step" and r["step"] >= kill_after for r in mine()), 120, f"step {kill_after}")
    device = next(r for r in mine() if r["event"] == "start")["pid"]
    victim = next(w for w in cluster.workers if w.pid == parent_pid(device))
    victim.kill()
    killed_at = time.time()
    reached = max(r["step"] for r in mine() if r["pid"] == device and r["event"] == "step")
    wait_until(lambda: any(r["event"] == "step" and r["pid"] != device for r in mine()), 120, "resumed")
    resumed = next(r for r in mine() if r["event"] == "start" and r["pid"] != device)
    first_step = next(r for r in mine() if r["event"] == "step" and r["pid"] != device)
    cluster.wait_done([tid], timeout=120)
    cluster.workers.remove(victim)
    cluster.add_worker()
    return first_step["t"] - killed_at, reached - resumed["step"], reached, resumed["step"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--step-seconds", type=float, default=0.3)
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--heartbeat", type=float, default=3.0, help="temporal_heartbeat_timeout, seconds")
    ap.add_argument("--checkpoint-every", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the servers' state and logs (printed at the end)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    records = root / "records"
    records.mkdir()
    config = root / "models.toml"
    config.write_text(MODELS.format(steps=args.steps, step_seconds=args.step_seconds, records=records))
    with PostgresServer() as pg, TemporalServer(root / "temporal") as temporal, SeaweedS3(root / "s3") as s3:
        store = TaskStore.from_url(pg.url)
        upgrade(store.engine)
        store.close()
        env = cluster_env(
            pg.url,
            temporal,
            s3,
            temporal_heartbeat_timeout=str(args.heartbeat),
            temporal_retry_interval="0.5",
            checkpoint_every=str(args.checkpoint_every),
            log_level="warning",
        )
        cluster = Cluster(root / "cluster", env, config, models=["fixed", "victim"], apis=1, workers=1).start()
        try:
            engine_s = args.steps * args.step_seconds
            print(
                f"fixed task: {args.steps} steps x {args.step_seconds}s = {engine_s:.1f}s of engine, then 40 frames at 864x480 encoded and stored"
            )
            rates: dict[int, float] = {}
            for n in (1, 2, 4):
                while len(cluster.workers) < n:
                    cluster.add_worker()
                throughput(cluster, 2)  # warm up the new workers (engine built, S3 connections)
                rates[n] = throughput(cluster, args.tasks)
            print("\n| workers | tasks | tasks per minute | ideal (N x 1 worker) | scaling efficiency |")
            print("| ---: | ---: | ---: | ---: | ---: |")
            for n, rate in rates.items():
                print(f"| {n} | {args.tasks} | {rate:.1f} | {n * rates[1]:.1f} | {rate / (n * rates[1]):.0%} |")
            while len(cluster.workers) > 2:
                cluster.workers.pop().stop()
            rng = random.Random(1)
            kills = [one_kill(cluster, records, rng) for _ in range(args.kills)]
            print(
                f"\nSIGKILL of the worker running a task ({args.kills} times; heartbeat timeout {args.heartbeat:g}s, "
                f"checkpoint every {args.checkpoint_every} steps of 0.2s, retry after 0.5s):"
            )
            print("\n| kill | killed after step | resumed from step | steps lost | kill -> running again (s) |")
            print("| ---: | ---: | ---: | ---: | ---: |")
            for i, (seconds, lost, reached, resumed) in enumerate(kills, 1):
                print(f"| {i} | {reached} | {resumed} | {lost} | {seconds:.1f} |")
            secs = [k[0] for k in kills]
            print(
                f"\nrecovery: median {statistics.median(secs):.1f}s, max {max(secs):.1f}s; "
                f"steps lost: max {max(k[1] for k in kills)} (bound: {args.checkpoint_every})"
            )
        finally:
            cluster.stop()
    if args.keep:
        print(f"\nstate and logs: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
