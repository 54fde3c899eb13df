"""Callback delivery slots are shared fairly: one key's backlog to a receiver that never answers
holds a few slots, and another key's callback is delivered while all of that backlog still waits.

Checked by order and counts (which POSTs arrived, which attempts ended), not by timing."""

from __future__ import annotations

import asyncio

import pytest

from opendance.callbacks import PER_RECEIVER, CallbackSender, FairSlots
from opendance.media.fetch import SafeFetcher
from opendance.testing.http import HostileHost


@pytest.mark.timeout(120)
def test_a_dead_receiver_does_not_delay_another_keys_callback():
    host = HostileHost()
    dead, alive = host.hang("/never-answers"), host.add("/hook", b"", "text/plain")

    async def main() -> tuple[int, int, int]:
        fetcher = SafeFetcher(["127.0.0.1"], connect_timeout=5, read_timeout=60, total_timeout=60, max_redirects=0)
        # One attempt of 30 s each: before any attempt to the dead receiver ends, B must be through.
        sender = CallbackSender(fetcher, attempts=1, timeout=30)
        try:
            for i in range(130):
                sender.send(f"task_a{i}", dead, {"id": f"task_a{i}", "status": "queued"}, "QUEUED", owner="key-a")
            while len(host.paths("POST")) < PER_RECEIVER:  # A's first POSTs reached the receiver
                await asyncio.sleep(0.02)
            sender.send("task_b", alive, {"id": "task_b", "status": "queued"}, "QUEUED", owner="key-b")
            while sender.delivered + sender.failed == 0:
                await asyncio.sleep(0.02)
            return sender.delivered, sender.failed, host.paths("POST").count("/never-answers")
        finally:
            await sender.drain(timeout=0.1)
            await fetcher.aclose()

    try:
        delivered, failed, stuck = asyncio.run(main())
    finally:
        host.close()
    assert (delivered, failed) == (1, 0)  # B arrived while none of A's 130 attempts had ended
    assert stuck == PER_RECEIVER  # A holds its receiver's share of the slots, no more


def test_a_freed_slot_goes_to_the_owner_holding_fewest():
    """Two slots; A holds both and has two more waiting when B and C arrive."""

    async def main() -> list[str]:
        slots = FairSlots(total=2, per_owner=2, per_flow=2)
        order: list[str] = []
        release = {name: asyncio.Event() for name in ("a1", "a2", "a3", "a4", "b1", "c1")}

        async def deliver(name: str, owner: str) -> None:
            async with slots.slot(owner, "receiver"):
                order.append(name)
                await release[name].wait()

        async def finish(name: str) -> None:
            release[name].set()
            for _ in range(5):
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(deliver(n, "a")) for n in ("a1", "a2", "a3", "a4")]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(deliver("b1", "b")), asyncio.create_task(deliver("c1", "c"))]
        await asyncio.sleep(0)
        assert order == ["a1", "a2"] and slots.busy == 2
        await finish("a1")  # A still holds one, B and C none: B (waiting before C), not a3
        assert order[-1] == "b1"
        await finish("a2")  # A and C hold none: A's flow has waited longest
        assert order[-1] == "a3"
        await finish("b1")  # A holds one, C none: C
        assert order[-1] == "c1"
        for name in ("a3", "c1", "a4"):
            await finish(name)
        await asyncio.gather(*tasks)
        assert slots.busy == 0 and not slots.held
        return order

    assert asyncio.run(main()) == ["a1", "a2", "b1", "a3", "c1", "a4"]


def test_per_owner_and_per_flow_caps_and_cancelled_waiters():
    async def main() -> None:
        slots = FairSlots(total=10, per_owner=3, per_flow=2)
        gate = asyncio.Event()
        inside: list[str] = []

        async def deliver(name: str, owner: str, flow: str) -> None:
            async with slots.slot(owner, flow):
                inside.append(name)
                await gate.wait()

        tasks = [asyncio.create_task(deliver(f"a-x{i}", "a", "x")) for i in range(3)]
        tasks += [asyncio.create_task(deliver(f"a-y{i}", "a", "y")) for i in range(3)]
        tasks.append(asyncio.create_task(deliver("b-x0", "b", "x")))  # another owner's flow of the same name
        await asyncio.sleep(0.01)
        assert sorted(inside) == ["a-x0", "a-x1", "a-y0", "b-x0"]  # two for A's x, then A's cap of 3
        tasks[2].cancel()  # a waiter that goes away leaves its queue
        await asyncio.sleep(0.01)
        assert slots.busy == 4
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        assert sorted(inside) == ["a-x0", "a-x1", "a-y0", "a-y1", "a-y2", "b-x0"]
        assert slots.busy == 0 and not slots.held and not slots._waiting

    asyncio.run(main())
