"""``extra_body.callback_url``: POST the task object on every status change, with retries.

Deliveries for one task go out in order (a task's ``completed`` never overtakes its
``in_progress``); each is retried with backoff on a network error or a non-2xx answer, through
the same SSRF-safe connection as media fetches. Deliveries live in memory: a callback still
pending when the server stops is not sent after the restart (documented in the README).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from .media.fetch import SafeFetcher

log = logging.getLogger("opendance.callbacks")


class CallbackSender:
    def __init__(self, fetcher: SafeFetcher, attempts: int, timeout: float, backoff: float = 1.0) -> None:
        self.fetcher = fetcher
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff
        self._queues: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self._workers: dict[str, asyncio.Task] = {}
        self.delivered = 0
        self.failed = 0

    def send(self, task_id: str, url: str, payload: dict[str, Any]) -> None:
        self._queues[task_id].put_nowait((url, payload))
        if task_id not in self._workers:
            self._workers[task_id] = asyncio.create_task(self._drain(task_id), name=f"callbacks-{task_id}")

    async def _drain(self, task_id: str) -> None:
        queue = self._queues[task_id]
        try:
            while not queue.empty():
                url, payload = queue.get_nowait()
                await self._deliver(url, payload)
        finally:
            self._workers.pop(task_id, None)
            if queue.empty():
                self._queues.pop(task_id, None)
            else:  # something arrived while the last delivery finished
                self._workers[task_id] = asyncio.create_task(self._drain(task_id))

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
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
