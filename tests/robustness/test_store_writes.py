"""The pieces behind a full disk (issue 10, item 2), on real SQLite databases: ``StoreRetry`` tries
a write again until it is stored (and not a refused transition), ``check_writable`` fails where
a read still works, and ``/readyz``'s ``WriteProbe`` keeps its answer for ``ttl`` seconds.

A read-only open of a real database (``mode=ro``) makes the failing writes, as root too.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from opendance.api.readiness import WriteProbe
from opendance.domain import IllegalTransition, RawStatus
from opendance.runner.lifecycle import StoreRetry
from opendance.store import TaskStore
from opendance.store.migrate import upgrade
from opendance.testing.tasks import add_task


@pytest.fixture
def stores(tmp_path):
    path = tmp_path / "tasks.db"
    writable = TaskStore.from_url(f"sqlite:///{path}")
    upgrade(writable.engine)
    read_only = TaskStore.from_url(f"sqlite:///file:{path}?mode=ro&uri=true")
    yield writable, read_only
    read_only.close()
    writable.close()


def make_task(store: TaskStore):
    return add_task(store, id="task_x", mode="text", engine="preview", job={})


def test_check_writable_fails_where_reads_work(stores):
    writable, read_only = stores
    writable.check_writable()
    writable.check_writable()  # the row exists now: rewritten
    read_only.ping()
    with pytest.raises(Exception, match="readonly"):
        read_only.check_writable()


def test_a_write_is_tried_again_until_it_is_stored(stores, caplog):
    writable, read_only = stores
    tries = []

    def write() -> str:
        tries.append(1)
        (read_only if len(tries) < 4 else writable).check_writable()  # 3 failures, then room again
        return "stored"

    with caplog.at_level(logging.WARNING, "opendance.runner"):
        assert asyncio.run(StoreRetry(first_wait=0.001)(write)) == "stored"
    assert len(tries) == 4
    assert sum("did not take the write write" in r.getMessage() for r in caplog.records) == 3
    assert any("took the write write after 4 tries" in r.getMessage() for r in caplog.records)


def test_bounded_tries_give_up_and_refusals_are_answers_at_once(stores):
    writable, read_only = stores
    with pytest.raises(Exception, match="readonly"):
        asyncio.run(StoreRetry(attempts=3, first_wait=0.001)(read_only.check_writable))
    make_task(writable)
    writable.transition("task_x", RawStatus.RUNNING)
    writable.fail("task_x", RawStatus.FAILED, "x", "y")
    tries = []

    def again():
        tries.append(1)
        return writable.transition("task_x", RawStatus.COMPLETED)

    with pytest.raises(IllegalTransition):
        asyncio.run(StoreRetry(first_wait=0.001)(again))
    assert len(tries) == 1
    with pytest.raises(KeyError):
        asyncio.run(StoreRetry(first_wait=0.001)(writable.transition, "task_gone", RawStatus.RUNNING))


def test_the_write_probe_keeps_its_answer_for_ttl(stores):
    writable, read_only = stores
    runs = []
    target = [read_only]

    def probe() -> None:
        runs.append(1)
        target[0].check_writable()

    cached = WriteProbe(probe, ttl=3600)
    for _ in range(3):
        with pytest.raises(Exception, match="readonly"):
            cached.check()
    assert len(runs) == 1  # one probe, its failure kept
    fresh = WriteProbe(probe, ttl=0)
    target[0] = writable
    fresh.check()
    fresh.check()
    assert len(runs) == 3
