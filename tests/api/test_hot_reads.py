"""The hot reads of issue 14, against the paths they replace, on a real SQLite file:

- ``TaskStore.aget`` / ``alist`` (store/inline.py: sqlite3 on the event loop) give the same
  tasks as ``get`` / ``list`` (the ORM in a thread): every field, the cursor, both orders, a row
  that cannot be read left out without shortening the page, other owners' tasks invisible;
- ``create`` (a Core INSERT) returns the snapshot a read of its row gives;
- the response bytes of api/bodies.py are JSONResponse's, and a memoised body follows its row;
- task ids: 32 characters of the URL-safe alphabet;
- ``Auth.known`` tells keys of OPENDANCE_API_KEYS without the store, and only those.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3

from starlette.responses import JSONResponse

from opendance.api.auth import Auth
from opendance.api.bodies import Bodies, encode, page_body
from opendance.api.routes import page
from opendance.domain import RawStatus, new_task_id
from opendance.keys import owner_of
from opendance.store.repo import TaskStore
from opendance.testing.tasks import add_task, task_fields


def make(store: TaskStore, owner: str, n: int, **fields):
    return add_task(
        store,
        owner=owner,
        seed=n,
        job={"prompt": f"task {n} ✓"},
        extra_body={"n": n, "text": "ünïcödé"},
        base_url="http://h",
        **fields,
    )


def test_inline_reads_are_the_orm_reads(store):
    made = [make(store, "a", i) for i in range(7)] + [make(store, "b", 99)]
    made.append(make(store, "a", 7, ignored_fields=["colour"]))
    store.transition(made[2].id, RawStatus.RUNNING)
    store.set_progress(made[2].id, 40)
    for task in made:
        assert asyncio.run(store.aget(task.id)) == store.get(task.id)
        assert asyncio.run(store.aget(task.id, "a")) == store.get(task.id, "a")
    assert asyncio.run(store.aget(made[7].id, "a")) is None  # b's task
    assert asyncio.run(store.aget("task_nope")) is None
    assert asyncio.run(store.aget(made[-1].id)).ignored_fields == ("colour",)
    for newest_first in (True, False):
        for after in (None, made[3].id, made[7].id, "task_nope"):
            for limit in (1, 3, 20):
                args = dict(limit=limit, after=after, newest_first=newest_first)
                assert asyncio.run(store.alist("a", **args)) == store.list("a", **args)


def test_a_created_task_reads_back_as_its_snapshot(store):
    task = make(store, "a", 1, callback_url="http://cb")
    assert store.get(task.id) == task
    assert task.extra_body == {"n": 1, "text": "ünïcödé"} and task.callback_url == "http://cb"


def test_an_unreadable_row_is_left_out_without_shortening_the_page(store, tmp_path):
    made = [make(store, "a", i) for i in range(5)]
    with sqlite3.connect(tmp_path / "tasks.db") as conn:
        conn.execute("update tasks set status = 'no-such-status' where id = ?", (made[3].id,))
    page_of = asyncio.run(store.alist("a", limit=2))
    assert page_of == store.list("a", limit=2)
    assert [t.id for t in page_of[0]] == [made[4].id, made[2].id] and page_of[1]


def test_bodies_are_the_bytes_of_json_response_and_follow_their_row(store):
    task = make(store, "a", 1)
    rendered = {"id": task.id, "extra_body": task.extra_body, "ok": True, "n": None, "x": 1.5}
    assert encode(rendered) == JSONResponse(rendered).body
    objs = [{"id": "a", "v": "é"}, {"id": "b", "v": [1, 2]}]
    tasks = [task, task]
    assert page_body([encode(o) for o in objs], task.id, task.id, True) == JSONResponse(page(objs, tasks, True)).body
    assert page_body([], None, None, False) == JSONResponse(page([], [], False)).body
    seen = []
    bodies = Bodies(lambda t, base: seen.append(t.progress) or {"id": t.id, "progress": t.progress, "base": base}, lambda: False)
    (row,) = store.inline.get(task.id, None)
    assert bodies.body(row, "http://x") == bodies.body(row, "http://x") and seen == [0]  # the second from the memo
    store.set_progress(task.id, 30)
    (changed,) = store.inline.get(task.id, None)
    assert b'"progress":30' in bodies.body(changed, "http://x") and seen == [0, 30]
    assert b'"base":"http://y"' in bodies.body(changed, "http://y")


def test_task_ids_are_32_url_safe_characters():
    ids = {new_task_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"task_[A-Za-z0-9_-]{32}", i) for i in ids)
    assert set("".join(i[5:] for i in ids)) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_known_tells_environment_keys_only():
    auth = Auth(["k1", "k2"])
    assert auth.known("Bearer k2").owner == owner_of("k2")
    assert auth.known("bearer  k1 ").owner == owner_of("k1")
    for header in (None, "", "Bearer", "Bearer k3", "Basic k1", "k1"):
        assert auth.known(header) is None  # the full check (caller) decides these
    assert Auth([]).known("Bearer k1") is None


def test_every_change_of_a_row_bumps_its_version_whoever_writes_it(store, tmp_path):
    """The memo's key is (id, version): an UPDATE from this store, or from another connection
    that knows nothing of opendance (a second process, a hand edit), makes a new version."""
    task = make(store, "a", 1)
    versions = [store.inline.stamp(task.id, "a")[1]]
    store.transition(task.id, RawStatus.RUNNING)
    versions.append(store.inline.stamp(task.id, "a")[1])
    store.set_progress(task.id, 40)
    versions.append(store.inline.stamp(task.id, "a")[1])
    with sqlite3.connect(tmp_path / "tasks.db") as conn:
        conn.execute("update tasks set error_message = 'by hand' where id = ?", (task.id,))
    versions.append(store.inline.stamp(task.id, "a")[1])
    with sqlite3.connect(tmp_path / "tasks.db") as conn:  # an UPDATE that changes nothing is a new version too
        conn.execute("update tasks set progress = progress where id = ?", (task.id,))
    versions.append(store.inline.stamp(task.id, "a")[1])
    assert versions == sorted(set(versions)) and len(versions) == 5
    assert store.inline.stamp(task.id, "b") is None and store.inline.stamp("task_nope", "a") is None


def test_memoised_pages_follow_their_rows(store, tmp_path):
    """A list page read through the memo (ids and versions, whole rows only for misses) is the
    page rendered from the rows, after any change made behind the memo's back, with a row that
    cannot be read left out; and as many whole rows are read as the memo misses."""
    made = [make(store, "a", i) for i in range(6)]
    seen: list[str] = []
    bodies = Bodies(
        lambda t, base: seen.append(t.id) or {"id": t.id, "progress": t.progress, "msg": t.error_message}, lambda: False
    )

    def memo_page(**args):
        convert, known = bodies.listed("http://x")
        items, more = store.inline.page(
            "a",
            args.get("limit", 20),
            args.get("after"),
            args.get("newest_first", True),
            convert,
            known,
            bodies.pages("http://x"),
        )
        return [body for _, body in items], more

    def fresh_page(**args):
        tasks, more = store.list("a", **args)
        return [encode({"id": t.id, "progress": t.progress, "msg": t.error_message}) for t in tasks], more

    assert memo_page() == fresh_page() and len(seen) == 6
    assert memo_page() == fresh_page() and len(seen) == 6  # all from the memo
    store.set_progress(made[1].id, 55)
    with sqlite3.connect(tmp_path / "tasks.db") as conn:
        conn.execute("update tasks set error_message = 'hand' where id = ?", (made[4].id,))
        conn.execute("update tasks set status = 'no-such-status' where id = ?", (made[2].id,))
    for _ in range(2):  # and again, from the memo of pages where one was kept
        for args in (dict(), dict(limit=2), dict(limit=2, after=made[3].id), dict(newest_first=False, limit=3)):
            assert memo_page(**args) == fresh_page(**args), args
    with sqlite3.connect(tmp_path / "tasks.db") as conn:  # the unreadable row mended, another changed: pages follow
        conn.execute("update tasks set status = 'queued' where id = ?", (made[2].id,))
        conn.execute("update tasks set error_message = 'again' where id = ?", (made[5].id,))
    for args in (dict(), dict(limit=2), dict(limit=2, after=made[3].id), dict(newest_first=False, limit=3)):
        assert memo_page(**args) == fresh_page(**args), args
    assert sorted(seen[6:]) == sorted([made[1].id, made[4].id, made[2].id, made[5].id])  # only changed rows rendered again


def test_a_page_is_answered_without_reading_rows_until_anything_commits(store, tmp_path):
    """The memo of pages under the file's snapshot (``PRAGMA data_version``): the same query
    again reads no row while nothing commits; any commit by anyone (the store's ORM, its inline
    insert, another connection, a delete) changes the snapshot, and the next page follows it."""
    made = [make(store, "a", i) for i in range(3)]
    bodies = Bodies(lambda t, base: {"id": t.id, "progress": t.progress}, lambda: False)
    statements: list[str] = []
    store.inline._conn().set_trace_callback(statements.append)

    def memo_page():
        convert, known = bodies.listed("http://x")
        items, more = store.inline.page("a", 20, None, True, convert, known, bodies.pages("http://x"))
        return [body for _, body in items], more

    def fresh_page():
        tasks, more = store.list("a", limit=20)
        return [encode({"id": t.id, "progress": t.progress}) for t in tasks], more

    def reads_rows() -> bool:
        read = any("FROM tasks" in s for s in statements)
        statements.clear()
        return read

    assert memo_page() == fresh_page() and reads_rows()
    snapshot = store.inline.snapshot()
    for _ in range(3):
        assert memo_page() == fresh_page() and not reads_rows()
    assert store.inline.snapshot() == snapshot
    changes = [
        lambda: store.set_progress(made[0].id, 30),  # the ORM
        lambda: made.append(store.create_at_once(**task_fields(owner="a", seed=3, base_url="http://h"))),  # its own connection
        lambda: _by_hand(tmp_path / "tasks.db", "update tasks set progress = 70 where id = ?", made[1].id),
        lambda: store.delete(made[2].id),
    ]
    for change in changes:
        change()
        assert store.inline.snapshot() != snapshot
        snapshot = store.inline.snapshot()
        assert memo_page() == fresh_page() and reads_rows()
        assert memo_page() == fresh_page() and not reads_rows()
    assert len(memo_page()[0]) == 3 and made[-1] is not None  # the inline insert wrote its row


def _by_hand(database, sql: str, *params) -> None:
    with sqlite3.connect(database) as conn:
        conn.execute(sql, params)
    conn.close()


def test_get_task_follows_every_commit_to_the_file(server, client):
    """GET task through the served app: a body kept under the file's snapshot is served again
    only while nothing commits; a change or a delete by another process shows at once."""
    from opendance.testing.server import wait_for_task

    task = client.post("/v1/video/generations", json={"model": "jisudance2.0-fast-480p", "prompt": "a kept body"}).json()
    done = wait_for_task(client, task["id"])
    assert [client.get(f"/v1/video/generations/{task['id']}").json() for _ in range(3)] == [done] * 3
    database = server.data_dir / "opendance.db"
    _by_hand(database, "update tasks set seed = 7 where id = ?", task["id"])
    assert client.get(f"/v1/video/generations/{task['id']}").json()["seed"] == 7  # the row's new version
    _by_hand(database, "delete from tasks where id = ?", task["id"])
    assert client.get(f"/v1/video/generations/{task['id']}").status_code == 404
