"""Doubles for the robustness suite: hostile media hosts (``opendance.testing.http.HostileHost``),
an in-process server whose DNS the test controls, and the checks every hostile case ends with
(nothing left on disk)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from opendance.api.app import create_app
from opendance.config import Settings
from opendance.runner.datadir_lock import LOCK_NAME
from opendance.testing.http import HostileHost
from opendance.testing.server import LiveServer, free_port


@pytest.fixture(scope="session")
def open_server(tmp_path_factory):
    """An open server with no request rate limit: the fuzzers are each one very busy client."""
    env = {"OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(tmp_path_factory.mktemp("open"), env=env) as server:
        yield server


@pytest.fixture(scope="session")
def hostile_host():
    host = HostileHost()
    yield host
    host.close()


@pytest.fixture(scope="session")
def make_host():
    """More hostile hosts (other loopback addresses, a chosen port); all closed at the end."""
    made: list[HostileHost] = []

    def make(host: str = "127.0.0.1", port: int = 0) -> HostileHost:
        made.append(HostileHost(host, port))
        return made[-1]

    yield make
    for h in made:
        h.close()


class InProcessServer:
    """``create_app(settings, resolver=...)`` served by uvicorn on a thread of the test process:
    a real HTTP server whose DNS answers the test chooses (to play DNS rebinding)."""

    def __init__(self, settings: Settings, resolver: Callable | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, resolver=resolver)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="in-process-server", daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class NameMap:
    """A resolver: host -> a list of answers, one per lookup (the last repeats); lookups recorded."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        await asyncio.sleep(0)
        seq = self.answers.get(host)
        if not seq:
            raise OSError(f"{host} not found")
        return seq[min(self.calls.count(host) - 1, len(seq) - 1)]


def leftovers(*roots: Path) -> list[str]:
    """Files under ``roots`` that a refused request must never leave: task folders, partial
    writes, temporary files. The database, its journal, the server log, the readiness probe's
    marker file (storage `.readyz`) and the data dir's lock file are expected."""
    expected = {
        "opendance.db",
        "opendance.db-wal",
        "opendance.db-shm",
        "opendance.db-journal",
        "server.log",
        ".readyz",
        LOCK_NAME,
    }
    found = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if name not in expected:
                    found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# Test modules cannot import this conftest (importlib mode), so its helpers come as fixtures.


@pytest.fixture(scope="session")
def find_leftovers():
    return leftovers


@pytest.fixture(scope="session")
def error_body():
    return error_of


@pytest.fixture(scope="session")
def in_process_server():
    return InProcessServer


@pytest.fixture(scope="session")
def name_map():
    return NameMap
