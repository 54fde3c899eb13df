"""Writers of one process queue on store/writes.py's lock instead of SQLite's busy handler.

With the busy timeout at 0, a writer that finds the database locked fails at once ("database is
locked"), so every concurrent write that would have slept in the busy handler's back-off (the
0.1-0.9 s creates under load) fails here instead: none may.
"""

from __future__ import annotations

import threading

from sqlalchemy import event

from opendance.domain import RawStatus
from opendance.store import TaskStore
from opendance.store.keys import KeyStore
from opendance.store.migrate import upgrade
from opendance.testing.tasks import add_task


def test_concurrent_writes_of_one_process_never_meet_a_locked_database(tmp_path):
    store = TaskStore.from_url(f"sqlite:///{tmp_path / 'tasks.db'}")
    upgrade(store.engine)

    @event.listens_for(store.engine, "connect")
    def _no_busy_wait(dbapi_conn, _record):  # after the store's own pragmas
        dbapi_conn.execute("PRAGMA busy_timeout=0")

    store.engine.dispose()  # connections from here on have it
    keys = KeyStore(store.engine)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(40):
                task = add_task(store, owner=f"o{n}", seed=i, job={"prompt": "x" * 400})
                store.transition(task.id, RawStatus.RUNNING)
                store.set_progress(task.id, 50)
                keys.touch(f"o{n}", float(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert store.count_by_status() == {RawStatus.RUNNING.value: 8 * 40}
    finally:
        store.close()
