"""New task rows inserted on the event loop itself, for the API's creates on a SQLite file.

A create's INSERT takes a fraction of a millisecond in SQLite (WAL, ``synchronous=NORMAL``: the
commit appends to the log, no fsync), while handing it to a thread and through SQLAlchemy's
session, statement and bulk-insert layers cost several times that (issue 14's profile: the
store's part of a create was 0.55 ms, SQLite's own 0.16). ``InlineInsert`` writes the same row
with the ``sqlite3`` module on a connection of its own, through a statement text built once per
set of columns, with the JSON columns encoded by ``jsoncol.dumps`` as the ORM path encodes them.

It only tries what can finish at once: it takes this process's write lock for the file
(store/writes.py) without waiting, and the database's own lock with no busy timeout. When
either is held (a worker's progress update, another process's write), or anything else goes
wrong (a duplicate idempotency key, a full disk, a value JSON cannot hold), nothing was written
and the caller writes the usual way (``TaskStore.create`` in a thread), which then waits, fails
or reports exactly as before.

The connection never checkpoints the WAL on the loop (``wal_autocheckpoint=0``, where a commit
that crosses 1,000 pages would copy them into the database and fsync it): after every
``CHECKPOINT_EVERY`` rows written here, a passive checkpoint runs in a thread instead. Writers
on the engine's own connections still checkpoint as SQLite does by default.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

from . import jsoncol
from .inline import JSON_COLUMNS, ThreadConnections

log = logging.getLogger("opendance.store")

CHECKPOINT_EVERY = 100  # rows: a few hundred pages of WAL (a row and its five index entries each)


class InlineInsert(ThreadConnections):
    """INSERTs of new task rows on the calling thread for one SQLite file (see the module docstring)."""

    def __init__(self, path: str, lock: Any) -> None:
        super().__init__(path)
        self._lock = lock  # writes.write_lock(engine): this process's writers of the file, in turn
        self._statements: dict[tuple[str, ...], str] = {}
        self.written = 0  # rows written here
        self._checkpointing: asyncio.Future[None] | None = None

    def _connect(self) -> sqlite3.Connection:
        # autocommit: each INSERT is its own transaction, committed when it returns.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        conn.execute("PRAGMA synchronous=NORMAL")  # as the engine's connections (durable across crashes in WAL mode)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    def insert(self, values: dict[str, Any]) -> bool:
        """Insert one task row (column -> value, the JSON columns as Python values). True when
        it was written; False when nothing was written and the caller must write it the usual way."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            columns = tuple(values)
            sql = self._statements.get(columns)
            if sql is None:
                sql = self._statements[columns] = (
                    f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                )
            params = [jsoncol.dumps(v) if c in JSON_COLUMNS else v for c, v in values.items()]
            self._conn().execute(sql, params)
        except (sqlite3.Error, ValueError) as exc:  # ValueError: JSON cannot hold a value (the usual way says so)
            log.debug("the inline insert of task %s fell back to a thread: %s", values.get("id"), exc)
            return False
        finally:
            self._lock.release()
        self.written += 1
        if self.written % CHECKPOINT_EVERY == 0:
            self._checkpoint_later()
        return True

    def _checkpoint_later(self) -> None:
        if self._checkpointing is not None and not self._checkpointing.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a direct call): checkpoint here
            self.checkpoint()
            return
        self._checkpointing = loop.run_in_executor(None, self.checkpoint)

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database, as far as no reader needs it (PASSIVE:
        never waits for a lock); failures are left for the next one."""
        try:
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("a WAL checkpoint did not run: %s", exc)
