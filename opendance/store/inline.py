"""Task reads on the event loop itself, for the API's hot paths on a SQLite file.

GET task and list are one indexed read each (the primary key; ``owner, seq``). On SQLite in
WAL mode such a read takes microseconds and never waits for a writer, so handing it to a thread
(a queue, a wake-up, a future, a self-pipe write to wake the loop) costs several times the read
itself, and SQLAlchemy's session, statement and ORM layers cost more again. ``InlineReader``
reads the same columns with the ``sqlite3`` module on a connection of its own (one per thread,
``query_only``), through a statement text built once from ``TaskRow``'s columns, and turns each
row into a ``Task`` exactly as the ORM path does (the same JSON repair of ``jsoncol``, the same
``Task.from_mapping``).

Only what is cheap and indexed is read inline: a task by id, and a list page without status or
model filters. Anything else, any other database, and any ``sqlite3`` error (a busy or locked
file, a schema the statement does not fit) go the usual way: ``TaskStore``'s methods in a
thread, which then answer or fail exactly as before.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from types import SimpleNamespace
from typing import Any, Protocol, TypeVar

from sqlalchemy import JSON
from sqlalchemy.engine import make_url

from ..domain import UNFINISHED
from . import jsoncol
from .models import TaskRow

COLUMNS = tuple(c.name for c in TaskRow.__table__.columns)
SEQ, ID, VERSION = COLUMNS.index("seq"), COLUMNS.index("id"), COLUMNS.index("version")
JSON_COLUMNS = tuple(c.name for c in TaskRow.__table__.columns if isinstance(c.type, JSON))
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM tasks"
GET = _SELECT + " WHERE id = ?"
GET_OWNED = _SELECT + " WHERE id = ? AND owner = ?"
# A row's identity and change counter (``TaskRow.version``, bumped by a trigger on every UPDATE):
# what the memo of bodies needs to know a body is still right, without reading the whole row.
STAMP = "SELECT id, version FROM tasks WHERE id = ? AND owner = ?"
_LIGHT = "SELECT seq, id, version FROM tasks"
LIGHT_SEQ, LIGHT_ID, LIGHT_VERSION = 0, 1, 2
COUNT_UNFINISHED = f"SELECT count(*) FROM tasks WHERE raw_status IN ({', '.join('?' * len(UNFINISHED))})"
# ``after`` is a cursor: the seq of that task of the owner (no such task: no rows, as in TaskStore.list).
_AFTER = " AND seq {op} (SELECT seq FROM tasks WHERE id = ? AND owner = ?)"
_PAST = " AND seq {op} ?"
# Changes whenever another connection (any thread or process) commits to the file; never for
# this connection's own writes, and the reader's connections write nothing (query_only).
DATA_VERSION = "PRAGMA data_version"
T = TypeVar("T")
BUSY_MS = 0  # a read that would wait at all (a WAL being recovered) goes to a thread: the loop never waits on a lock


class PageMemo(Protocol):
    """Where ``InlineReader.page`` keeps whole pages (a bounded mapping)."""

    def get(self, key: tuple) -> Any: ...

    def __setitem__(self, key: tuple, value: Any) -> None: ...


class ThreadConnections:
    """A ``sqlite3`` connection to one file per calling thread, made by ``_connect`` on first
    use: the readers and the inline inserts of a file each keep their own (store/inline_insert.py)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def close(self) -> None:
        """Close the calling thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class InlineReader(ThreadConnections):
    """Reads tasks from one SQLite file on the calling thread (see the module docstring)."""

    _serials = itertools.count(1)  # which connection a data_version was read on (see ``snapshot``)

    @classmethod
    def for_url(cls, url: str) -> InlineReader | None:
        """A reader for a SQLite file URL; None for anything else (PostgreSQL, ``:memory:``,
        URLs with options this reader would not apply)."""
        parsed = make_url(url)
        if not parsed.drivername.startswith("sqlite") or parsed.query:
            return None
        database = parsed.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return cls(database)

    def _connect(self) -> sqlite3.Connection:
        # autocommit (isolation_level None): each SELECT is its own read transaction, ended
        # as soon as its rows are fetched (fetchall), so no reader holds a WAL snapshot.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_MS / 1000)
        conn.execute("PRAGMA query_only=1")
        self._local.serial = next(self._serials)
        return conn

    def snapshot(self) -> tuple[int, int]:
        """What the file holds, as a token: (this thread's connection, its ``PRAGMA
        data_version``). Two reads give the same token only when no connection committed a change
        between them, so what was read under one token is still right under it (a handful of
        microseconds: no table is read)."""
        conn = self._conn()
        return self._local.serial, conn.execute(DATA_VERSION).fetchone()[0]

    def raw(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        """The rows as the database gives them (``COLUMNS`` in order). Raises ``sqlite3.Error``
        for the caller to fall back on."""
        return self._conn().execute(sql, params).fetchall()

    def get(self, task_id: str, owner: str | None) -> list[tuple]:
        """The task's row (or none), raw."""
        return self.raw(GET, (task_id,)) if owner is None else self.raw(GET_OWNED, (task_id, owner))

    def count_unfinished(self, owner: str | None, leave_out: Collection[str]) -> int:
        """Queued or running tasks (of ``owner``, when given) but the ids in ``leave_out``, as
        ``TaskStore.count_unfinished`` counts them (the ``raw_status`` index)."""
        sql, params = COUNT_UNFINISHED, [*UNFINISHED]
        if owner is not None:
            sql, params = sql + " AND owner = ?", [*params, owner]
        if leave_out:
            sql, params = sql + f" AND id NOT IN ({', '.join('?' * len(leave_out))})", [*params, *leave_out]
        return self.raw(sql, params)[0][0]

    def stamp(self, task_id: str, owner: str) -> tuple[str, int] | None:
        """The owner's task's (id, version), or None: the memo's key, two small columns."""
        rows = self.raw(STAMP, (task_id, owner))
        return rows[0] if rows else None

    def page(
        self,
        owner: str,
        limit: int,
        after: str | None,
        newest_first: bool,
        convert: Callable[[tuple], T | None],
        known: Callable[[str, int], T | None] | None = None,
        pages: PageMemo | None = None,
    ) -> tuple[list[T], bool]:
        """One list page of ``convert``-ed rows and whether more follow, as ``TaskStore.list``:
        a row ``convert`` cannot read (None) is left out without shortening the page.

        With ``known(id, version)``, which gives the item of a row whose id and version it
        knows (a memo), the page is read as ids and versions and only the other rows whole, by
        a second statement: a row changed between the two reads is converted as it is then, one
        deleted between them is left out (it is gone).

        With ``pages`` as well (a memo of whole pages), a page read in one statement whose every
        row was readable is kept under its rows' (seq, id, version) and ``limit``: the next read
        that finds the same rows answers from it without a lookup per row. (A page that read
        past unreadable rows depends on rows beyond its first statement's: never kept.) Such a
        page is also kept under the query and the file's ``snapshot`` taken before reading it:
        while nothing commits to the file, the same query is answered from it without reading a
        row. (A commit between the snapshot and the reads changes the token every later read
        gets, so what the reads saw is never found under an older state.)"""
        query: tuple | None = None
        if pages is not None and known is not None:
            query = ("query", self.snapshot(), owner, limit, after, newest_first)
            if (kept := pages.get(query)) is not None:
                return kept
        items: list[T] = []
        past: int | None = None
        first = True
        while True:
            wanted = limit + 1 - len(items)
            params: list[Any] = [owner]
            if after is not None:
                params += [after, owner]
            if past is not None:
                params.append(past)
            sql = list_sql(newest_first, after is not None, past is not None, _SELECT if known is None else _LIGHT)
            rows = self.raw(sql, [*params, wanted])
            key = (tuple(rows), limit) if pages is not None and first and known is not None else None
            if key is not None and (kept := pages.get(key)) is not None:  # type: ignore[union-attr]
                return kept
            items += self._converted(rows, convert, known)
            if key is not None and len(items) == len(rows):  # every row readable: the rows decide the page
                page = items[:limit], len(items) > limit
                pages[key] = page  # type: ignore[index]
                if query is not None:
                    pages[query] = page  # type: ignore[index]
                return page
            first = False
            if len(rows) < wanted or len(items) > limit:
                break
            past = rows[-1][SEQ if known is None else LIGHT_SEQ]  # some rows were unreadable: read on past them
        return items[:limit], len(items) > limit

    def _converted(
        self, rows: list[tuple], convert: Callable[[tuple], T | None], known: Callable[[str, int], T | None] | None
    ) -> list[T]:
        if known is None:
            return [item for item in map(convert, rows) if item is not None]
        found = [known(row[LIGHT_ID], row[LIGHT_VERSION]) for row in rows]
        missing = [row[LIGHT_SEQ] for row, item in zip(rows, found, strict=True) if item is None]
        whole = {row[SEQ]: row for row in self.raw(by_seq_sql(len(missing)), missing)} if missing else {}
        items = []
        for row, item in zip(rows, found, strict=True):
            if item is None and row[LIGHT_SEQ] in whole:
                item = convert(whole[row[LIGHT_SEQ]])
            if item is not None:
                items.append(item)
        return items


def decoded(values: tuple) -> SimpleNamespace:
    """A raw row with attributes named as ``TaskRow``'s, its JSON columns read as the ORM reads
    them (``jsoncol.loads``; NULL stays None): what ``Task.from_row`` takes."""
    row = dict(zip(COLUMNS, values, strict=True))
    for name in JSON_COLUMNS:
        if row[name] is not None:
            row[name] = jsoncol.loads(row[name])
    return SimpleNamespace(**row)


def by_seq_sql(n: int) -> str:
    """The whole rows of ``n`` seqs (at most a page and one: 101, under SQLite's 999 variables)."""
    return _SELECT + f" WHERE seq IN ({', '.join('?' * n)})"


def list_sql(newest_first: bool, after: bool, past: bool, select: str = _SELECT) -> str:
    op = "<" if newest_first else ">"
    sql = select + " WHERE owner = ?"
    if after:
        sql += _AFTER.format(op=op)
    if past:
        sql += _PAST.format(op=op)
    return sql + f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
