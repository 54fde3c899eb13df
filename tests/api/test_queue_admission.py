"""The queue caps (api/limits.py ``QueueAdmission``) on a real SQLite store: counted on the
event loop where the store reads inline (no thread, no lock), in a thread otherwise, and the
two ways interleaved, concurrent creates never admit more than a cap allows nor refuse one it
allows; a refused or failed create gives its place back."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from opendance.api.limits import QueueAdmission
from opendance.domain import RawStatus
from opendance.errors import RateLimited, ServiceUnavailable
from opendance.testing.tasks import task_fields


def admission(store, per_key: int, total: int, now: str) -> QueueAdmission:
    flip = itertools.cycle([True, False])
    counters = {
        "inline": store.unfinished_counts_at_once,
        "thread": None,
        # as when the file is busy now and then: every other count falls back to the thread
        "mixed": lambda owner, leave_out: store.unfinished_counts_at_once(owner, leave_out) if next(flip) else None,
    }
    return QueueAdmission(per_key, total, store.unfinished_counts, counters[now])


async def create(admit: QueueAdmission, store, owner: str) -> str:
    fields = task_fields(owner=owner)
    async with admit.admit(owner, fields["id"]):
        await asyncio.sleep(0)  # other creates run between the admission and the write
        written = store.create_at_once(**fields) or await asyncio.to_thread(store.create, **fields)
        await asyncio.sleep(0)
    return written.id


@pytest.mark.parametrize("now", ["inline", "thread", "mixed"])
def test_concurrent_creates_fill_each_cap_exactly(store, now):
    admit = admission(store, per_key=5, total=8, now=now)

    async def wave():
        return await asyncio.gather(*(create(admit, store, owner) for owner in ["a"] * 12 + ["b"] * 12), return_exceptions=True)

    async def main():  # one loop, as in the server (the admission's lock belongs to it)
        first = await wave()
        made = [r for r in first if isinstance(r, str)]
        for task_id in made[:3]:  # finished tasks free their places
            store.transition(task_id, RawStatus.RUNNING)
            store.fail(task_id, RawStatus.CANCELLED, "cancelled", "test", "cancelled")
        return first, await wave()

    first, second = asyncio.run(main())
    made = [r for r in first if isinstance(r, str)]
    refused = [type(r) for r in first if not isinstance(r, str)]
    assert len(made) == 8 and set(refused) == {RateLimited, ServiceUnavailable} and len(refused) == 16
    assert sum(isinstance(r, str) for r in second) == 3
    assert {type(r) for r in second if not isinstance(r, str)} <= {RateLimited, ServiceUnavailable}
    assert store.count_unfinished(None) == 8 and store.count_unfinished("a") <= 5 and store.count_unfinished("b") <= 5
    assert admit._reserved == {}  # every place given back


def test_a_failed_create_gives_its_place_back(store):
    admit = admission(store, per_key=1, total=0, now="inline")

    async def main():
        with pytest.raises(OSError):
            async with admit.admit("a", "task_fails"):
                raise OSError("the disk is full")
        assert admit._reserved == {}
        assert isinstance(await create(admit, store, "a"), str)  # the one place is free
        with pytest.raises(RateLimited):
            await create(admit, store, "a")

    asyncio.run(main())


def test_the_inline_count_is_the_stores_count(store):
    ids = [store.create(**task_fields(owner=o)).id for o in "aab"]
    store.transition(ids[0], RawStatus.RUNNING)
    store.transition(ids[1], RawStatus.RUNNING)
    store.fail(ids[1], RawStatus.FAILED, "x", "y", "z")
    for owner in ("a", "b", "c"):
        for leave_out in ((), (ids[0],), tuple(ids)):
            expected = (store.count_unfinished(owner, leave_out), store.count_unfinished(None, leave_out))
            assert store.unfinished_counts(owner, leave_out) == expected
            assert store.unfinished_counts_at_once(owner, leave_out) == expected
    assert store.unfinished_counts_at_once("a", [f"task_{i}" for i in range(501)]) is None  # too many to bind: a thread counts
