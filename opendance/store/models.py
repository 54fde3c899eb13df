"""SQLAlchemy models of the task store. The schema itself is owned by the Alembic migrations
in ``migrations/versions``; a test checks the two agree."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class TaskRow(Base):
    __tablename__ = "tasks"

    # Internal order of creation (pagination); never shown. The public id is ``id``.
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, nullable=False)
    owner: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    mode: Mapped[str] = mapped_column(String(40), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    raw_status: Mapped[str] = mapped_column(String(20), nullable=False)
    progress: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)
    started_at: Mapped[float | None] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(64))
    duration: Mapped[int] = mapped_column(Integer, nullable=False)
    aspect_ratio: Mapped[str] = mapped_column(String(8), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    fps: Mapped[int] = mapped_column(Integer, nullable=False)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    engine: Mapped[str] = mapped_column(String(200), nullable=False)
    job: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    extra_body: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    callback_url: Mapped[str | None] = mapped_column(Text)
    # The raw status whose callback_url POST is not yet delivered (or given up); NULL when none.
    callback_pending: Mapped[str | None] = mapped_column(String(20))
    base_url: Mapped[str] = mapped_column(Text, nullable=False, default="")
    video_key: Mapped[str | None] = mapped_column(String(300))
    last_frame_key: Mapped[str | None] = mapped_column(String(300))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    engine_seconds: Mapped[float | None] = mapped_column(Float)
    idempotency_key: Mapped[str | None] = mapped_column(String(300))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # When a task not finished by then is EXPIRED (Ark's execution_expires_after); NULL: never.
    expires_at: Mapped[float | None] = mapped_column(Float)
    # The API whose task shape the callbacks carry ("ark"); NULL: the legacy task object.
    api: Mapped[str | None] = mapped_column(String(16))
    # Bumped by the database itself (a trigger, migration 0005) on every UPDATE of the row, by
    # any process: the API's memo of rendered bodies keys on (id, version).
    version: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")

    __table_args__ = (
        Index("ix_tasks_owner_seq", "owner", "seq"),
        Index("ix_tasks_raw_status", "raw_status"),
        # Partial (migrations 0006, 0007): most rows have none of these, and their readers ask for values only.
        Index(
            "ix_tasks_owner_idem",
            "owner",
            "idempotency_key",
            unique=True,
            sqlite_where=text("idempotency_key IS NOT NULL"),
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index(
            "ix_tasks_callback_pending",
            "callback_pending",
            sqlite_where=text("callback_pending IS NOT NULL"),
            postgresql_where=text("callback_pending IS NOT NULL"),
        ),
        Index(
            "ix_tasks_expires_at",
            "expires_at",
            sqlite_where=text("expires_at IS NOT NULL"),
            postgresql_where=text("expires_at IS NOT NULL"),
        ),
    )


class MetaRow(Base):
    """Small server-wide values shared by every API process (e.g. the URL-signing secret)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class ApiKeyRow(Base):
    """An API key made with ``opendance keys create`` or the admin API. Only the SHA-256 of the
    key is kept (``key_hash``); ``owner`` is the owner id its tasks carry, derived from the key
    as for keys in ``OPENDANCE_API_KEYS``. A revoked key keeps its row (and its name), so that
    its usage stays readable and the server never falls back to open."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    owner: Mapped[str] = mapped_column(String(64), nullable=False)
    hint: Mapped[str] = mapped_column(String(16), nullable=False)  # the key's first characters, to tell keys apart
    admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    seconds_per_day: Mapped[int | None] = mapped_column(Integer)
    models: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))  # NULL: every model
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    last_used_at: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_api_keys_owner", "owner"),)


class UsageRollupRow(Base):
    """What deleted tasks (by their client, or retention) add up to, per owner, UTC day of
    creation and model, written in the transaction that deletes them: a task is counted either
    as its row or in here, never both, so usage and the daily quota outlive the rows."""

    __tablename__ = "usage_rollup"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD (UTC)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    video_seconds: Mapped[int] = mapped_column(Integer, nullable=False)  # of the completed ones
    completed: Mapped[int] = mapped_column(Integer, nullable=False)
    failed: Mapped[int] = mapped_column(Integer, nullable=False)
    cancelled: Mapped[int] = mapped_column(Integer, nullable=False)
    expired: Mapped[int] = mapped_column(Integer, nullable=False)
