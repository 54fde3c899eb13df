"""``opendance dev-cluster``: the scale-out topology on one machine, to try it locally.

PostgreSQL (a private cluster), the Temporal dev server, SeaweedFS with its S3 gateway, two API
servers behind no balancer (``--api-port`` and the next port) and ``--workers`` workers, all
on 127.0.0.1. State (database, Temporal, objects) lives under ``--dir`` and survives a restart
of the cluster. Ctrl-C stops everything, each process by its PID.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir", type=Path, default=Path("./opendance-cluster"), help="state of every server (default ./opendance-cluster)"
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--api-port", type=int, default=8000, help="first API server's port; the second uses the next one")
    p.add_argument("--config", type=Path, help="models TOML file (default: the seed names on the preview engine)")
    p.add_argument("--models", nargs="+", metavar="NAME", help="models the workers serve (default: every model)")
    p.add_argument("--s3-serving", choices=["redirect", "proxy"], default="redirect", help="how content is served from S3")


def _pg_dir(root: Path) -> Path | None:
    """PostgreSQL runs as 'postgres' when we are root; its folder must be reachable by it.
    Returns None (a throw-away folder) when ``root`` is not."""
    if os.geteuid() != 0:
        return root / "postgres"
    for parent in [root.resolve(), *root.resolve().parents]:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            return None
    return root / "postgres"


def main(args: argparse.Namespace) -> int:
    from .config import load_models
    from .store import TaskStore
    from .store.migrate import upgrade
    from .testing.server import LiveServer
    from .testing.cluster import WorkerProcess, cluster_env
    from .testing.servers import PostgresServer, SeaweedS3, TemporalServer

    root: Path = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    models = args.models or list(load_models(args.config))
    started: list = []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        pg_dir = _pg_dir(root)
        if pg_dir is None:
            print(f"note: {root} is not reachable by the postgres user; the database lives in a temporary folder this time")
        pg = PostgresServer(pg_dir, fast=True).start()
        started.append(pg)
        temporal = TemporalServer(root / "temporal").start()
        started.append(temporal)
        s3 = SeaweedS3(root / "s3").start()
        started.append(s3)
        env = cluster_env(pg.url, temporal, s3, content_serving=args.s3_serving, log_level="info")
        if args.config:
            env["OPENDANCE_CONFIG"] = str(args.config.resolve())
        store = TaskStore.from_url(pg.url)
        upgrade(store.engine)
        store.close()
        apis = []
        for i in range(2):
            api = LiveServer(root / f"api-{i + 1}", env=env, port=args.api_port + i, config=args.config, startup_timeout=120)
            started.append(api.start())
            apis.append(api)
        workers = []
        for i in range(args.workers):
            w = WorkerProcess(root / f"worker-{i + 1}", models, env=env, config=args.config)
            started.append(w.start(timeout=120))
            workers.append(w)
        print(_summary(root, pg, temporal, s3, apis, workers, models), flush=True)
        while not stop.is_set():
            for proc in started:
                if proc.process.poll() is not None:
                    print(f"a process of the cluster exited: {type(proc).__name__} (pid {proc.process.pid}); see its log")
                    stop.set()
            stop.wait(1.0)
    finally:
        for proc in reversed(started):
            proc.stop()
        print("dev cluster stopped")
    return 0


def _summary(root, pg, temporal, s3, apis, workers, models) -> str:
    lines = [
        "opendance dev cluster, all on 127.0.0.1 (Ctrl-C stops it):",
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
    ]
    return "\n".join(lines)
