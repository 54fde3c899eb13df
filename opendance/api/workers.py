"""``opendance serve --workers N``: N API processes on one port (uvicorn's supervisor).

Only in Temporal mode: there the API process holds no task state (Temporal and the workers run
the tasks; the database, the storage and the link-signing secret are shared), so N of them on
one port are N of the API servers of docs/scale-out.md that happen to share a socket. In local
mode the API process is also the runner (its own worker processes, the queue in memory, one
process per data directory), so a second one would run every queued task twice:
``refusal`` says so, and ``serve`` exits 2.

uvicorn starts each worker process afresh (spawn) and gives it its configuration by pickling,
so the app and the HTTP protocol are named by import strings, built in the worker from the
settings the parent exported as ``OPENDANCE_*`` variables (``export``):

- ``opendance.api.workers:app`` (``factory=True``): ``create_app(Settings())``;
- ``opendance.api.workers:Protocol``: the connection-limited h11 protocol of
  ``api/connections.py`` with the settings' header and body deadlines and connection cap (per process).
"""

from __future__ import annotations

import os
from typing import Any

APP = "opendance.api.workers:app"
PROTOCOL = "opendance.api.workers:Protocol"


def refusal(runner: str, workers: int) -> str | None:
    """Why this server cannot run ``workers`` API processes (None: it can)."""
    if workers < 1:
        return f"--workers must be at least 1; got {workers}"
    if workers > 1 and runner != "temporal":
        return (
            f"--workers {workers} needs Temporal mode (--runner temporal): the local runner runs tasks inside the "
            "API process, so a second process would run each task again"
        )
    return None


def export(given: dict[str, Any]) -> None:
    """The settings given as flags, as the ``OPENDANCE_*`` variables the worker processes read."""
    for name, value in given.items():
        os.environ[f"OPENDANCE_{name.upper()}"] = str(value)


def app():
    """The app of one worker process (uvicorn's factory)."""
    from ..config import Settings
    from .app import create_app

    return create_app(Settings())


def __getattr__(name: str):
    # ``Protocol`` is built on first use in each worker (nothing exists at import time).
    if name == "Protocol":
        from ..config import Settings
        from .connections import protocol_class

        settings = Settings()
        return protocol_class(settings.header_timeout, settings.max_connections, body_timeout=settings.body_timeout)
    raise AttributeError(name)
