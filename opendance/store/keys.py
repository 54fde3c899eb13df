"""API keys in the store, and what their tasks add up to (quotas, usage).

A key row holds the SHA-256 of the key, never the key. Usage is read from the tasks table
(owner, model, status, duration, created_at), so it cannot drift from the tasks themselves.
The one thing the tasks table cannot tell is what deleted tasks were; so a delete rolls its
task into ``usage_rollup`` (per owner, day and model) in the same transaction, and usage and
the daily quota add the two: every task is counted exactly once, as its row or rolled up.
Otherwise deleting finished tasks would erase usage and give a day's quota back.

A task counts on the UTC day it was created; a day is bucketed in SQL (``strftime`` on SQLite,
``to_char`` on PostgreSQL) and in Python for the roll-up, to the same YYYY-MM-DD.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ..domain import RawStatus
from .writes import writing
from .models import ApiKeyRow, TaskRow, UsageRollupRow

# Tasks that end this way delivered no video: they do not count against seconds_per_day.
NOT_CHARGED = (RawStatus.FAILED.value, RawStatus.CANCELLED.value, RawStatus.EXPIRED.value)
UNFINISHED = (RawStatus.QUEUED.value, RawStatus.RUNNING.value)


@dataclass(frozen=True)
class ApiKey:
    """A snapshot of one key row (its hash stays in the store)."""

    name: str
    owner: str
    hint: str
    admin: bool
    max_concurrent: int | None
    seconds_per_day: int | None
    models: tuple[str, ...] | None
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> ApiKey:
        return cls(
            name=row.name,
            owner=row.owner,
            hint=row.hint,
            admin=bool(row.admin),
            max_concurrent=row.max_concurrent,
            seconds_per_day=row.seconds_per_day,
            models=tuple(row.models) if row.models is not None else None,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


@dataclass(frozen=True)
class UsageRow:
    owner: str
    day: str  # YYYY-MM-DD (UTC)
    model: str
    video_seconds: int  # of completed tasks
    completed: int
    failed: int
    cancelled: int
    expired: int


def utc_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


_ENDED = {
    RawStatus.COMPLETED.value: "completed",
    RawStatus.FAILED.value: "failed",
    RawStatus.CANCELLED.value: "cancelled",
    RawStatus.EXPIRED.value: "expired",
}


def roll_up(session: Session, owner: str, model: str, created_at: float, duration: int, raw_status: str) -> None:
    """Add a task being deleted to ``usage_rollup`` (in the delete's transaction). Only finished
    tasks are deleted; one that is not counts nowhere, as in usage."""
    column = _ENDED.get(raw_status)
    if column is None:
        return
    values = {
        "video_seconds": duration if column == "completed" else 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
        column: 1,
    }
    dialect = session.get_bind().dialect.name
    insert: Any = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[
        dialect
    ]  # the dialects' own insert, with on_conflict
    stmt = insert(UsageRollupRow).values(owner=owner, day=utc_day(created_at), model=model, **values)
    table = UsageRollupRow.__table__.c
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["owner", "day", "model"],
            set_={k: table[k] + stmt.excluded[k] for k in values},
        )
    )


class DuplicateKeyName(Exception):
    """A key (live or revoked) already has this name."""


class KeyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)

    # -- keys ----------------------------------------------------------------------------

    def any(self) -> bool:
        """Whether any key was ever made here (a revoked one too: revoking never reopens a server)."""
        with self._session() as s:
            return s.scalar(select(ApiKeyRow.id).limit(1)) is not None

    def add(
        self,
        *,
        name: str,
        key_hash: str,
        owner: str,
        hint: str,
        admin: bool = False,
        max_concurrent: int | None = None,
        seconds_per_day: int | None = None,
        models: list[str] | None = None,
    ) -> ApiKey:
        row = ApiKeyRow(
            name=name,
            key_hash=key_hash,
            owner=owner,
            hint=hint,
            admin=admin,
            max_concurrent=max_concurrent,
            seconds_per_day=seconds_per_day,
            models=models,
            created_at=time.time(),
        )
        with writing(self.engine, self._session) as s:
            s.add(row)
            try:
                s.commit()
            except IntegrityError as exc:
                raise DuplicateKeyName(name) from exc
            return ApiKey.from_row(row)

    def by_hash(self, key_hash: str) -> ApiKey | None:
        with self._session() as s:
            row = s.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash)).first()
            return ApiKey.from_row(row) if row else None

    def by_name(self, name: str) -> ApiKey | None:
        with self._session() as s:
            row = s.scalars(select(ApiKeyRow).where(ApiKeyRow.name == name)).first()
            return ApiKey.from_row(row) if row else None

    def all(self) -> list[ApiKey]:
        with self._session() as s:
            return [ApiKey.from_row(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id)).all()]

    def revoke(self, name: str) -> ApiKey | None:
        """Revoke a live key; None if there is no such key. Revoking twice keeps the first time."""
        with writing(self.engine, self._session) as s:
            s.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=time.time())
                .execution_options(synchronize_session=False)
            )
            s.commit()
        return self.by_name(name)

    def touch(self, owner: str, when: float) -> None:
        with writing(self.engine, self._session) as s:
            s.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.owner == owner)
                .values(last_used_at=when)
                .execution_options(synchronize_session=False)
            )
            s.commit()

    # -- what the tasks add up to --------------------------------------------------------

    def counts(
        self, owner: str, since: float, leave_out: Collection[str] = (), session: Session | None = None
    ) -> tuple[int, int]:
        """(unfinished tasks, video seconds charged since ``since``, the start of a UTC day) of
        ``owner``, deleted tasks included, not counting the ids in ``leave_out``. In
        ``session`` when given (the insert's own transaction)."""
        q = select(
            func.coalesce(func.sum(case((TaskRow.raw_status.in_(UNFINISHED), 1), else_=0)), 0),
            func.coalesce(
                func.sum(
                    case(((TaskRow.created_at >= since) & TaskRow.raw_status.not_in(NOT_CHARGED), TaskRow.duration), else_=0)
                ),
                0,
            ),
        ).where(TaskRow.owner == owner, (TaskRow.created_at >= since) | TaskRow.raw_status.in_(UNFINISHED))
        if leave_out:
            q = q.where(TaskRow.id.not_in(list(leave_out)))
        deleted = select(func.coalesce(func.sum(UsageRollupRow.video_seconds), 0)).where(
            UsageRollupRow.owner == owner, UsageRollupRow.day >= utc_day(since)
        )
        if session is not None:
            unfinished, seconds = session.execute(q).one()
            seconds += session.scalar(deleted)
        else:
            with self._session() as s:
                unfinished, seconds = s.execute(q).one()
                seconds += s.scalar(deleted)
        return int(unfinished), int(seconds)

    def lock(self, session: Session, owner: str) -> None:
        """Hold the key's row until ``session`` ends, so that two API servers creating tasks
        for one key count one after the other (PostgreSQL; SQLite has a single writer anyway)."""
        session.execute(select(ApiKeyRow.id).where(ApiKeyRow.owner == owner).with_for_update())

    def usage(self, owner: str | None, start: float, end: float) -> list[UsageRow]:
        """Per owner, UTC day and model, the tasks created in [start, end): video seconds of
        the completed ones and how many ended each way. ``owner`` None: every owner."""
        day = self._utc_day(TaskRow.created_at)

        def count(status: RawStatus):
            return func.sum(case((TaskRow.raw_status == status.value, 1), else_=0))

        q = (
            select(
                TaskRow.owner,
                day,
                TaskRow.model,
                func.sum(case((TaskRow.raw_status == RawStatus.COMPLETED.value, TaskRow.duration), else_=0)),
                count(RawStatus.COMPLETED),
                count(RawStatus.FAILED),
                count(RawStatus.CANCELLED),
                count(RawStatus.EXPIRED),
            )
            .where(TaskRow.created_at >= start, TaskRow.created_at < end)
            .group_by(TaskRow.owner, day, TaskRow.model)
            .order_by(day, TaskRow.owner, TaskRow.model)
        )
        rolled = select(UsageRollupRow).where(UsageRollupRow.day >= utc_day(start), UsageRollupRow.day < utc_day(end))
        if owner is not None:
            q = q.where(TaskRow.owner == owner)
            rolled = rolled.where(UsageRollupRow.owner == owner)
        totals: dict[tuple[str, str, str], list[int]] = {}
        with self._session() as s:
            for o, d, m, *counts in s.execute(q).all():
                totals[(str(d), o, m)] = [int(v or 0) for v in counts]
            for r in s.scalars(rolled).all():
                add = [r.video_seconds, r.completed, r.failed, r.cancelled, r.expired]
                totals[(r.day, r.owner, r.model)] = [a + b for a, b in zip(totals.get((r.day, r.owner, r.model), [0] * 5), add)]
        return [UsageRow(o, d, m, *counts) for (d, o, m), counts in sorted(totals.items())]

    def _utc_day(self, column):
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            return func.strftime("%Y-%m-%d", column, "unixepoch")
        if dialect == "postgresql":
            return func.to_char(func.timezone("UTC", func.to_timestamp(column)), "YYYY-MM-DD")
        raise NotImplementedError(f"usage by day is written for SQLite and PostgreSQL, not {dialect}")
