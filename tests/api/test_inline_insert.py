"""Creates inserted on the event loop (store/inline_insert.py), on a real SQLite file: the same
row as the usual Core INSERT in a thread; nothing written, and no waiting, whenever the file
cannot take it at once (this process's write lock held, another connection writing, a
duplicate idempotency key), so the usual way decides; and the WAL kept from growing by its own
checkpoints."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from opendance.domain import RawStatus
from opendance.store import DuplicateIdempotencyKey, inline_insert
from opendance.store.writes import write_lock
from opendance.testing.tasks import task_fields


def raw_row(path, task_id: str) -> dict:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone())
    return {k: v for k, v in row.items() if k not in ("seq", "id", "created_at", "updated_at")}


def test_the_row_written_at_once_is_the_row_create_writes(store, tmp_path):
    fields = dict(
        owner="a",
        job={"prompt": "ünïcödé ✓", "n": [1, 2.5, None]},
        extra_body={"seed": 3, "text": "é"},
        callback_url="http://cb",
        idempotency_key="k1",
        request_hash="h" * 64,
        expires_at=123.5,
        api="ark",
        ignored_fields=["colour"],
    )
    usual = store.create(**task_fields(**fields))
    at_once = store.create_at_once(**task_fields(**{**fields, "idempotency_key": "k2"}))
    assert at_once is not None
    assert store.get(at_once.id) == at_once  # the snapshot is what reads back
    assert at_once.ignored_fields == ("colour",) and at_once.callback_pending == RawStatus.QUEUED.value
    assert raw_row(tmp_path / "tasks.db", at_once.id) == {**raw_row(tmp_path / "tasks.db", usual.id), "idempotency_key": "k2"}


def test_nothing_is_written_when_the_write_lock_is_held(store):
    held, release = threading.Event(), threading.Event()

    def writer():
        with write_lock(store.engine):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(10)
    try:
        fields = task_fields(owner="a")
        t0 = time.monotonic()
        assert store.create_at_once(**fields) is None
        assert time.monotonic() - t0 < 5  # it did not wait for the lock (the bound only catches a hang)
        assert store.get(fields["id"]) is None
    finally:
        release.set()
        thread.join()
    assert store.create_at_once(**fields) is not None  # free again


def test_nothing_is_written_while_another_connection_writes(store, tmp_path):
    other = sqlite3.connect(tmp_path / "tasks.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer holds the database's lock
    try:
        fields = task_fields(owner="a")
        assert store.create_at_once(**fields) is None
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.get(fields["id"]) is None
    assert store.create(**fields).id == fields["id"]  # the usual way, once the file is free


def test_a_duplicate_idempotency_key_is_left_to_create(store):
    store.create(**task_fields(owner="a", idempotency_key="same"))
    fields = task_fields(owner="a", idempotency_key="same")
    assert store.create_at_once(**fields) is None
    with pytest.raises(DuplicateIdempotencyKey):
        store.create(**fields)


def test_the_wal_is_checkpointed_by_the_inserts_themselves(store, tmp_path, monkeypatch):
    """The inline connection never checkpoints on its own (wal_autocheckpoint=0): without its
    checkpoint every CHECKPOINT_EVERY rows the WAL grows with every row; with it, it stays at
    about that many rows' worth."""
    wal = tmp_path / "tasks.db-wal"

    def grow(n: int) -> int:
        for _ in range(n):
            assert store.create_at_once(**task_fields(owner="a", job={"prompt": "x" * 2000})) is not None
        return wal.stat().st_size  # the file is reused from its start after a complete checkpoint, never shrunk

    monkeypatch.setattr(inline_insert, "CHECKPOINT_EVERY", 50)
    checked = grow(400)
    monkeypatch.setattr(inline_insert, "CHECKPOINT_EVERY", 10**9)
    store.inline_insert.checkpoint()
    unchecked = grow(400)
    assert checked < unchecked / 3, (checked, unchecked)
