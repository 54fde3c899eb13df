"""``opendance keys create|list|revoke`` and ``opendance usage``: the operator's commands, run on
the server's database (``--data-dir`` or ``OPENDANCE_DATABASE_URL``), as ``db upgrade`` is.

A thin shell over ``KeyService``; exit 0 done, 2 a bad request (the message is printed). The
new key is printed once, alone on stdout (so ``KEY=$(opendance keys create --name ci)`` works);
only its hash is stored.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OpenDanceError

EXIT_USAGE = 2


@contextmanager
def _keys(args: argparse.Namespace) -> Iterator:
    from .cli import _settings
    from .keys import KeyService
    from .store import TaskStore
    from .store.keys import KeyStore
    from .store.migrate import upgrade

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = TaskStore.from_url(settings.sqlalchemy_url)
    try:
        upgrade(store.engine)
        yield KeyService(KeyStore(store.engine), settings.models())
    finally:
        store.close()


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _table(header: list[str], rows: list[list[object]]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def cmd_create(args: argparse.Namespace) -> int:
    with _keys(args) as keys:
        key, plain = keys.create(
            args.name,
            max_concurrent=args.max_concurrent,
            seconds_per_day=args.seconds_per_day,
            models=args.models,
            admin=args.admin,
        )
    print(plain)
    print(f"key {key.name!r} created; it is shown only this once (the server keeps its hash)", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _keys(args) as keys:
        rows = keys.list(time.time())
    header = ["NAME", "KEY", "CREATED", "LAST USED", "ADMIN", "MAX CONCURRENT", "SECONDS/DAY", "MODELS", "TODAY", "REVOKED"]
    print(
        _table(
            header,
            [
                [
                    k.name,
                    k.hint + "...",
                    _when(k.created_at),
                    _when(k.last_used_at),
                    "yes" if k.admin else "no",
                    k.max_concurrent or "-",
                    k.seconds_per_day or "-",
                    ",".join(k.models) if k.models else "all",
                    f"{today} s",
                    _when(k.revoked_at),
                ]
                for k, today in rows
            ],
        )
    )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _keys(args) as keys:
        key = keys.revoke(args.name)
    print(f"key {key.name!r} revoked at {_when(key.revoked_at)} UTC")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from .api.keys_protocol import usage_item
    from .keys import day_range

    first, last = day_range(args.start, args.end, dt.datetime.now(dt.UTC).date())
    with _keys(args) as keys:
        owner = keys.owner_named(args.key) if args.key else None
        names = keys.names()
        rows = keys.usage(owner, first, last)
    items = [usage_item(r, names.get(r.owner, "(env key)" if r.owner else "(open)")) for r in rows]
    header = ["DATE", "KEY", "MODEL", "VIDEO SECONDS", "COMPLETED", "FAILED", "CANCELLED", "EXPIRED"]
    print(
        _table(
            header,
            [
                [i["date"], i["key"], i["model"], i["video_seconds"], i["completed"], i["failed"], i["cancelled"], i["expired"]]
                for i in items
            ],
        )
    )
    return 0


def _guarded(func):
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except OpenDanceError as exc:
            print(f"opendance: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
        except (OSError, ValueError) as exc:  # an unreadable models file, a database that cannot be opened
            print(f"opendance: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return run


def _store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", dest="data_dir", type=Path, help="the server's data directory (default ./opendance-data)")
    p.add_argument("--config", type=Path, help="the server's models TOML file (to check --models)")


def register(sub) -> None:
    keys = sub.add_parser("keys", help="API keys in the store: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a key and print it (once)")
    create.add_argument("--name", required=True, help="a name for the key (never reused)")
    create.add_argument("--max-concurrent", dest="max_concurrent", type=int, help="tasks queued or running at once")
    create.add_argument("--seconds-per-day", dest="seconds_per_day", type=int, help="seconds of video per UTC day")
    create.add_argument("--models", help="comma-separated models the key may use (default: all)")
    create.add_argument("--admin", action="store_true", help="may use the admin API and read every key's usage")
    _store_options(create)
    create.set_defaults(func=_guarded(cmd_create))
    listing = keys_sub.add_parser("list", help="every key: name, created, last used, limits, usage today")
    _store_options(listing)
    listing.set_defaults(func=_guarded(cmd_list))
    revoke = keys_sub.add_parser("revoke", help="revoke a key: a 401 from its next request on")
    revoke.add_argument("name")
    _store_options(revoke)
    revoke.set_defaults(func=_guarded(cmd_revoke))

    usage = sub.add_parser("usage", help="video seconds and tasks per day and model (as GET /v1/usage)")
    usage.add_argument("--key", help="one key's name (default: every key)")
    usage.add_argument("--from", dest="start", help="first UTC day, YYYY-MM-DD (default today)")
    usage.add_argument("--to", dest="end", help="last UTC day, YYYY-MM-DD (default today)")
    _store_options(usage)
    usage.set_defaults(func=_guarded(cmd_usage))
