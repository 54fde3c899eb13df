"""``extra_body.callback_url``: POST the task object on every status change, with retries.

Deliveries for one task go out in order (a task's ``completed`` never overtakes its
``in_progress``); each is retried with backoff on a network error or a non-2xx answer, through
the same SSRF-safe connection as media fetches.

Nothing is lost when the server stops: the store marks a status change's callback pending in
the same write as the change, ``settled`` clears the mark once the POST is delivered (or given
up after every attempt), and ``TaskService.resend_due_callbacks`` sends the current task object
of whatever is still marked after a restart. Delivery is therefore at least once: a POST that
arrived just before the server died may arrive again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from .media.fetch import SafeFetcher

log = logging.getLogger("opendance.callbacks")


MAX_CONCURRENT = 64  # POSTs in flight at once, across all tasks (a backlog after a restart)
Settled = Callable[[str, str], Awaitable[None]]  # (task id, raw status) -> None


class CallbackSender:
    def __init__(self, fetcher: SafeFetcher, attempts: int, timeout: float, backoff: float = 1.0,
                 settled: Settled | None = None) -> None:
        self.fetcher = fetcher
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff
        self.settled = settled
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
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

    def send(self, task_id: str, url: str, payload: dict[str, Any], raw_status: str) -> None:
        self._queues[task_id].put_nowait((url, payload, raw_status))
        if task_id not in self._workers:
            self._workers[task_id] = asyncio.create_task(self._drain(task_id), name=f"callbacks-{task_id}")

    async def _drain(self, task_id: str) -> None:
        queue = self._queues[task_id]
        try:
            while not queue.empty():
                url, payload, raw_status = queue.get_nowait()
                await self._deliver(url, payload)
                if self.settled is not None:
                    try:
                        await self.settled(task_id, raw_status)
                    except Exception:  # noqa: BLE001 - left pending: sent again after a restart
                        log.exception("could not record the callback of %s (%s) as sent", task_id, raw_status)
        finally:
            self._workers.pop(task_id, None)
            if queue.empty():
                self._queues.pop(task_id, None)
            else:  # something arrived while the last delivery finished
                self._workers[task_id] = asyncio.create_task(self._drain(task_id))

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._slots:  # per attempt: a receiver in backoff holds no slot
                    status = await self.fetcher.post_json(url, payload, timeout=self.timeout)
                if 200 <= status < 300:
                    self.delivered += 1
                    return
                reason = f"HTTP {status}"
            except Exception as exc:  # noqa: BLE001 - any failure is retried, then logged
                reason = f"{type(exc).__name__}: {exc}"
            log.warning("callback for %s (%s) attempt %d/%d failed: %s", payload.get("id"), payload.get("status"), attempt, self.attempts, reason)
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
