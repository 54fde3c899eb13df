"""Keys, quotas and usage in the store (and the Ark list's search and the expiry query), on SQLite
and on a real PostgreSQL; and two API servers sharing PostgreSQL: a key revoked through one is
refused by the other at its next request, and a key's limits hold across both."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from opendance.api.quotas import KeyQuotas
from opendance.domain import RawStatus
from opendance.errors import RateLimited
from opendance.keys import Caller, KeyService, utc_midnight
from opendance.store import TaskStore
from opendance.store.keys import DuplicateKeyName, KeyStore
from opendance.store.migrate import upgrade
from opendance.store.models import Base
from opendance.testing.server import LiveServer
from opendance.testing.tasks import add_task

DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'keys.db'}"
    else:
        url = request.getfixturevalue("pg").create_database(f"keys_{os.urandom(3).hex()}")
    tasks = TaskStore.from_url(url)
    upgrade(tasks.engine)
    yield tasks, KeyStore(tasks.engine)
    tasks.close()


def new_task(
    store: TaskStore,
    task_id: str,
    owner: str,
    *,
    model: str = "m",
    duration: int = 5,
    created_at: float | None = None,
    check=None,
):
    task = add_task(store, check=check, id=task_id, owner=owner, model=model, duration=duration)
    if created_at is not None:
        with store.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE tasks SET created_at = {created_at} WHERE id = '{task_id}'")
    return task


def test_schema_matches_the_models(stores):
    tasks, _ = stores
    with tasks.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_search_filters_pages_and_expiring(stores):
    tasks, _ = stores
    for i in range(5):
        task = new_task(tasks, f"task_s{i}", "dave", model="m" if i % 2 else "n")
        if i in (1, 3):
            with tasks.engine.begin() as conn:  # as a flex task is stored: the tier in extra_body
                conn.exec_driver_sql(
                    f"UPDATE tasks SET expires_at = {task.created_at - 1 if i == 1 else task.created_at + 3600}, "
                    f"extra_body = '{{\"service_tier\": \"flex\"}}' WHERE id = 'task_s{i}'"
                )
    new_task(tasks, "task_other", "erin")
    tasks.fail("task_s4", RawStatus.CANCELLED, "cancelled", "by client")
    page, total = tasks.search("dave", offset=0, limit=2)
    assert [t.id for t in page] == ["task_s4", "task_s3"] and total == 5
    page, total = tasks.search("dave", offset=4, limit=2)
    assert [t.id for t in page] == ["task_s0"] and total == 5
    assert tasks.search("dave", offset=0, limit=10, service_tier="flex")[1] == 2
    assert tasks.search("dave", offset=0, limit=10, service_tier="default")[1] == 3
    assert tasks.search("dave", offset=0, limit=10, model="n", raw_status=RawStatus.QUEUED)[1] == 2
    assert [t.id for t in tasks.search("dave", offset=0, limit=10, ids=["task_s1", "task_other"])[0]] == ["task_s1"]
    assert [t.id for t in tasks.expiring(time.time())] == ["task_s1"]


def test_keys_round_trip(stores):
    tasks, keys = stores
    service = KeyService(keys, ["m", "n"])
    assert not keys.any()
    row, plain = service.create("ci", seconds_per_day=10, models="n,m")
    assert keys.any() and row.models == ("m", "n") and row.seconds_per_day == 10 and not row.admin
    found = keys.by_hash(__import__("hashlib").sha256(plain.encode()).hexdigest())
    assert found == row and found.owner == row.owner
    with pytest.raises(DuplicateKeyName):
        keys.add(name="ci", key_hash="0" * 64, owner="o", hint="od-x")
    revoked = service.revoke("ci")
    assert revoked.revoked_at is not None
    assert service.revoke("ci").revoked_at == revoked.revoked_at  # the first time stays
    assert keys.any()  # a revoked key still closes the server
    keys.touch(row.owner, 123.0)
    assert keys.by_name("ci").last_used_at == 123.0


def test_counts_and_usage_per_utc_day(stores):
    tasks, keys = stores
    today = utc_midnight(time.time())
    yesterday = today - DAY
    new_task(tasks, "task_y1", "alice", duration=7, created_at=yesterday + 10)
    new_task(tasks, "task_t1", "alice", duration=5, created_at=today + 1)
    new_task(tasks, "task_t2", "alice", duration=6, model="n", created_at=today + 2)
    new_task(tasks, "task_t3", "alice", duration=9, created_at=today + 3)
    new_task(tasks, "task_q", "alice", duration=8, created_at=today + 4)  # stays queued
    new_task(tasks, "task_b", "bob", duration=15, created_at=today + 5)
    for tid in ("task_y1", "task_t1", "task_t2"):
        tasks.transition(tid, RawStatus.RUNNING)
        tasks.transition(tid, RawStatus.COMPLETED)
    tasks.fail("task_t3", RawStatus.CANCELLED, "cancelled", "by client")
    # Charged today: task_t1 (5) + task_t2 (6) + task_q (8, queued); task_t3 was cancelled.
    assert keys.counts("alice", today) == (1, 19)
    assert keys.counts("alice", today, leave_out={"task_q"}) == (0, 11)
    day = lambda ts: dt.datetime.fromtimestamp(ts, dt.UTC).date()  # noqa: E731
    rows = KeyService(keys, ["m", "n"]).usage("alice", day(yesterday), day(today))
    got = {(r.day, r.model): (r.video_seconds, r.completed, r.failed, r.cancelled, r.expired) for r in rows}
    assert got == {
        (day(yesterday).isoformat(), "m"): (7, 1, 0, 0, 0),
        (day(today).isoformat(), "m"): (5, 1, 0, 1, 0),
        (day(today).isoformat(), "n"): (6, 1, 0, 0, 0),
    }
    assert {r.owner for r in KeyService(keys, []).usage(None, day(today), day(today))} == {"alice", "bob"}


def test_deleted_tasks_still_count(stores):
    """Usage and the daily quota outlive a deleted task (its client's DELETE, or retention),
    exactly once even when two deletes race."""
    tasks, keys = stores
    today = utc_midnight(time.time())
    for i, status in enumerate((RawStatus.COMPLETED, RawStatus.COMPLETED, RawStatus.CANCELLED)):
        new_task(tasks, f"task_d{i}", "carol", duration=5 + i, created_at=today + i)
        if status is RawStatus.COMPLETED:
            tasks.transition(f"task_d{i}", RawStatus.RUNNING)
            tasks.transition(f"task_d{i}", RawStatus.COMPLETED)
        else:
            tasks.fail(f"task_d{i}", status, "cancelled", "by client")
    day = dt.datetime.fromtimestamp(today, dt.UTC).date()
    service = KeyService(keys, ["m"])
    before = service.usage("carol", day, day)
    assert keys.counts("carol", today) == (0, 11)
    other = TaskStore.from_url(tasks.engine.url.render_as_string(hide_password=False))
    try:
        barrier = threading.Barrier(4)

        def delete(store: TaskStore, task_id: str) -> None:
            barrier.wait()
            store.delete(task_id)

        racers = [
            threading.Thread(target=delete, args=(s, t))
            for s, t in ((tasks, "task_d0"), (other, "task_d0"), (tasks, "task_d1"), (other, "task_d2"))
        ]
        for t in racers:
            t.start()
        for t in racers:
            t.join()
    finally:
        other.close()
    assert [tasks.get(f"task_d{i}") for i in range(3)] == [None, None, None]
    assert service.usage("carol", day, day) == before
    assert [(r.video_seconds, r.completed, r.cancelled) for r in before] == [(11, 2, 1)]
    assert keys.counts("carol", today) == (0, 11)
    assert keys.counts("carol", today + DAY) == (0, 0)


def test_the_insert_counts_again_under_the_key_row_lock(stores, request):
    """Creates racing in different API servers (here: threads with their own engines) can never
    pass a key's limit together, because the insert's transaction counts again with the key's
    row locked. PostgreSQL only: an embedded SQLite server is one process, whose ``admit``
    already counts every create under way."""
    tasks, keys = stores
    if tasks.engine.dialect.name != "postgresql":
        pytest.skip("several API servers share PostgreSQL, not SQLite")
    row, _ = KeyService(keys, ["m"]).create("racer", max_concurrent=2)
    caller = Caller.of_key(row)
    url = tasks.engine.url.render_as_string(hide_password=False)
    servers = [TaskStore.from_url(url) for _ in range(4)]
    barrier, made, refused = threading.Barrier(8), [], []

    def try_create(i: int) -> None:
        store = servers[i % 4]
        check = KeyQuotas(KeyStore(store.engine)).store_check(caller, f"task_r{i}", 5)
        barrier.wait()
        try:
            new_task(store, f"task_r{i}", caller.owner, check=check)
            made.append(i)
        except RateLimited as exc:
            assert exc.code == "quota_exceeded"
            refused.append(i)

    try:
        threads = [threading.Thread(target=try_create, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for s in servers:
            s.close()
    assert len(made) == 2 and len(refused) == 6
    assert keys.counts(caller.owner, 0.0)[0] == 2


def test_admit_counts_creates_still_under_way(stores):
    """In one process, creates admitted but not yet stored count against the limit."""
    _, keys = stores
    row, _ = KeyService(keys, ["m"]).create("burst", seconds_per_day=10)
    caller, quotas = Caller.of_key(row), KeyQuotas(keys)

    async def main() -> list[str]:
        gate = asyncio.Event()
        outcomes: list[str] = []

        async def one(i: int) -> None:
            try:
                async with quotas.admit(caller, f"task_a{i}", 5):
                    outcomes.append("in")
                    await gate.wait()
            except RateLimited:
                outcomes.append("refused")

        runs = [asyncio.create_task(one(i)) for i in range(3)]
        while len(outcomes) < 3:
            await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(*runs)
        return outcomes

    # In a thread of its own: another suite's sync Playwright may hold this thread's event loop.
    with ThreadPoolExecutor(1) as pool:
        assert sorted(pool.submit(lambda: asyncio.run(main())).result()) == ["in", "in", "refused"]


@pytest.fixture
def two_servers(pg, tmp_path):
    url = pg.create_database(f"two_{os.urandom(3).hex()}")
    config = tmp_path / "models.toml"
    config.write_text(
        '[models."slow"]\nresolution = "480p"\nfps = 8\n[models."slow".default]\nengine = "scenario"\n'
        "steps = 400\nstep_seconds = 0.05\n"
    )
    env = {"OPENDANCE_DATABASE_URL": url, "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    store = TaskStore.from_url(url)
    upgrade(store.engine)
    service = KeyService(KeyStore(store.engine), ["slow"])
    _, admin = service.create("root", admin=True)
    _, single = service.create("single", max_concurrent=1)
    store.close()
    with LiveServer(tmp_path / "a", env=env, config=config) as a, LiveServer(tmp_path / "b", env=env, config=config) as b:
        yield a, b, admin, single


def test_a_revoke_through_one_server_is_a_401_on_the_other(two_servers):
    a, b, admin, single = two_servers
    with b.client(single) as on_b:
        assert on_b.get("/v1/models").status_code == 200
        with a.client(admin) as root:
            assert root.delete("/v1/admin/keys/single").status_code == 200
        r = on_b.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["message"] == "this API key was revoked"


def test_a_keys_limit_holds_across_servers(two_servers):
    a, b, _, single = two_servers
    with a.client(single) as on_a, b.client(single) as on_b:
        first = on_a.post("/v1/video/generations", json={"model": "slow", "prompt": "x"})
        assert first.status_code == 200
        r = on_b.post("/v1/video/generations", json={"model": "slow", "prompt": "x"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
        assert on_a.post(f"/v1/video/generations/{first.json()['id']}/cancel").status_code == 200
        assert httpx.get(b.url + "/v1/models").status_code == 401  # keys in the shared store close both servers
