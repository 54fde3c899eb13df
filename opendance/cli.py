"""The ``opendance`` command: a thin shell over the settings, the server and the client."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from pathlib import Path

from .cli_models import plan_fits


def _settings(args: argparse.Namespace):
    from .config import Settings

    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**given)


def _models_file_ok(settings, command: str) -> bool:
    """Read the models file before anything starts; a bad one is a message, not a traceback."""
    try:
        settings.models()
    except (OSError, ValueError) as exc:  # TOML and validation errors are ValueErrors
        print(f"opendance {command}: {settings.config}: {exc}", file=sys.stderr)
        return False
    return True


def _raise_open_files_limit(connections: int) -> None:
    """Each connection is a file descriptor: lift the soft limit (up to the hard one) so the
    connection cap, not EMFILE on accept, is what refuses connections."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256  # the database, storage, worker pipes, logs
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass


def _can_run_models(settings, command: str, only=None) -> bool:
    """The packages and checkpoint folders the models need on this machine (engines.preflight)."""
    from .engines.preflight import problems

    missing = problems(settings.models(), only)
    for line in missing:
        print(f"opendance {command}: {line}", file=sys.stderr)
    return not missing


def _parts_ok(settings, command: str, **kw) -> bool:
    from .parts import message, missing

    if names := missing(settings, **kw):
        print(message(command, names), file=sys.stderr)
        return False
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .api.app import create_app
    from .api.connections import protocol_class
    from .logging import uvicorn_log_config

    from .api.workers import refusal

    settings = _settings(args)
    if (why := refusal(settings.runner, 1 if args.workers is None else args.workers)) is not None:
        print(f"opendance serve: {why}", file=sys.stderr)
        return 2
    if settings.runner == "local":  # one local server per data dir, before anything touches it
        from .runner.datadir_lock import DataDirBusy, hold

        try:
            hold(settings.data_dir)  # held until this process ends
        except DataDirBusy as exc:
            print(f"opendance serve: {exc}", file=sys.stderr)
            return 1
    if not _models_file_ok(settings, "serve") or not _parts_ok(settings, "serve"):
        return 2
    # The local runner runs the models in this server's own worker processes; with Temporal,
    # workers do (and check themselves).
    if settings.runner == "local" and not _can_run_models(settings, "serve"):
        return 2
    if settings.runner == "local" and not plan_fits(settings, "serve"):
        return 2
    try:
        app = create_app(settings)
    except ValueError as exc:  # the models file asks for what this server cannot run
        print(f"opendance serve: {settings.config}: {exc}", file=sys.stderr)
        return 2
    _raise_open_files_limit(settings.max_connections)
    workers = 1 if args.workers is None else args.workers
    served: Any = app  # the app, or (several workers) its import string
    http: Any
    if workers > 1:  # several API processes on one port (api/workers.py): apps built in each
        from .api import workers as api_workers

        api_workers.export({k: v for k, v in vars(args).items() if k in type(settings).model_fields and v is not None})
        served, http = api_workers.APP, api_workers.PROTOCOL
    else:
        # h11 with request-head and body deadlines and a connection cap (api/connections.py)
        http = protocol_class(settings.header_timeout, settings.max_connections, body_timeout=settings.body_timeout)
    uvicorn.run(
        served,
        factory=workers > 1,
        workers=workers if workers > 1 else None,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_level),  # keys, tokens and data: URIs redacted
        proxy_headers=True,
        timeout_graceful_shutdown=10,
        http=http,
        timeout_keep_alive=settings.keep_alive_timeout,  # a float works: it goes to call_later
    )
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from .store import TaskStore
    from .store.migrate import upgrade

    settings = _settings(args)
    if not _parts_ok(settings, "db upgrade", store_only=True):
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = TaskStore.from_url(settings.sqlalchemy_url)
    upgrade(store.engine)
    store.close()
    print(f"database at the newest schema: {settings.sqlalchemy_url.split('@')[-1]}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    settings = _settings(args)
    if not _models_file_ok(settings, "worker") or not _parts_ok(settings, "worker", temporal=True):
        return 2
    from .runner.temporal_worker import serve_worker

    if not _can_run_models(settings, "worker", settings.worker_models):
        return 2
    if not plan_fits(settings, "worker", settings.worker_models):
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve_worker(settings, list(settings.worker_models)))
    return 0


def cmd_dev_cluster(args: argparse.Namespace) -> int:
    from .devcluster import main as dev_cluster

    return dev_cluster(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opendance", description="Seedance-2.0-style video generation server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server (with its in-process runner by default)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--data-dir", dest="data_dir", type=Path, help="data directory (default ./opendance-data)")
    serve.add_argument("--config", type=Path, help="models TOML file (default: seed names on the preview engine)")
    serve.add_argument("--runner", choices=["local", "temporal"], help="who runs tasks (default local)")
    serve.add_argument("--storage", choices=["local", "s3"], help="where videos are stored (default local)")
    serve.add_argument(
        "--allow-hosts",
        dest="allow_hosts",
        metavar="HOSTS",
        help="comma-separated hosts, IPs or CIDR networks that media URLs may reach although private (e.g. 127.0.0.1)",
    )
    serve.add_argument("--device-memory", dest="device_memory", help="memory of each device for the memory plan, e.g. 80GiB")
    serve.add_argument(
        "--workers",
        type=int,
        help="API processes on the port (default 1; more only with --runner temporal, see docs/scale-out.md)",
    )
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply the migrations to OPENDANCE_DATABASE_URL")
    up.add_argument("--data-dir", dest="data_dir", type=Path)
    up.set_defaults(func=cmd_db_upgrade)

    worker = sub.add_parser("worker", help="run Temporal activities of some models on this machine (runner=temporal)")
    worker.add_argument("--models", dest="worker_models", nargs="+", metavar="NAME", help="models to serve (one task queue each)")
    worker.add_argument("--devices", help="comma-separated devices, one engine process each (default cpu)")
    worker.add_argument(
        "--slots",
        dest="worker_slots",
        type=int,
        help="tasks at once per model (default: its executor's: a device group each, cpu_slots, relay_concurrency)",
    )
    worker.add_argument("--data-dir", dest="data_dir", type=Path, help="scratch folder for encoding (default ./opendance-data)")
    worker.add_argument("--config", type=Path, help="models TOML file (the same as the API servers')")
    worker.add_argument("--storage", choices=["local", "s3"], help="where videos are stored (default local)")
    worker.add_argument("--temporal-address", dest="temporal_address", help="Temporal frontend host:port")
    worker.add_argument("--device-memory", dest="device_memory", help="memory of each device for the memory plan, e.g. 80GiB")
    worker.set_defaults(func=cmd_worker)

    from .devcluster import add_arguments as add_dev_cluster_arguments

    cluster = sub.add_parser("dev-cluster", help="PostgreSQL, Temporal, SeaweedFS S3, 2 API servers and N workers on 127.0.0.1")
    add_dev_cluster_arguments(cluster)
    cluster.set_defaults(func=cmd_dev_cluster)

    from .cli_keys import register as register_keys

    register_keys(sub)  # keys create|list|revoke, usage: on the server's database

    try:  # the client commands (generate, status, list, cancel, models), when present
        from .cli_client import register
    except ImportError:
        pass
    else:
        register(sub)
    from .cli_models import register as register_models_check

    models = sub.choices.get("models") or sub.add_parser("models", help="models commands")
    register_models_check(models)  # models check: the memory plan
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
