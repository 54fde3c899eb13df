"""The task store on a real PostgreSQL: the same models and Alembic migrations as SQLite, and
transitions that stay guarded when several processes (API servers, workers) write at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from opendance.domain import IllegalTransition, RawStatus
from opendance.store import DuplicateIdempotencyKey, TaskStore
from opendance.store.migrate import upgrade
from opendance.store.models import Base
from opendance.testing.tasks import add_task


def fresh(pg, name: str) -> str:
    return pg.create_database(f"{name}_{os.urandom(3).hex()}")


def new_task(store: TaskStore, task_id: str, **extra):
    return add_task(store, **{"id": task_id, "owner": "alice", "seed": 4294967295, **extra})


@pytest.fixture
def store(pg):
    s = TaskStore.from_url(fresh(pg, "store"))
    upgrade(s.engine)
    yield s
    s.close()


def test_db_upgrade_command_on_postgres(pg, tmp_path):
    url = fresh(pg, "cli")
    env = {**os.environ, "OPENDANCE_DATABASE_URL": url}
    for _ in range(2):  # and again: nothing to do the second time
        done = subprocess.run(
            [sys.executable, "-m", "opendance", "db", "upgrade", "--data-dir", str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "newest schema" in done.stdout
    s = TaskStore.from_url(url)
    try:
        tables = set(inspect(s.engine).get_table_names())
        assert {"tasks", "meta", "alembic_version"} <= tables
        with s.engine.connect() as conn:
            # The migrations and the models describe the same schema on PostgreSQL too.
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        s.close()


def test_servers_starting_together_migrate_once(pg):
    url = fresh(pg, "race")
    stores = [TaskStore.from_url(url) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda s: upgrade(s.engine), stores))  # raises if two ran CREATE TABLE
        new_task(stores[0], "task_one")
        assert stores[3].get("task_one").seed == 4294967295  # a BIGINT column
    finally:
        for s in stores:
            s.close()


def test_only_one_final_state_wins(pg, store):
    other = TaskStore.from_url(store.engine.url.render_as_string(hide_password=False))
    try:
        for n in range(5):
            tid = f"task_race{n}"
            new_task(store, tid)
            store.transition(tid, RawStatus.RUNNING)
            barrier = threading.Barrier(6)
            outcomes: list[str] = []

            def move(s: TaskStore, to: RawStatus) -> None:
                barrier.wait()
                try:
                    s.transition(tid, to)
                    outcomes.append(to.value)
                except IllegalTransition:
                    pass

            targets = [RawStatus.COMPLETED, RawStatus.CANCELLED, RawStatus.EXPIRED] * 2
            threads = [threading.Thread(target=move, args=(store if i % 2 else other, to)) for i, to in enumerate(targets)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(outcomes) == 1, outcomes
            assert store.get(tid).raw_status.value == outcomes[0]
    finally:
        other.close()


def test_progress_only_grows_under_concurrent_writers(store):
    new_task(store, "task_p")
    store.transition("task_p", RawStatus.RUNNING)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: store.set_progress("task_p", p), [50, 10, 99, 30, 70, 5, 120, 0]))
    assert store.get("task_p").progress == 99
    store.transition("task_p", RawStatus.COMPLETED)
    store.set_progress("task_p", 10)  # a late write from a stale worker
    assert store.get("task_p").progress == 100


def test_attempts_counted_per_run_and_terminal_is_final(store):
    new_task(store, "task_a")
    assert store.transition("task_a", RawStatus.RUNNING).attempts == 1
    assert store.transition("task_a", RawStatus.RUNNING).attempts == 2  # a retry elsewhere
    done = store.transition("task_a", RawStatus.COMPLETED, video_key="tasks/task_a/video.mp4")
    assert (done.progress, done.completed_at is not None) == (100, True)
    with pytest.raises(IllegalTransition):
        store.transition("task_a", RawStatus.RUNNING)
    with pytest.raises(KeyError):
        store.transition("task_nope", RawStatus.RUNNING)


def test_idempotency_key_and_shared_secret(store):
    new_task(store, "task_i1", idempotency_key="k", request_hash="h")
    with pytest.raises(DuplicateIdempotencyKey):
        new_task(store, "task_i2", idempotency_key="k", request_hash="h")
    new_task(store, "task_i3", owner="bob", idempotency_key="k")  # keys are per owner
    new_task(store, "task_i4")  # no key: not in the index at all (migration 0007)
    with store.engine.connect() as conn:
        indexdef = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_tasks_owner_idem'")).scalar_one()
    assert "UNIQUE" in indexdef and "WHERE (idempotency_key IS NOT NULL)" in indexdef
    other = TaskStore.from_url(store.engine.url.render_as_string(hide_password=False))
    try:
        with ThreadPoolExecutor(6) as pool:
            secrets = set(pool.map(lambda s: s.meta_secret("url_signing_secret"), [store, other] * 3))
        assert len(secrets) == 1  # every API server signs links with the same secret
    finally:
        other.close()


def test_list_pages_and_unfinished(store):
    for i in range(7):
        new_task(store, f"task_l{i}")
    store.transition("task_l2", RawStatus.RUNNING)
    store.fail("task_l3", RawStatus.CANCELLED, "cancelled", "by client")
    page, more = store.list("alice", limit=3)
    assert [t.id for t in page] == ["task_l6", "task_l5", "task_l4"] and more
    page, more = store.list("alice", limit=10, after="task_l4")
    assert [t.id for t in page] == ["task_l3", "task_l2", "task_l1", "task_l0"] and not more
    assert [t.id for t in store.unfinished()] == ["task_l0", "task_l1", "task_l2", "task_l4", "task_l5", "task_l6"]


def test_stored_input_bytes_on_postgres(store):
    """The per-key cap's sum: past 2**31, and 0 for tasks without the field."""
    new_task(store, "task_big", job={"task_id": "task_big", "input_bytes": 3 << 30})
    new_task(store, "task_more", job={"task_id": "task_more", "input_bytes": 1 << 30})
    new_task(store, "task_old")
    new_task(store, "task_bob", owner="bob", job={"task_id": "task_bob", "input_bytes": 7})
    assert (store.stored_input_bytes("alice"), store.stored_input_bytes("bob"), store.stored_input_bytes("nobody")) == (
        4 << 30,
        7,
        0,
    )


def test_finished_counts_outlive_deletes(store):
    """``opendance_tasks_finished_total`` comes from here: each end once, deleted tasks included."""
    for i, to in enumerate([RawStatus.COMPLETED, RawStatus.COMPLETED, RawStatus.FAILED, RawStatus.CANCELLED]):
        new_task(store, f"fin{i}")
        if to is RawStatus.COMPLETED:
            store.transition(f"fin{i}", RawStatus.RUNNING)
            store.transition(f"fin{i}", to)
        else:
            store.fail(f"fin{i}", to, "x", "x")
    new_task(store, "still-queued")
    with pytest.raises(IllegalTransition):
        store.transition("fin0", RawStatus.COMPLETED)  # a repeated end changes nothing
    expected = {("m", "COMPLETED"): 2, ("m", "FAILED"): 1, ("m", "CANCELLED"): 1}
    assert store.finished_counts() == expected
    store.delete("fin0")
    store.delete("fin3")
    assert store.finished_counts() == expected  # rolled up with the delete


def test_every_update_bumps_the_row_version(store):
    """Migration 0005's trigger on PostgreSQL: as on SQLite, each UPDATE is a new version."""
    from sqlalchemy import text

    task = new_task(store, "task_version")

    def version() -> int:
        with store.engine.connect() as conn:
            return conn.execute(text("SELECT version FROM tasks WHERE id = 'task_version'")).scalar_one()

    seen = [version()]
    store.transition(task.id, RawStatus.RUNNING)
    seen.append(version())
    store.set_progress(task.id, 30)
    seen.append(version())
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET progress = progress WHERE id = 'task_version'"))
    seen.append(version())
    assert seen == [0, 1, 2, 3]
