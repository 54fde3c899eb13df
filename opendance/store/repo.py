"""The task store: every read and write of task state goes through ``TaskStore``.

Transitions are guarded in the database itself (``UPDATE ... WHERE raw_status IN (...)``) so
two processes (API and runner, or several API servers on PostgreSQL) can never move a task
backwards, and ``progress`` only ever grows.
"""

from __future__ import annotations

import builtins

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from collections.abc import Callable, Collection, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import BigInteger, case, cast, create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..domain import TRANSITIONS, UNFINISHED, IllegalTransition, RawStatus, Status
from . import jsoncol
from .inline import ID, InlineReader, decoded
from .keys import roll_up
from .models import MetaRow, TaskRow, UsageRollupRow
from .inline_insert import InlineInsert
from .writes import write_lock, writing

log = logging.getLogger("opendance.store")


# ``Task.ignored_fields`` is kept inside the ``job`` JSON column under this key (it has no column
# of its own, to need no migration); ``Task.job`` never holds it, so runners never see it.
IGNORED_FIELDS_KEY = "_ignored_fields"


@dataclass(frozen=True)
class Task:
    """A snapshot of one task row."""

    id: str
    owner: str
    model: str
    mode: str
    status: Status
    raw_status: RawStatus
    progress: int
    created_at: float
    updated_at: float
    started_at: float | None
    completed_at: float | None
    error_code: str | None
    error_message: str | None
    error_type: str | None
    duration: int
    aspect_ratio: str
    width: int
    height: int
    fps: int
    seed: int
    engine: str
    job: dict[str, Any]
    extra_body: dict[str, Any]
    callback_url: str | None
    base_url: str
    video_key: str | None
    last_frame_key: str | None
    attempts: int
    engine_seconds: float | None
    idempotency_key: str | None
    request_hash: str | None
    ignored_fields: tuple[str, ...] = ()  # unknown top-level fields of the create request
    expires_at: float | None = None
    api: str | None = None
    callback_pending: str | None = None  # the raw status whose callback is not yet delivered

    @classmethod
    def from_row(cls, row: TaskRow | SimpleNamespace) -> Task:
        """From an ORM row, or anything with the same attributes (``inline`` rows)."""
        return cls.from_values({name: getattr(row, name) for name in _ROW_FIELDS})

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Task:
        """From the row's values by column name (``values`` is taken over, not copied)."""
        values["status"] = Status(values["status"])
        values["raw_status"] = RawStatus(values["raw_status"])
        if isinstance(values["job"], dict) and IGNORED_FIELDS_KEY in values["job"]:
            values["job"] = dict(values["job"])
            ignored = values["job"].pop(IGNORED_FIELDS_KEY)
            values["ignored_fields"] = tuple(str(name) for name in ignored) if isinstance(ignored, list) else ()
        return cls(**values)


_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(Task) if f.name != "ignored_fields")


# What a task row holds for a column an INSERT does not name (the models' defaults, else NULL).
_CREATE_DEFAULTS: dict[str, Any] = {
    **{c.name: None for c in TaskRow.__table__.columns},
    "owner": "",
    "base_url": "",
    "progress": 0,
    "attempts": 0,
    "version": 0,
}


def _new_row(fields: dict[str, Any], ignored_fields: Collection[str]) -> dict[str, Any]:
    """The values a new (queued) task row is inserted with: ``fields`` and the columns every new
    task starts with."""
    now = time.time()
    if ignored_fields:
        fields = {**fields, "job": {**fields["job"], IGNORED_FIELDS_KEY: list(ignored_fields)}}
    return {
        "status": Status.QUEUED.value,
        "raw_status": RawStatus.QUEUED.value,
        "callback_pending": RawStatus.QUEUED.value if fields.get("callback_url") else None,
        "progress": 0,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        **fields,
    }


def _snapshot(values: dict[str, Any]) -> Task:
    """The task a row inserted with ``values`` reads back as: the values written, the columns
    not given at their defaults."""
    merged = {**_CREATE_DEFAULTS, "extra_body": {}, **values}
    return Task.from_values({name: merged[name] for name in _ROW_FIELDS})


def readable(values: tuple) -> Task | None:
    """A raw row of ``store.inline`` as a task; None (logged) when it cannot be read."""
    try:
        return Task.from_row(decoded(values))
    except Exception:
        log.exception("task %s cannot be read; left out of the list", values[ID])
        return None


def _readable(rows: Sequence[TaskRow]) -> list[Task]:
    """The rows as tasks, leaving out (and logging) any row that cannot be read, so that one bad
    row never breaks a list."""
    tasks = []
    for row in rows:
        try:
            tasks.append(Task.from_row(row))
        except Exception:
            log.exception("task %s cannot be read; left out of the list", row.id)
    return tasks


class DuplicateIdempotencyKey(Exception):
    """Another task of this owner already holds the idempotency key."""


INLINE_LEAVE_OUT = 500  # ids one inline count may leave out (SQLite binds up to 32766 variables)
WRITE_PROBE_KEY = "write_probe"  # the meta row check_writable rewrites


class StoreWriteFailed(OSError):
    """The database did not take a write (a full disk, a read-only file, a lost connection):
    the server's trouble, not the request's."""


def make_engine(url: str) -> Engine:
    # Strict writes and forgiving reads of the JSON columns (jsoncol): one row that holds what
    # JSON cannot render must not break every read of its owner's tasks.
    json_args = {"json_serializer": jsoncol.dumps, "json_deserializer": jsoncol.loads}
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8, max_overflow=16, **json_args
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **json_args)


class TaskStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)
        # SQLite files: GET task and unfiltered list pages read on the event loop (store/inline.py).
        self.inline = InlineReader.for_url(str(engine.url))
        # ... and creates without a quota check insert on it, where the file takes them at once.
        self.inline_insert = None if self.inline is None else InlineInsert(self.inline.path, write_lock(engine))

    def _writing(self) -> contextlib.AbstractContextManager[Session]:
        """A session for a writing transaction (store/writes.py: one at a time per SQLite file)."""
        return writing(self.engine, self._session)

    @classmethod
    def from_url(cls, url: str) -> TaskStore:
        return cls(make_engine(url))

    def close(self) -> None:
        if self.inline is not None:
            self.inline.close()
        if self.inline_insert is not None:
            self.inline_insert.close()
        self.engine.dispose()

    def ping(self) -> None:
        with self._session() as s:
            s.execute(select(1))

    def check_writable(self) -> None:
        """Raise if the database cannot take a write now (a full disk under SQLite): one tiny
        committed write to ``meta`` (/readyz; a read alone succeeds on a full disk)."""
        with self._writing() as s:
            row = s.get(MetaRow, WRITE_PROBE_KEY)
            if row is None:
                s.add(MetaRow(key=WRITE_PROBE_KEY, value=repr(time.time())))
            else:
                row.value = repr(time.time())
            try:
                s.commit()
            except IntegrityError:  # another server's first probe made the row meanwhile
                s.rollback()

    # -- create / read -------------------------------------------------------------------

    def create(
        self, *, check: Callable[[Session], None] | None = None, ignored_fields: Collection[str] = (), **fields: Any
    ) -> Task:
        """Insert a queued task. ``check`` runs first in the same transaction (a key's quota:
        it may lock rows and raise, and then nothing is written)."""
        values = _new_row(fields, ignored_fields)
        # A Core INSERT (the ORM's unit of work, identity map and instance state cost more than
        # the INSERT itself).
        with self._writing() as s:
            if check is not None:
                check(s)
            try:
                s.execute(insert(TaskRow), values)
                s.commit()
            except IntegrityError as exc:
                if fields.get("idempotency_key"):
                    raise DuplicateIdempotencyKey() from exc
                raise
            except OperationalError as exc:  # "database or disk is full" and the like: no row was made
                raise StoreWriteFailed(f"the task store did not take the write ({exc.orig})") from exc
            return _snapshot(values)

    def create_at_once(
        self, *, check: Callable[[Session], None] | None = None, ignored_fields: Collection[str] = (), **fields: Any
    ) -> Task | None:
        """``create`` on the calling thread (the event loop), where the database takes the row
        at once (store/inline_insert.py: a SQLite file whose write lock is free) and there is no
        ``check`` to run. None: nothing was written; call ``create`` (in a thread), which decides."""
        if self.inline_insert is None or check is not None:
            return None
        values = _new_row(fields, ignored_fields)
        return _snapshot(values) if self.inline_insert.insert(values) else None

    def get(self, task_id: str, owner: str | None = None) -> Task | None:
        q = select(TaskRow).where(TaskRow.id == task_id)
        if owner is not None:
            q = q.where(TaskRow.owner == owner)
        with self._session() as s:
            row = s.scalars(q).first()
            return Task.from_row(row) if row else None

    def get_by_idempotency_key(self, owner: str, key: str) -> Task | None:
        q = select(TaskRow).where(TaskRow.owner == owner, TaskRow.idempotency_key == key)
        with self._session() as s:
            row = s.scalars(q).first()
            return Task.from_row(row) if row else None

    def list(
        self,
        owner: str,
        *,
        limit: int = 20,
        after: str | None = None,
        status: Status | None = None,
        model: str | None = None,
        newest_first: bool = True,
    ) -> tuple[list[Task], bool]:
        """One page of the owner's tasks and whether more follow. ``after`` is a task id (cursor).

        A row that cannot be read is left out (and logged) without shortening the page: the
        next rows take its place, so pages stay full and ``has_more`` stays true to the rows.
        """
        q = select(TaskRow).where(TaskRow.owner == owner)
        if after is not None:
            cursor = select(TaskRow.seq).where(TaskRow.id == after, TaskRow.owner == owner).scalar_subquery()
            q = q.where(TaskRow.seq < cursor if newest_first else TaskRow.seq > cursor)
        if status is not None:
            q = q.where(TaskRow.status == status.value)
        if model is not None:
            q = q.where(TaskRow.model == model)
        q = q.order_by(TaskRow.seq.desc() if newest_first else TaskRow.seq.asc())
        tasks: list[Task] = []
        with self._session() as s:
            while True:
                wanted = limit + 1 - len(tasks)
                rows = s.scalars(q.limit(wanted)).all()
                tasks += _readable(rows)
                if len(rows) < wanted or len(tasks) > limit:
                    break
                last = rows[-1].seq  # some rows were unreadable: read on past them
                q = q.where(TaskRow.seq < last if newest_first else TaskRow.seq > last)
        return tasks[:limit], len(tasks) > limit

    # -- the API's hot reads (async: inline on SQLite, else in a thread) --------------------

    async def aget(self, task_id: str, owner: str | None = None) -> Task | None:
        """``get``, read on the calling event loop where the database allows it (store/inline.py)."""
        if self.inline is not None:
            try:
                rows = self.inline.get(task_id, owner)
            except sqlite3.Error:
                pass  # busy, locked, or a schema the statement does not fit: the usual way decides
            else:
                return Task.from_row(decoded(rows[0])) if rows else None
        return await asyncio.to_thread(self.get, task_id, owner)

    async def alist(
        self,
        owner: str,
        *,
        limit: int = 20,
        after: str | None = None,
        status: Status | None = None,
        model: str | None = None,
        newest_first: bool = True,
    ) -> tuple[builtins.list[Task], bool]:
        """``list``, read on the calling event loop for pages without filters where the
        database allows it (store/inline.py); the same rows, order, cursor and skipping."""
        if self.inline is not None and status is None and model is None:
            try:
                return self.inline.page(owner, limit, after, newest_first, readable)
            except sqlite3.Error:
                pass
        return await asyncio.to_thread(
            self.list, owner, limit=limit, after=after, status=status, model=model, newest_first=newest_first
        )

    def search(
        self,
        owner: str,
        *,
        offset: int,
        limit: int,
        raw_status: RawStatus | None = None,
        ids: Collection[str] = (),
        model: str | None = None,
        service_tier: str | None = None,
    ) -> tuple[builtins.list[Task], int]:
        """One page of the owner's tasks, newest first, by offset, and how many match in all
        (Ark's list). ``service_tier`` is read from ``extra_body`` ("default" when absent)."""
        q = select(TaskRow).where(TaskRow.owner == owner)
        if raw_status is not None:
            q = q.where(TaskRow.raw_status == raw_status.value)
        if ids:
            q = q.where(TaskRow.id.in_(list(ids)))
        if model is not None:
            q = q.where(TaskRow.model == model)
        if service_tier is not None:
            q = q.where(func.coalesce(TaskRow.extra_body["service_tier"].as_string(), "default") == service_tier)
        with self._session() as s:
            total = int(s.scalar(select(func.count()).select_from(q.subquery())) or 0)
            rows = s.scalars(q.order_by(TaskRow.seq.desc()).offset(offset).limit(limit)).all()
        return _readable(rows), total

    def expiring(self, now: float, limit: int = 500) -> builtins.list[Task]:
        """Queued or running tasks whose ``expires_at`` has passed."""
        q = (
            select(TaskRow)
            .where(
                TaskRow.expires_at.is_not(None),
                TaskRow.expires_at <= now,
                TaskRow.raw_status.in_(UNFINISHED),
            )
            .order_by(TaskRow.expires_at)
            .limit(limit)
        )
        with self._session() as s:
            return [Task.from_row(r) for r in s.scalars(q).all()]

    def unfinished(self) -> builtins.list[Task]:
        """Tasks queued or running, oldest first (what a runner must take up again on start)."""
        q = select(TaskRow).where(TaskRow.raw_status.in_(UNFINISHED)).order_by(TaskRow.seq)
        with self._session() as s:
            return _readable(s.scalars(q).all())

    def count_unfinished(self, owner: str | None = None, leave_out: Collection[str] = ()) -> int:
        """Queued or running tasks (of ``owner``, when given), not counting the ids in ``leave_out``."""
        q = select(func.count()).select_from(TaskRow).where(TaskRow.raw_status.in_(UNFINISHED))
        if owner is not None:
            q = q.where(TaskRow.owner == owner)
        if leave_out:
            q = q.where(TaskRow.id.not_in(list(leave_out)))
        with self._session() as s:
            return int(s.scalar(q) or 0)

    def unfinished_counts(self, owner: str, leave_out: Collection[str] = ()) -> tuple[int, int]:
        """(the owner's, everyone's) ``count_unfinished`` without ``leave_out``: what the queue
        caps compare (api/limits.py). Blocking."""
        return self.count_unfinished(owner, leave_out), self.count_unfinished(None, leave_out)

    def unfinished_counts_at_once(self, owner: str, leave_out: Collection[str] = ()) -> tuple[int, int] | None:
        """``unfinished_counts`` read on the calling thread (the event loop) where the store
        reads inline; None where it cannot (another database, a busy file, more ids to leave out
        than one statement takes): then count in a thread."""
        if self.inline is None or len(leave_out) > INLINE_LEAVE_OUT:
            return None
        try:
            return self.inline.count_unfinished(owner, leave_out), self.inline.count_unfinished(None, leave_out)
        except sqlite3.Error:
            return None

    def stored_input_bytes(self, owner: str) -> int:
        """Bytes of inputs the owner's tasks keep stored (``job.input_bytes``, 0 in tasks made
        before it was recorded)."""
        total = func.coalesce(func.sum(cast(TaskRow.job["input_bytes"].as_string(), BigInteger)), 0)
        with self._session() as s:
            return int(s.scalar(select(total).where(TaskRow.owner == owner)) or 0)

    def count_by_status(self) -> dict[str, int]:
        q = select(TaskRow.raw_status, func.count()).group_by(TaskRow.raw_status)
        with self._session() as s:
            return {k: int(v) for k, v in s.execute(q).all()}

    def finished_counts(self) -> dict[tuple[str, str], int]:
        """Tasks that ever reached each final state, per (model, raw status): the rows, plus what
        deleted ones were (rolled up in the delete's transaction), so it never goes down."""
        ended = [s.value for s in RawStatus if s.is_terminal()]
        q = select(TaskRow.model, TaskRow.raw_status, func.count()).where(TaskRow.raw_status.in_(ended))
        rolled = [getattr(UsageRollupRow, s.lower()) for s in ended]
        r = select(UsageRollupRow.model, *(func.sum(c) for c in rolled)).group_by(UsageRollupRow.model)
        counts: dict[tuple[str, str], int] = {}
        with self._session() as s:
            for model, raw, n in s.execute(q.group_by(TaskRow.model, TaskRow.raw_status)).all():
                counts[(model, raw)] = int(n)
            for model, *sums in s.execute(r).all():
                for raw, n in zip(ended, sums):
                    if n:
                        counts[(model, raw)] = counts.get((model, raw), 0) + int(n)
        return counts

    # -- transitions ---------------------------------------------------------------------

    def transition(self, task_id: str, to: RawStatus, **fields: Any) -> Task:
        """Move a task to ``to`` if the lifecycle allows it from its current state.

        Timestamps are set here and only here: RUNNING sets ``started_at`` once (and counts an
        attempt), a terminal state sets ``completed_at``; COMPLETED sets progress 100.
        Raises ``IllegalTransition`` (or ``KeyError`` for an unknown task).
        """
        allowed_from = [s.value for s, targets in TRANSITIONS.items() if to in targets]
        now = time.time()
        values: dict[str, Any] = {
            "raw_status": to.value,
            "status": to.status.value,
            "updated_at": now,
            # In the same write as the change: a crash before the POST leaves it due, not lost.
            "callback_pending": case((TaskRow.callback_url.is_not(None), to.value), else_=None),
            **fields,
        }
        if to is RawStatus.RUNNING:
            values["started_at"] = func.coalesce(TaskRow.started_at, now)
            values["attempts"] = TaskRow.attempts + 1
        if to.is_terminal():
            values["completed_at"] = now
        if to is RawStatus.COMPLETED:
            values["progress"] = 100
        with self._writing() as s:
            result = s.execute(
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.raw_status.in_(allowed_from))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            s.commit()
            if result.rowcount == 0:  # type: ignore[attr-defined]  # an UPDATE's CursorResult
                current = s.scalars(select(TaskRow.raw_status).where(TaskRow.id == task_id)).first()
                if current is None:
                    raise KeyError(task_id)
                raise IllegalTransition(f"{task_id}: {current} -> {to.value} is not allowed")
        task = self.get(task_id)
        assert task is not None
        return task

    def fail(self, task_id: str, to: RawStatus, code: str, message: str, error_type: str = "server_error") -> Task:
        return self.transition(task_id, to, error_code=code, error_message=message, error_type=error_type)

    def set_progress(self, task_id: str, progress: int) -> None:
        """Raise progress (never lower it; 99 at most while not completed)."""
        p = max(0, min(99, int(progress)))
        with self._writing() as s:
            s.execute(
                update(TaskRow)
                .where(
                    TaskRow.id == task_id,
                    TaskRow.raw_status.in_(UNFINISHED),
                )
                .values(progress=case((TaskRow.progress < p, p), else_=TaskRow.progress), updated_at=time.time())
                .execution_options(synchronize_session=False)
            )
            s.commit()

    # -- callbacks -----------------------------------------------------------------------

    def callback_settled(self, task_id: str, raw_status: str) -> None:
        """The callback of ``raw_status`` was delivered or given up: nothing is pending, unless
        the task has moved on since (then the newer status stays pending)."""
        with self._writing() as s:
            s.execute(
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.callback_pending == raw_status)
                .values(callback_pending=None)
                .execution_options(synchronize_session=False)
            )
            s.commit()

    def callbacks_due(self, changed_before: float, after_seq: int = 0, limit: int = 200) -> builtins.list[tuple[int, Task]]:
        """Tasks whose last status change, made before ``changed_before``, still has its
        callback pending (the server that was sending it stopped), in creation order after
        ``after_seq``, with their ``seq`` (the next page starts after the last one)."""
        q = (
            select(TaskRow)
            .where(TaskRow.callback_pending.is_not(None), TaskRow.updated_at < changed_before, TaskRow.seq > after_seq)
            .order_by(TaskRow.seq)
            .limit(limit)
        )
        with self._session() as s:
            return [(r.seq, Task.from_row(r)) for r in s.scalars(q).all()]

    def finished_before(self, ts: float, limit: int = 500) -> builtins.list[str]:
        """Ids of tasks that reached a final state before ``ts`` (for retention)."""
        q = (
            select(TaskRow.id)
            .where(TaskRow.completed_at.is_not(None), TaskRow.completed_at < ts)
            .order_by(TaskRow.completed_at)
            .limit(limit)
        )
        with self._session() as s:
            return list(s.scalars(q).all())

    def existing(self, task_ids: Collection[str]) -> set[str]:
        """Which of ``task_ids`` have a row."""
        ids, found = list(task_ids), set[str]()
        with self._session() as s:
            for start in range(0, len(ids), 500):  # well below every database's parameter limit
                found.update(s.scalars(select(TaskRow.id).where(TaskRow.id.in_(ids[start : start + 500]))).all())
        return found

    def delete(self, task_id: str) -> None:
        """Delete the row; what it counts for in usage and quotas is rolled up in the same
        transaction (``DELETE ... RETURNING``: exactly one of two racing deletes rolls it up)."""
        with self._writing() as s:
            gone = s.execute(
                delete(TaskRow)
                .where(TaskRow.id == task_id)
                .returning(TaskRow.owner, TaskRow.model, TaskRow.created_at, TaskRow.duration, TaskRow.raw_status)
            ).first()
            if gone is not None:
                roll_up(s, *gone)
            s.commit()

    # -- meta ----------------------------------------------------------------------------

    def meta_secret(self, key: str) -> str:
        """A random secret created once and shared by every process on this database."""
        with self._writing() as s:
            row = s.get(MetaRow, key)
            if row is not None:
                return row.value
            s.add(MetaRow(key=key, value=secrets.token_urlsafe(32)))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
            row = s.get(MetaRow, key)
            assert row is not None  # written or found just above
            return row.value
