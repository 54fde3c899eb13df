"""``extra_body.callback_url``: POST the task object on every status change, with retries.

Deliveries for one task go out in order (a task's ``completed`` never overtakes its
``in_progress``); each is retried with backoff on a network error or a non-2xx answer, through
the same SSRF-safe connection as media fetches.

Nothing is lost when the server stops: the store marks a status change's callback pending in
the same write as the change, ``settled`` clears the mark once the POST is delivered (or given
up after every attempt), and ``TaskService.resend_due_callbacks`` sends the current task object
of whatever is still marked after a restart. Delivery is therefore at least once: a POST that
arrived just before the server died may arrive again.

Slots are shared fairly (``FairSlots``): at most ``MAX_CONCURRENT`` POSTs at once, at most
``PER_OWNER`` of them for one API key and ``PER_RECEIVER`` for one key's receiver (host:port),
and a freed slot goes to the waiting key that holds the fewest. So one key's hundreds of tasks
calling a receiver that never answers hold a few slots, and another key's callback goes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from .media.fetch import SafeFetcher

log = logging.getLogger("opendance.callbacks")


MAX_CONCURRENT = 64  # POSTs in flight at once, across all tasks (a backlog after a restart)
PER_OWNER = 16  # ... of them for one API key
PER_RECEIVER = 8  # ... of them for one key's receiver (host:port)
Settled = Callable[[str, str], Awaitable[None]]  # (task id, raw status) -> None


class FairSlots:
    """``total`` slots, at most ``per_owner`` held by one owner and ``per_flow`` by one of its
    flows (here: a receiver). A freed slot goes to the waiting flow whose owner holds the fewest
    slots (ties: the flow that has waited longest), never to the next request in line: a backlog
    of one owner cannot make another owner wait behind it."""

    def __init__(self, total: int, per_owner: int, per_flow: int) -> None:
        self.total, self.per_owner, self.per_flow = total, per_owner, per_flow
        self.busy = 0
        self.held: dict[str, int] = defaultdict(int)  # owner -> slots held
        self._flow_held: dict[tuple[str, str], int] = defaultdict(int)
        self._waiting: dict[tuple[str, str], deque[asyncio.Future]] = {}  # in the order flows began waiting

    @contextlib.asynccontextmanager
    async def slot(self, owner: str, flow: str) -> AsyncIterator[None]:
        key = (owner, flow)
        if key not in self._waiting and self._free_for(key):
            self._take(key)
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, deque()).append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # granted as it was cancelled: give it back
                    self._give_back(key)
                elif (queue := self._waiting.get(key)) is not None:
                    queue.remove(waiter)
                    if not queue:
                        del self._waiting[key]
                raise
        try:
            yield
        finally:
            self._give_back(key)

    def _free_for(self, key: tuple[str, str]) -> bool:
        return (
            self.busy < self.total and self.held.get(key[0], 0) < self.per_owner and self._flow_held.get(key, 0) < self.per_flow
        )

    def _take(self, key: tuple[str, str]) -> None:
        self.busy += 1
        self.held[key[0]] += 1
        self._flow_held[key] += 1

    def _give_back(self, key: tuple[str, str]) -> None:
        self.busy -= 1
        self.held[key[0]] -= 1
        if not self.held[key[0]]:
            del self.held[key[0]]
        self._flow_held[key] -= 1
        if not self._flow_held[key]:
            del self._flow_held[key]
        self._wake()

    def _wake(self) -> None:
        while self.busy < self.total:
            ready = [k for k in self._waiting if self._free_for(k)]
            if not ready:
                return
            key = min(ready, key=lambda k: self.held.get(k[0], 0))  # min() keeps the earliest of equals
            queue = self._waiting.pop(key)
            waiter = queue.popleft()  # never a cancelled one: those leave their queue at once
            self._take(key)  # taken here, before the waiter runs, so nobody overtakes it
            waiter.set_result(None)
            if queue:
                self._waiting[key] = queue  # this flow's next request waits its turn again


class CallbackSender:
    def __init__(
        self, fetcher: SafeFetcher, attempts: int, timeout: float, backoff: float = 1.0, settled: Settled | None = None
    ) -> None:
        self.fetcher = fetcher
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff
        self.settled = settled
        self._slots = FairSlots(MAX_CONCURRENT, PER_OWNER, PER_RECEIVER)
        self._queues: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self._workers: dict[str, asyncio.Task] = {}
        self.delivered = 0
        self.failed = 0

    @property
    def window(self) -> float:
        """The longest one delivery may take, every attempt and backoff included."""
        return self.attempts * self.timeout + self.backoff * (2 ** max(0, self.attempts - 1) - 1)

    def sending(self, task_id: str) -> bool:
        return task_id in self._workers

    def send(self, task_id: str, url: str, payload: dict[str, Any], raw_status: str, *, owner: str = "") -> None:
        """Queue a POST of ``payload`` to ``url``; ``owner`` (the task's key) shares the slots fairly."""
        self._queues[task_id].put_nowait((owner, url, payload, raw_status))
        if task_id not in self._workers:
            self._workers[task_id] = asyncio.create_task(self._drain(task_id), name=f"callbacks-{task_id}")

    async def _drain(self, task_id: str) -> None:
        queue = self._queues[task_id]
        try:
            while not queue.empty():
                owner, url, payload, raw_status = queue.get_nowait()
                await self._deliver(owner, url, payload)
                if self.settled is not None:
                    try:
                        await self.settled(task_id, raw_status)
                    except Exception:
                        log.exception("could not record the callback of %s (%s) as sent", task_id, raw_status)
        finally:
            self._workers.pop(task_id, None)
            if queue.empty():
                self._queues.pop(task_id, None)
            else:  # something arrived while the last delivery finished
                self._workers[task_id] = asyncio.create_task(self._drain(task_id))

    async def _deliver(self, owner: str, url: str, payload: dict[str, Any]) -> None:
        try:
            receiver = urlsplit(url).netloc.lower()
        except ValueError:
            receiver = url
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._slots.slot(owner, receiver):  # per attempt: a receiver in backoff holds no slot
                    status = await self.fetcher.post_json(url, payload, timeout=self.timeout)
                if 200 <= status < 300:
                    self.delivered += 1
                    return
                reason = f"HTTP {status}"
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            log.warning(
                "callback for %s (%s) attempt %d/%d failed: %s",
                payload.get("id"),
                payload.get("status"),
                attempt,
                self.attempts,
                reason,
            )
            if attempt < self.attempts:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        self.failed += 1

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a little) for pending deliveries, e.g. on shutdown."""
        pending = list(self._workers.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for t in self._workers.values():
            t.cancel()
