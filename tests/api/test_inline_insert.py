"""Creates inserted on the event loop (store/inline_insert.py), on a real SQLite file: the same
row as the usual Core INSERT in a thread; nothing written, and no waiting, whenever the file
cannot take it at once (this process's write lock held, another connection writing, a
duplicate idempotency key), so the usual way decides; and the WAL kept from growing by its own
checkpoints."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opendance.domain import RawStatus
from opendance.store import DuplicateIdempotencyKey, inline_insert, jsoncol
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


def test_the_idempotency_index_holds_keyed_rows_only_and_still_refuses_duplicates(store, tmp_path):
    """Migration 0007: keyless creates add nothing to ix_tasks_owner_idem; a key is still one
    task per owner, whichever way it is written, and its lookup reads the index."""
    for _ in range(3):
        assert store.create_at_once(**task_fields(owner="a")) is not None
    store.create(**task_fields(owner="a"))
    keyed = store.create(**task_fields(owner="a", idempotency_key="k"))
    assert store.create_at_once(**task_fields(owner="a", idempotency_key="k")) is None
    with pytest.raises(DuplicateIdempotencyKey):
        store.create(**task_fields(owner="a", idempotency_key="k"))
    assert store.create_at_once(**task_fields(owner="b", idempotency_key="k")) is not None  # per owner
    assert store.get_by_idempotency_key("a", "k") == keyed
    with sqlite3.connect(tmp_path / "tasks.db") as conn:
        entries = conn.execute("SELECT count(*) FROM tasks INDEXED BY ix_tasks_owner_idem WHERE idempotency_key IS NOT NULL")
        assert entries.fetchone()[0] == 2 and conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 6
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE owner = ? AND idempotency_key = ?", ("a", "k"))
        assert "ix_tasks_owner_idem" in " ".join(str(row) for row in plan)
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'ix_tasks_owner_idem'").fetchone()
        assert "WHERE idempotency_key IS NOT NULL" in sql
    conn.close()


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


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_the_json_columns_are_written_as_json_dumps_writes_them(value):
    """``jsoncol.dumps`` (one shared encoder) gives ``json.dumps(allow_nan=False,
    ensure_ascii=False)``'s text, and refuses what it cannot hold (NaN, an unpaired surrogate)."""

    def reference():
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
        return text

    outcomes = []
    for write in (reference, lambda: jsoncol.dumps(value)):
        try:
            outcomes.append(write())
        except (ValueError, UnicodeEncodeError) as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]
