"""opendance's HTTP API against its framework's floor: requests/s and latency under ``wrk``.

    .venv/bin/python bench/bench_http.py                       # 3 rounds of 10 s per endpoint and server
    .venv/bin/python bench/bench_http.py --profile prof/       # then py-spy on opendance under the same load

Needs ``wrk`` (Debian: ``apt-get install -y wrk``) and, for ``--profile``, ``py-spy`` (the
``bench`` extra). Everything runs on 127.0.0.1:

- **opendance**: ``opendance serve`` as deployed (SQLite in WAL mode, local runner, one worker,
  an API key, ``info`` logging, so the access log is on), with the request-rate limit and the
  queue caps off so they do not measure themselves. Its models file has ``fast`` (a scenario
  model that completes at once: the tasks GET and list read) and ``parked`` (a scenario model
  whose first task sleeps for a day: the worker never takes another, so every create is stored
  and queued and nothing else runs; with the queue caps off the queue never refuses one).
- **floor** (``bench/floor_app.py``): the same FastAPI, Starlette and uvicorn, answering the same
  JSON bodies (copied from opendance's responses, checked equal) from one SQLite read.

For GET task (rotating over 20 completed tasks), list (20 items) and create (text-to-video on
``parked``), ``wrk -t1 -c16`` runs against each server in turn, rounds interleaved (opendance,
floor, then floor, opendance, ...). The table gives each server's median round and the ratios
opendance / floor (requests/s, p99); create is also given against the floor's GET rate, the
issue's yardstick. The machine is shared: take ratios, not absolute figures, and rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from opendance.testing.server import LiveServer, free_port

KEY = "bench-http-key"
MODELS = """
[models."fast"]
resolution = "480p"
fps = 8
[models."fast".default]
engine = "scenario"
behaviour = "sleep"
steps = 1
step_seconds = 0.0

[models."parked"]
resolution = "480p"
fps = 8
[models."parked".default]
engine = "scenario"
behaviour = "sleep"
steps = 1
step_seconds = 86400.0
"""
ENV = {
    "OPENDANCE_API_KEYS": KEY,
    "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0",
    "OPENDANCE_MAX_QUEUED_PER_KEY": "0",
    "OPENDANCE_MAX_QUEUED_TOTAL": "0",
    "OPENDANCE_LOG_LEVEL": "info",  # the default: uvicorn's access log on, as deployed
}
TASKS = 20
# The URL wrk is given (the GET scripts choose each request's path themselves; create posts here).
PATHS = {"get": "/", "list": "/", "create": "/v1/video/generations"}
ROTATE = """
paths = {%s}
i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""
CREATE = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "parked", "prompt": "a red fox trots through fresh snow at dawn"}'
"""


@dataclass
class Run:
    rps: float
    p50: float  # ms
    p99: float  # ms
    requests: int
    errors: int  # non-2xx responses and socket errors
    cpu_ms: float = 0.0  # the server process's CPU time (all its threads) per request


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid``, its threads and its child processes (the API
    processes of ``serve --workers``; the local runner's worker sleeps) so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        children = []
    total = own
    for child in children:
        try:
            total += cpu_seconds(child)
        except OSError:
            pass  # ended meanwhile
    return total


def measured(pid: int, url: str, script: Path, seconds: int, connections: int) -> Run:
    before = cpu_seconds(pid)
    run = wrk(url, script, seconds, connections)
    run.cpu_ms = (cpu_seconds(pid) - before) * 1000 / max(1, run.requests)
    return run


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


WRK = ["wrk"]  # with --pin: on its own CPU (main)


def wrk(url: str, script: Path, seconds: int, connections: int) -> Run:
    out = subprocess.run(
        [
            *WRK,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {KEY}",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    pct = dict(re.findall(r"^\s*(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    if "50" not in pct or "99" not in pct or "Requests/sec" not in out:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = (
        sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", m.group(0)))
        if (m := re.search(r"Socket errors:.*", out))
        else 0
    )
    return Run(
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), _ms(pct["50"]), _ms(pct["99"]), requests, non2xx + sock
    )


def _wait(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def setup_tasks(client: httpx.Client) -> list[str]:
    """``TASKS`` completed tasks on ``fast``, oldest first."""
    ids = [
        client.post("/v1/video/generations", json={"model": "fast", "prompt": f"bench task {i}"}).json()["id"]
        for i in range(TASKS)
    ]
    deadline = time.monotonic() + 300
    while any(client.get(f"/v1/video/generations/{t}").json()["status"] != "completed" for t in ids):
        if time.monotonic() > deadline:
            raise RuntimeError("the fast tasks did not complete in 300 s")
        time.sleep(0.5)
    return ids


def temporal_env(stack: contextlib.ExitStack, folder: Path) -> dict[str, str]:
    """A Temporal dev server for this run; the variables that put opendance (API and worker) on
    it, with one SQLite file and the local storage of the API's data directory shared."""
    from opendance.testing.servers import TemporalServer

    from opendance.store import TaskStore
    from opendance.store.migrate import upgrade

    temporal = TemporalServer(folder / "temporal").start()
    stack.callback(temporal.stop)
    (folder / "opendance").mkdir(parents=True, exist_ok=True)
    store = TaskStore.from_url(f"sqlite:///{folder / 'opendance' / 'opendance.db'}")
    upgrade(store.engine)  # before the worker starts: it reads the tasks of the API's database
    store.close()
    return {
        "OPENDANCE_RUNNER": "temporal",
        "OPENDANCE_TEMPORAL_ADDRESS": temporal.address,
        "OPENDANCE_DATABASE_URL": f"sqlite:///{folder / 'opendance' / 'opendance.db'}",
        "OPENDANCE_DATA_DIR": str(folder / "opendance"),
    }


def fill_floor(db_path: Path, client: httpx.Client, ids: list[str]) -> None:
    """The floor's rows: exactly the bodies opendance returns, in creation order."""
    from floor_app import connect

    db = connect(db_path)
    for task_id in ids:
        db.execute("INSERT INTO tasks (id, body) VALUES (?, ?)", (task_id, client.get(f"/v1/video/generations/{task_id}").text))
    db.close()


def check_same(opendance: str, floor: str, ids: list[str]) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    for path in (f"/v1/video/generations/{ids[0]}", "/v1/video/generations?limit=20"):
        a, b = (httpx.get(base + path, headers=headers).json() for base in (opendance, floor))
        if a != b:
            raise RuntimeError(f"the floor does not answer {path} as opendance does:\n{a}\n{b}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per endpoint and server, interleaved (0: profile only)")
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (one wrk thread)")
    parser.add_argument("--only", default="get,list,create", help="comma-separated endpoints: get, list, create")
    parser.add_argument(
        "--queue-caps",
        type=int,
        default=0,
        help="OPENDANCE_MAX_QUEUED_PER_KEY and _TOTAL (0: off); a cap too high to reach still costs its checks",
    )
    parser.add_argument(
        "--gil", action="store_true", help="with --profile: sample only the thread holding the GIL (py-spy --gil)"
    )
    parser.add_argument(
        "--profile", type=Path, help="afterwards, record py-spy profiles of opendance under each load into this folder"
    )
    parser.add_argument(
        "--runner",
        choices=["local", "temporal"],
        default="local",
        help="temporal: a Temporal dev server and one `opendance worker` for the fast model are started too",
    )
    parser.add_argument("--workers", type=int, default=1, help="opendance serve --workers (API processes; Temporal mode)")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=(os.cpu_count() or 1) >= 2,
        help="wrk on CPU 0, each server (all its threads) on CPU 1, so they never take each other's core "
        "(default on 2 or more CPUs)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench_http needs wrk: apt-get install -y wrk")
    endpoints = [e.strip() for e in args.only.split(",") if e.strip()]
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        folder = Path(tmp)
        (folder / "models.toml").write_text(MODELS)
        caps = {"OPENDANCE_MAX_QUEUED_PER_KEY": str(args.queue_caps), "OPENDANCE_MAX_QUEUED_TOTAL": str(args.queue_caps)}
        env = {**ENV, **caps}
        with contextlib.ExitStack() as stack:
            if args.runner == "temporal":
                from opendance.testing.cluster import WorkerProcess

                env.update(temporal_env(stack, folder))
                worker = WorkerProcess(folder / "worker", ["fast"], env=env, config=folder / "models.toml").start()
                stack.callback(worker.stop)
            server = stack.enter_context(
                LiveServer(folder / "opendance", config=folder / "models.toml", env=env, args=["--workers", str(args.workers)])
            )
            client = stack.enter_context(server.client(KEY))
            ids = setup_tasks(client)
            fill_floor(folder / "floor.db", client, ids)
            floor_port = free_port()
            floor_log = open(folder / "floor.log", "wb")
            floor = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).parent / "floor_app.py"),
                    "--db",
                    str(folder / "floor.db"),
                    "--port",
                    str(floor_port),
                ],
                stdout=floor_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            floor_url = f"http://127.0.0.1:{floor_port}"
            try:
                _wait(floor_url + "/v1/video/generations?limit=1")
                check_same(server.url, floor_url, ids)
                client.post("/v1/video/generations", json={"model": "parked", "prompt": "park the worker"}).raise_for_status()
                scripts = {
                    "get": ROTATE % ", ".join(f'"/v1/video/generations/{t}"' for t in ids),
                    "list": ROTATE % '"/v1/video/generations?limit=20"',
                    "create": CREATE,
                }
                for name, text in scripts.items():
                    (folder / f"{name}.lua").write_text(text)
                servers = {"opendance": (server.process.pid, server.url), "floor": (floor.pid, floor_url)}
                if args.pin:
                    pin(servers, args)
                results: dict[tuple[str, str], list[Run]] = {}
                load = [os.getloadavg()[0]]
                for endpoint in endpoints:
                    for r in range(args.rounds):
                        for name in servers if r % 2 == 0 else list(servers)[::-1]:
                            pid, url = servers[name]
                            run = measured(pid, url + PATHS[endpoint], folder / f"{endpoint}.lua", args.seconds, args.connections)
                            results.setdefault((endpoint, name), []).append(run)
                    load.append(os.getloadavg()[0])
                if args.rounds > 0:
                    report(results, endpoints, args, load)
                if args.profile is not None:
                    profile(servers, folder, endpoints, args)
            finally:
                os.killpg(floor.pid, signal.SIGTERM)
                floor.wait(10)
                floor_log.close()


def pin(servers: dict[str, tuple[int, str]], args: argparse.Namespace) -> None:
    """wrk on CPU 0; every thread of each server process on CPU 1 (its worker processes, which
    the bench never wakes, stay where they are). ``--workers`` above 1 shares CPU 1."""
    if shutil.which("taskset") is None:
        sys.exit("--pin needs taskset (util-linux); or pass --no-pin")
    WRK[:0] = ["taskset", "-c", "0"]
    for pid, _ in servers.values():
        subprocess.run(["taskset", "-a", "-cp", "1", str(pid)], check=True, capture_output=True)
        for child in _children(pid) if args.workers > 1 else []:
            subprocess.run(["taskset", "-a", "-cp", "1", str(child)], check=True, capture_output=True)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _median_run(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


def report(results: dict[tuple[str, str], list[Run]], endpoints: list[str], args: argparse.Namespace, load: list[float]) -> None:
    import platform

    import fastapi
    import starlette
    import uvicorn

    labels = {"get": "GET task", "list": "list (20 items)", "create": "create (text-to-video)"}
    print(
        f"wrk -t1 -c{args.connections}, {args.seconds} s per run, {args.rounds} interleaved rounds per endpoint and server"
        f"{', wrk on CPU 0 and each server on CPU 1' if args.pin else ''}; "
        f"{os.cpu_count()} CPUs, {platform.machine()}, Python {sys.version.split()[0]}, FastAPI {fastapi.__version__}, "
        f"Starlette {starlette.__version__}, uvicorn {uvicorn.__version__}; load average {' -> '.join(f'{x:.1f}' for x in load)}\n"
    )
    print(
        "| request | server | requests/s (median round) | p50 ms | p99 ms | server CPU ms per request | errors "
        "| opendance / floor, requests/s | opendance / floor, p99 |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for endpoint in endpoints:
        ours, floor = results[endpoint, "opendance"], results[endpoint, "floor"]
        rps_ratio = statistics.median(a.rps / b.rps for a, b in zip(ours, floor, strict=True))
        p99_ratio = statistics.median(a.p99 / b.p99 for a, b in zip(ours, floor, strict=True))
        for name, runs in (("opendance", ours), ("floor", floor)):
            m = _median_run(runs)
            ratios = f"| {rps_ratio:.2f}x | {p99_ratio:.2f}x |" if name == "opendance" else "| | |"
            cpu = statistics.median(r.cpu_ms for r in runs)
            print(
                f"| {labels[endpoint]} | {name} | {m.rps:.0f} | {m.p50:.1f} | {m.p99:.1f} | {cpu:.2f} | {sum(r.errors for r in runs)} {ratios}"
            )
    if "create" in endpoints and "get" in endpoints:
        create = statistics.median(r.rps for r in results["create", "opendance"])
        get = statistics.median(r.rps for r in results["get", "floor"])
        print(f"\nopendance create / floor GET, requests/s: {create / get:.2f}x")
    print(f"\nReproduce: {' '.join(['.venv/bin/python', 'bench/bench_http.py'] + sys.argv[1:])}")


def profile(servers: dict[str, tuple[int, str]], folder: Path, endpoints: list[str], args: argparse.Namespace) -> None:
    """py-spy on each server process (event loop and threads) during one more wrk run per
    endpoint: a raw profile per server and endpoint, and a summary by what the time went to."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = args.profile
    out.mkdir(parents=True, exist_ok=True)
    seconds = args.seconds
    summaries = []
    for endpoint in endpoints:
        for name, (pid, url) in servers.items():
            raw = out / f"{name}-{endpoint}.txt"
            cmd = [
                spy,
                "record",
                "-p",
                str(pid),
                "-d",
                str(seconds),
                "-r",
                "200",
                "--threads",
                "--nonblocking",
                "-f",
                "raw",
                "-o",
                str(raw),
            ]
            spy_proc = subprocess.Popen(cmd + (["--gil"] if args.gil else []), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # py-spy attaches
            run = measured(pid, url + PATHS[endpoint], folder / f"{endpoint}.lua", seconds - 2, args.connections)
            spy_proc.wait(seconds + 30)
            summaries.append((f"{name}, {endpoint}", run, summarize(raw)))
    text = render_profiles(summaries, args.gil)
    (out / "summary.md").write_text(text)
    print("\n" + text)


# What a busy sample was doing: the innermost frame of its stack that one of these tests
# matches decides (so a row read inside the ORM counts as SQLite, the ORM call around it does
# not). Frames are "function (file:line)" as py-spy writes them.
_HOP = (
    "Queue.put",
    "Condition.notify",
    "Condition._acquire_restore",
    "ThreadPoolExecutor.submit",
    "BaseEventLoop.run_in_executor",
    "to_thread ",
    "BaseEventLoop.call_soon_threadsafe",
    "BaseSelectorEventLoop._write_to_self",
    "BaseSelectorEventLoop._read_from_self",
    "_chain_future",
    "_copy_future_state",
    "_set_state",
    "Future.set_result",
    "Future._invoke_callbacks",
    "WorkerThread.",
    "run_sync_in_worker_thread",
    "run_in_threadpool",
    "run_sync ",
)
CATEGORIES: list[tuple[str, Callable[[str], bool]]] = [
    (
        "SQLite itself (DBAPI execute, fetch, commit)",
        lambda f: (
            f.startswith(
                (
                    "DefaultDialect.do_execute ",
                    "DefaultDialect.do_commit ",
                    "DefaultDialect.do_rollback ",
                    "CursorFetchStrategy.fetch",
                )
            )
            or "sqlite3/" in f
        ),
    ),
    (
        "SQLAlchemy: sessions, pool checkout, new connections",
        lambda f: (
            "sqlalchemy/" in f
            and any(
                k in f
                for k in (
                    "session.py",
                    "pool/",
                    "Session",
                    "_connection_for_bind",
                    "Engine.connect",
                    "Connection.__init__",
                    "event/",
                )
            )
            or "_sqlite_pragmas" in f
        ),
    ),
    (
        "SQLAlchemy: rows -> ORM objects",
        lambda f: "sqlalchemy/orm/loading.py" in f or "sqlalchemy/orm/state.py" in f or "instrumentation.py" in f,
    ),
    ("SQLAlchemy: statement compile and execute wrappers", lambda f: "sqlalchemy/" in f),
    ("thread hand-offs (to_thread, FastAPI's sync dependencies, loop wake-ups)", lambda f: f.startswith(_HOP)),
    ("JSON (encode responses, decode bodies)", lambda f: "json/" in f or "JSONResponse.render" in f),
    ("pydantic", lambda f: "pydantic" in f),
    ("logging (the access log)", lambda f: "logging/__init__" in f or "opendance/logging.py" in f),
    ("metrics middleware (prometheus_client)", lambda f: "prometheus_client" in f or "MetricsMiddleware" in f),
    ("auth + rate limit", lambda f: "opendance/api/auth.py" in f or "opendance/api/limits.py" in f),
    ("opendance: service, store mapping, rendering", lambda f: "opendance/" in f),
    ("FastAPI: dependencies, params, telemetry hooks", lambda f: "fastapi/" in f),
    ("Starlette: routing, middleware stack", lambda f: "starlette/" in f),
    ("socket I/O", lambda f: "_SelectorSocketTransport" in f),
    ("uvicorn + h11 (HTTP parsing, protocol)", lambda f: "uvicorn/" in f or "h11/" in f),
    ("asyncio event loop (scheduling)", lambda f: "asyncio/" in f or "selectors.py" in f),
]


# Leaf frames of a thread that waits (py-spy's own idle detection does not see these here).
IDLE = ("Condition.wait ", "Event.wait ", "EpollSelector.select ", "Queue.get ", "_worker (", "sleep ", "Thread.join ")


def summarize(raw: Path) -> dict:
    """Samples per thread group (event loop / thread pool / other) and per category; samples of
    waiting threads are counted apart."""
    groups: dict[str, int] = {}
    categories: dict[str, int] = {}
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        count = int(n)
        if frames[-1].startswith(IDLE):
            idle += count
            continue
        total += count
        thread = frames[0]
        group = (
            "event loop"
            if "MainThread" in thread
            else "asyncio.to_thread pool (io_*)"
            if "io_" in thread
            else "AnyIO worker threads (FastAPI's sync dependencies)"
            if "AnyIO worker" in thread
            else "other threads"
        )
        groups[group] = groups.get(group, 0) + count
        name = "other"
        for frame in reversed(frames[1:]):  # the innermost frame that names a category decides
            found = next((label for label, test in CATEGORIES if test(frame)), None)
            if found is not None:
                name = found
                break
        categories[name] = categories.get(name, 0) + count
    return {"total": total, "idle": idle, "groups": groups, "categories": categories}


def render_profiles(summaries: list[tuple[str, Run, dict]], gil: bool) -> str:
    if gil:
        lines = [
            "py-spy --gil (200 Hz: only the thread holding the GIL, so the Python work) of each server during one more wrk",
            "run per endpoint; each sample counted once, by its thread and by the innermost frame that names a category:",
            "",
        ]
    else:
        lines = [
            "py-spy (200 Hz, all threads) of each server during one more wrk run per endpoint; each busy sample counted",
            "once, by its thread and by the innermost frame that names a category (a thread waiting for the GIL counts as",
            "busy in the frame it waits in):",
            "",
        ]
    for endpoint, run, s in summaries:
        total = max(1, s["total"])
        # A busy sample stands for 5 ms of one thread's time (200 Hz).
        per_request = s["total"] * 5.0 / max(1, run.requests)
        lines.append(
            f"**{endpoint}** ({run.rps:.0f} requests/s during the profile, {run.cpu_ms:.2f} ms of CPU per request; "
            f"{s['total']} busy samples = {per_request:.2f} ms of thread time per request, {s['idle']} samples of "
            "waiting threads left out):"
        )
        lines.append("")
        lines.append("| where | share of busy samples | thread ms per request |")
        lines.append("| --- | ---: | ---: |")
        for group, n in sorted(s["groups"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| thread: {group} | {100 * n / total:.0f}% | {per_request * n / total:.2f} |")
        for name, n in sorted(s["categories"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {name} | {100 * n / total:.1f}% | {per_request * n / total:.2f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
