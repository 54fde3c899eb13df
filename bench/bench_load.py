"""Load: N creates with polling from C concurrent clients on 127.0.0.1; no task lost or doubled.

    .venv/bin/python bench/bench_load.py [--tasks 2000] [--clients 32] [--engine scenario|preview]
                                         [--workers 2] [--poll 1.0] [--window 8]

A real server (subprocess, SQLite, local runner, ``--workers`` worker processes) makes every
task to the spec's MP4 (480p, 5 s at 8 fps). Each client has its own API key, creates its share
of the tasks as fast as it can, then polls its unfinished tasks (the oldest ``--window`` of them,
one GET each, then ``--poll`` seconds of sleep) until all are finished, and lists its own tasks
at the end. Every task has a callback_url on a local receiver.

Then every task is checked from five places: the clients' final GETs, each key's own list, the
store's rows (status, exactly one run), the storage directory (one video each, nothing partial)
and the callbacks (exactly one ``completed`` per task); plus the server's finished-task counter.
Printed: the figures for docs/benchmarks.md, and lost / duplicated counts (both must be 0).

The request rate and queue limits are turned off: this measures the server, not its refusals.
``--engine scenario`` makes cheap flat frames (the cost is the encoder and the server);
``--engine preview`` is the preview engine's text-to-video.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from opendance.testing.server import LiveServer

ENGINES = {
    "scenario": 'engine = "scenario"\nbehaviour = "sleep"\nsteps = 1\nstep_seconds = 0.0',
    "preview": 'engine = "preview"',
}


class CallbackReceiver:
    """Collects every callback POST (the task objects) on 127.0.0.1."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        lock = threading.Lock()
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    posts.append(json.loads(body))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Client:
    key: str
    created: list[str] = field(default_factory=list)
    final: dict[str, dict] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)
    create_ms: list[float] = field(default_factory=list)
    get_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def run_client(url: str, client: Client, n: int, hook: str, poll: float, window: int, deadline: float) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {client.key}"}, timeout=60) as c:
        for i in range(n):
            body = {"model": "load", "prompt": f"{client.key} task {i}", "extra_body": {"callback_url": hook}}
            t0 = time.perf_counter()
            r = c.post("/v1/video/generations", json=body)
            client.create_ms.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                client.errors.append(f"create {r.status_code}: {r.text[:200]}")
                continue
            client.created.append(r.json()["id"])
        waiting = list(client.created)
        while waiting and time.monotonic() < deadline:
            for task_id in waiting[:window]:
                t0 = time.perf_counter()
                r = c.get(f"/v1/video/generations/{task_id}")
                client.get_ms.append((time.perf_counter() - t0) * 1000)
                task = r.json()
                if r.status_code != 200:
                    client.errors.append(f"get {r.status_code}: {r.text[:200]}")
                elif task["status"] in ("completed", "failed"):
                    client.final[task_id] = task
            waiting = [t for t in waiting if t not in client.final]
            time.sleep(poll)
        after = None
        while True:  # the key's own list, every page
            page = c.get("/v1/video/generations", params={"limit": 100, **({"after": after} if after else {})}).json()
            client.listed += [t["id"] for t in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def run_load(
    tasks: int,
    clients: int,
    engine: str = "scenario",
    workers: int = 2,
    poll: float = 1.0,
    window: int = 8,
    timeout: float = 3600.0,
) -> dict:
    """Run the load and check every task; returns the figures and the problems found."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "models.toml").write_text(
            f'[models."load"]\nresolution = "480p"\nfps = 8\n[models."load".default]\n{ENGINES[engine]}\n'
        )
        keys = [f"load-key-{i:02d}" for i in range(clients)]
        env = {
            "OPENDANCE_API_KEYS": ",".join(keys),
            "OPENDANCE_ALLOW_HOSTS": "127.0.0.1",
            "OPENDANCE_DEVICES": ",".join(["cpu"] * workers),
            "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0",
            "OPENDANCE_MAX_QUEUED_PER_KEY": "0",
            "OPENDANCE_MAX_QUEUED_TOTAL": "0",
        }
        receiver = CallbackReceiver()
        try:
            with LiveServer(root / "data", env=env, config=root / "models.toml") as server:
                people = [Client(k) for k in keys]
                shares = [tasks // clients + (1 if i < tasks % clients else 0) for i in range(clients)]
                deadline = time.monotonic() + timeout
                threads = [
                    threading.Thread(target=run_client, args=(server.url, p, n, receiver.url, poll, window, deadline))
                    for p, n in zip(people, shares)
                ]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                time.sleep(2.0)  # the last callbacks are sent after the last status change
                metrics = httpx.get(server.url + "/metrics").text
            figures = {"tasks": tasks, "clients": clients, "engine": engine, "workers": workers, "wall_s": wall}
            problems = check(root / "data", people, receiver.posts, metrics)
        finally:
            receiver.close()
    creates = [ms for p in people for ms in p.create_ms]
    gets = [ms for p in people for ms in p.get_ms]
    figures.update(
        create_p50_ms=pct(creates, 50),
        create_p99_ms=pct(creates, 99),
        get_p50_ms=pct(gets, 50),
        get_p99_ms=pct(gets, 99),
        requests=len(creates) + len(gets),
        requests_per_s=(len(creates) + len(gets)) / wall,
        tasks_per_s=tasks / wall,
    )
    return {"figures": figures, **problems}


def check(data_dir: Path, people: list[Client], posts: list[dict], metrics: str) -> dict:
    created = [t for p in people for t in p.created]
    ids = set(created)
    problems: list[str] = [e for p in people for e in p.errors]
    with sqlite3.connect(f"file:{data_dir / 'opendance.db'}?mode=ro", uri=True) as conn:
        rows = {r[0]: r[1:] for r in conn.execute("select id, raw_status, attempts, video_key from tasks")}
    done = {t: task for p in people for t, task in p.final.items()}
    lost = sorted(ids - {t for t, task in done.items() if task["status"] == "completed"})
    completed_posts = Counter(p["id"] for p in posts if p["status"] == "completed")
    videos = Counter(p.parent.name for p in (data_dir / "files" / "tasks").glob("*/video.mp4"))
    for p in people:
        if sorted(p.listed) != sorted(p.created) or len(p.listed) != len(set(p.listed)):
            problems.append(f"{p.key}: its list is not exactly its tasks")
    for t in ids:
        status, attempts, video_key = rows.get(t, (None, None, None))
        if status != "COMPLETED" or attempts != 1 or not video_key:
            problems.append(f"{t}: store says {status}, {attempts} runs, video {video_key}")
        if videos[t] != 1:
            problems.append(f"{t}: {videos[t]} videos on disk")
        if completed_posts[t] != 1:
            problems.append(f"{t}: {completed_posts[t]} completed callbacks")
    if set(videos) - ids:
        problems.append(f"videos on disk for tasks nobody created: {sorted(set(videos) - ids)[:5]}")
    partial = [str(p) for p in data_dir.rglob("*") if p.name.startswith((".part-", "job-"))]
    finished = sum(
        float(v) for v in re.findall(r'^opendance_tasks_finished_total\{[^}]*raw_status="COMPLETED"[^}]*\} (\S+)', metrics, re.M)
    )
    if finished != len(ids):
        problems.append(f"the server counted {finished:g} completions for {len(ids)} tasks")
    duplicated = (len(created) - len(ids)) + sum(n - 1 for n in completed_posts.values() if n > 1) + (len(rows) - len(ids))
    return {"lost": len(lost), "duplicated": duplicated, "partial_files": partial, "problems": problems[:20]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--engine", choices=sorted(ENGINES), default="scenario")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (devices cpu,cpu,...)")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between a client's polling rounds")
    ap.add_argument("--window", type=int, default=8, help="unfinished tasks a client polls per round")
    a = ap.parse_args()
    result = run_load(a.tasks, a.clients, a.engine, a.workers, a.poll, a.window)
    f = result["figures"]
    print(
        f"| {f['tasks']} | {f['clients']} | {f['engine']} | {f['workers']} | {f['wall_s']:.0f} | {f['tasks_per_s']:.1f} "
        f"| {f['create_p50_ms']:.1f} / {f['create_p99_ms']:.1f} | {f['get_p50_ms']:.1f} / {f['get_p99_ms']:.1f} "
        f"| {f['requests']} | {f['requests_per_s']:.0f} | {result['lost']} | {result['duplicated']} |"
    )
    print(json.dumps(result, indent=1))
    if result["lost"] or result["duplicated"] or result["problems"] or result["partial_files"]:
        raise SystemExit("FAILED: tasks lost, duplicated or inconsistent (see above)")


if __name__ == "__main__":
    main()
