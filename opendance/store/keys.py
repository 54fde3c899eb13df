"""API keys in the store, and what their tasks add up to (quotas, usage).

A key row holds the SHA-256 of the key, never the key. Usage is not a second ledger: it is
read from the tasks table (owner, model, status, duration, created_at), so it cannot drift
from the tasks themselves. A task counts on the UTC day it was created; a day is bucketed in
SQL (``strftime`` on SQLite, ``to_char`` on PostgreSQL).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import case, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ..domain import RawStatus
from .models import ApiKeyRow, TaskRow

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
            name=name, key_hash=key_hash, owner=owner, hint=hint, admin=admin, max_concurrent=max_concurrent,
            seconds_per_day=seconds_per_day, models=models, created_at=time.time(),
        )
        with self._session() as s:
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
        with self._session() as s:
            s.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=time.time())
                .execution_options(synchronize_session=False)
            )
            s.commit()
        return self.by_name(name)

    def touch(self, owner: str, when: float) -> None:
        with self._session() as s:
            s.execute(
                update(ApiKeyRow).where(ApiKeyRow.owner == owner).values(last_used_at=when).execution_options(synchronize_session=False)
            )
            s.commit()

    # -- what the tasks add up to --------------------------------------------------------

    def counts(self, owner: str, since: float, leave_out: Collection[str] = (), session: Session | None = None) -> tuple[int, int]:
        """(unfinished tasks, video seconds charged since ``since``) of ``owner``, not counting
        the ids in ``leave_out``. In ``session`` when given (the insert's own transaction)."""
        q = select(
            func.coalesce(func.sum(case((TaskRow.raw_status.in_(UNFINISHED), 1), else_=0)), 0),
            func.coalesce(
                func.sum(case(((TaskRow.created_at >= since) & TaskRow.raw_status.not_in(NOT_CHARGED), TaskRow.duration), else_=0)), 0
            ),
        ).where(TaskRow.owner == owner, (TaskRow.created_at >= since) | TaskRow.raw_status.in_(UNFINISHED))
        if leave_out:
            q = q.where(TaskRow.id.not_in(list(leave_out)))
        if session is not None:
            unfinished, seconds = session.execute(q).one()
        else:
            with self._session() as s:
                unfinished, seconds = s.execute(q).one()
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
        if owner is not None:
            q = q.where(TaskRow.owner == owner)
        with self._session() as s:
            return [UsageRow(o, str(d), m, *(int(v or 0) for v in rest)) for o, d, m, *rest in s.execute(q).all()]

    def _utc_day(self, column):
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            return func.strftime("%Y-%m-%d", column, "unixepoch")
        if dialect == "postgresql":
            return func.to_char(func.timezone("UTC", func.to_timestamp(column)), "YYYY-MM-DD")
        raise NotImplementedError(f"usage by day is written for SQLite and PostgreSQL, not {dialect}")
