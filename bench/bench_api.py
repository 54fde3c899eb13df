"""API latency and throughput, and the serving overhead of a task.

    .venv/bin/python bench/bench_api.py [--clients 16] [--creates 1600] [--gets 8000] [--tasks 10]

Part 1 starts a real server (subprocess, SQLite, local runner) whose bench model runs on the
scenario engine and never finishes during the run, so the figures are the API's own: create
and GET latency p50/p99 and requests/s with N concurrent clients on 127.0.0.1.

Part 2 runs preview tasks one at a time on a second server and compares, per task, the wall
time the client sees (create -> completed, polling every 10 ms) and the store's own timeline
with the engine time the worker measured: overhead = wall - engine. Then, in the same run, it
makes the same videos in this process with ``run_job`` (no server) and times each phase: the
frames, their hand-off to libx264 (the RGB -> YUV conversion of RGB frames; the preview draws
YUV itself), x264 and the MP4 writer, the atomic store of the file. What
the server adds on top of ``run_job`` is the client's wall minus that.

    .venv/bin/python bench/bench_api.py --only overhead   # part 2 alone
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from opendance.testing.server import LiveServer

PARKED = """
[models."bench"]
resolution = "480p"
fps = 8
[models."bench".default]
engine = "scenario"
behaviour = "sleep"
steps = 100000
step_seconds = 1.0
"""

# The limits a public server wants (request rate, queue caps) would measure themselves here.
NO_LIMITS = {"OPENDANCE_RATE_LIMIT_PER_MINUTE": "0", "OPENDANCE_MAX_QUEUED_PER_KEY": "0", "OPENDANCE_MAX_QUEUED_TOTAL": "0"}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def hammer(url: str, clients: int, per_client: int, fn) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        mine = []
        with httpx.Client(base_url=url, timeout=30) as c:
            for j in range(per_client):
                t0 = time.perf_counter()
                fn(c, i, j)
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def part1(clients: int, creates: int, gets: int) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "models.toml"
        cfg.write_text(PARKED)
        with LiveServer(Path(d) / "data", config=cfg, env=NO_LIMITS) as server:
            ids: list[str] = []
            lock = threading.Lock()

            def create(c, i, j):
                r = c.post("/v1/video/generations", json={"model": "bench", "prompt": f"client {i} task {j}"})
                r.raise_for_status()
                with lock:
                    ids.append(r.json()["id"])

            def get(c, i, j):
                c.get(f"/v1/video/generations/{ids[(i * 7919 + j) % len(ids)]}").raise_for_status()

            hammer(server.url, clients, 10, create)  # warm-up
            create_lat, create_wall = hammer(server.url, clients, creates // clients, create)
            get_lat, get_wall = hammer(server.url, clients, gets // clients, get)
    rows = [
        "| request | clients | requests | p50 ms | p99 ms | requests/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, lat, wall in (("create (text-to-video)", create_lat, create_wall), ("get task", get_lat, get_wall)):
        rows.append(
            f"| {name} | {clients} | {len(lat)} | {pct(lat, 50) * 1000:.1f} | {pct(lat, 99) * 1000:.1f} | {len(lat) / wall:.0f} |"
        )
    return rows


def part2(tasks: int) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        with LiveServer(Path(d) / "data", env=NO_LIMITS) as server, server.client() as c:
            walls = []
            ids = []
            for i in range(tasks):
                t0 = time.perf_counter()
                tid = c.post("/v1/video/generations", json={"model": "jisudance2.0-480p", "prompt": f"overhead {i}"}).json()["id"]
                while c.get(f"/v1/video/generations/{tid}").json()["status"] not in ("completed", "failed"):
                    time.sleep(0.01)
                walls.append(time.perf_counter() - t0)
                ids.append(tid)
            db = sqlite3.connect(Path(d) / "data" / "opendance.db")
            rows = {
                r[0]: r[1:]
                for r in db.execute(
                    f"select id, created_at, started_at, completed_at, engine_seconds from tasks where id in ({','.join('?' * len(ids))})",
                    ids,
                )
            }
    phases = in_process(tasks)
    engine = [rows[t][3] for t in ids]
    store_wall = [rows[t][2] - rows[t][0] for t in ids]
    queue = [rows[t][1] - rows[t][0] for t in ids]
    over = [w - e for w, e in zip(walls, engine)]
    out = [
        f"| figure (preview, 480p 16:9, 5 s, 24 fps; median of {tasks} tasks) | seconds |",
        "| --- | --- |",
        f"| wall time seen by the client (create -> completed, 10 ms polling) | {statistics.median(walls):.3f} |",
        f"| wall time in the store (created_at -> completed_at) | {statistics.median(store_wall):.3f} |",
        f"| engine time (frames generated, measured in the worker) | {statistics.median(engine):.3f} |",
        f"| of which: queue -> running (dispatch to the worker) | {statistics.median(queue):.3f} |",
        f"| serving overhead = client wall - engine (encode + store + dispatch + polling) | {statistics.median(over):.3f} |",
        "| **the same video made in-process by `run_job` (no server), by phase:** | |",
        f"| run_job wall | {phases['wall']:.3f} |",
        f"| - engine (frames) | {phases['engine']:.3f} |",
        f"| - frames handed to libx264 (RGB -> YUV 4:2:0; the preview draws YUV, so only wrapping) | {phases['yuv']:.3f} |",
        f"| - x264 + MP4 writer (encode_mp4 minus the two above) | {phases['x264']:.3f} |",
        f"| - atomic store of the MP4 (put_file) | {phases['store']:.3f} |",
        f"| what the server adds (client wall - run_job wall): queue, messages, store writes, polling | {statistics.median(walls) - phases['wall']:.3f} |",
    ]
    return out


def in_process(tasks: int) -> dict[str, float]:
    """Median seconds per phase of ``run_job`` on the preview engine, in this process."""
    from opendance.domain import Mode
    from opendance.engines.base import Job, engine_class
    from opendance.media import encode
    from opendance.runner.execute import run_job
    from opendance.storage import LocalStorage

    spec = {"engine": "preview"}
    engine = engine_class("preview")(spec, "cpu")
    clock: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                clock[name] = clock.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    samples: dict[str, list[float]] = {k: [] for k in ("wall", "engine", "yuv", "x264", "store")}
    with tempfile.TemporaryDirectory() as d:
        storage = LocalStorage(Path(d))
        original_yuv, original_encode, original_put = encode._video_frame, encode.encode_mp4, storage.put_file
        encode._video_frame = timed("yuv", original_yuv)
        storage.put_file = timed("store", original_put)
        import opendance.runner.execute as execute

        execute.encode_mp4 = timed("encode", original_encode)
        try:
            for i in range(tasks + 1):  # the first one warms up
                clock.clear()
                job = Job(
                    task_id=f"task_{i}",
                    model="m",
                    mode=Mode.TEXT_TO_VIDEO,
                    prompt=f"overhead {i}",
                    width=864,
                    height=480,
                    fps=24,
                    duration=5,
                    seed=i,
                    engine=spec,
                )
                t0 = time.perf_counter()
                result = run_job(job, engine, storage, progress=lambda p: None, cancelled=lambda: False)
                if i:
                    samples["wall"].append(time.perf_counter() - t0)
                    samples["engine"].append(result.engine_seconds)
                    samples["yuv"].append(clock["yuv"])
                    samples["x264"].append(clock["encode"] - clock["yuv"] - result.engine_seconds)
                    samples["store"].append(clock["store"])
        finally:
            encode._video_frame, execute.encode_mp4 = original_yuv, original_encode
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--creates", type=int, default=1600)
    ap.add_argument("--gets", type=int, default=8000)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--only", choices=["latency", "overhead"])
    a = ap.parse_args()
    if a.only != "overhead":
        print("\n".join(part1(a.clients, a.creates, a.gets)))
        print()
    if a.only != "latency":
        print("\n".join(part2(a.tasks)))


if __name__ == "__main__":
    main()
