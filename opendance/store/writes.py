"""One writing transaction at a time per SQLite database in this process.

SQLite lets one connection write at a time. A second writer that finds the database locked does
not queue: it sleeps in SQLite's busy handler with a growing back-off (1, 2, 5, 10 ... 100 ms)
and tries again, so under concurrent creates a write that waited behind a sub-millisecond one
took 0.1-0.9 s (measured with ``bench/bench_http.py --only create``: p99 near 1 s, and a
timeout). Writers of one process take this lock first, so they queue in order and each starts
the moment the previous one commits; the busy handler is left for writers in other processes
(a second server, ``opendance keys`` from a shell). PostgreSQL takes row locks, not a database
lock: no lock here.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

_LOCKS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def write_lock(engine: Engine) -> contextlib.AbstractContextManager[Any]:
    """The lock a writing transaction on ``engine`` holds (re-entrant: a write that makes another
    in the same thread does not wait for itself); a no-op for databases other than SQLite."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _GUARD:
        lock = _LOCKS.get(engine)
        if lock is None:
            lock = _LOCKS[engine] = threading.RLock()
        return lock


@contextlib.contextmanager
def writing(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for one writing transaction, with ``engine``'s write lock held throughout."""
    with write_lock(engine), session_factory() as session:
        yield session
