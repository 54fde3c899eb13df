"""Per-key request rate and queue limits: the in-process limiter of the embedded server.

Two independent guards, neither importing FastAPI:

- ``RateLimiter``: a token bucket per caller (the API key's owner id, or the client address on
  an open server). Every ``/v1`` request takes a token; an empty bucket is a 429
  ``rate_limited`` whose ``Retry-After`` says when the next token is there.
- ``QueueAdmission``: before a create fetches any media, the caller's unfinished tasks (queued
  or running) and the server's are counted; at ``max_queued_per_key`` it is a 429
  ``too_many_queued_tasks``, at ``max_queued_total`` a 503 ``queue_full``, both with
  ``Retry-After``. Creates admitted but not yet stored hold a reservation, and counting,
  checking and reserving happen under one lock, so concurrent creates in this process can never
  pass a limit together.

Both live in one process. Several API processes (scale-out) each keep their own buckets and
reservations: the rate limit then applies per process, and the queue limits can be passed by at
most the creates racing in the other processes. A shared limiter needs a shared counter (Redis,
or the database) and is documented in docs/security.md, not built here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..errors import RateLimited, ServiceUnavailable

# How long a caller refused for a full queue is told to wait. Tasks take seconds (preview) to
# minutes (models); the client polls its own tasks meanwhile, so a short hint wastes little.
QUEUE_RETRY_AFTER = 10
PRUNE_AT = 10_000  # buckets kept before idle (full) ones are dropped


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets: ``per_minute`` tokens a minute per caller, at most ``burst`` saved up."""

    def __init__(self, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.burst = max(1, burst)
        self._rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def check(self, caller: str) -> None:
        """Take one token for ``caller`` or raise ``RateLimited`` (429) with ``retry_after``."""
        if not self.enabled:
            return
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[caller] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self._rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        wait = math.ceil((1.0 - bucket.tokens) / self._rate)
        raise RateLimited(
            f"too many requests for this API key: at most {self.per_minute} a minute (bursts of {self.burst}); retry in {wait} s",
            code="rate_limited",
            retry_after=max(1, wait),
        )

    def _prune(self, now: float) -> None:
        """Drop buckets that have refilled: a full bucket is the same as no bucket."""
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * self._rate >= self.burst]
        for key in full:
            del self._buckets[key]


# (owner, ids to leave out) -> (that owner's unfinished tasks, all unfinished tasks)
Counter = Callable[[str, frozenset[str]], tuple[int, int]]
# The same on the event loop, or None when it cannot count at once.
NowCounter = Callable[[str, frozenset[str]], tuple[int, int] | None]


class QueueAdmission:
    """Refuses a create when its key, or the whole server, has too many unfinished tasks.

    ``count`` is a blocking store query (run in a thread); 0 for a limit turns it off.
    ``count_now``, where given, counts on the event loop itself (the embedded SQLite store's
    inline reads) or returns None when it cannot at once; then the count and the reservation
    are one step with no await between them, so they need neither the lock nor a thread.
    """

    def __init__(self, per_key: int, total: int, count: Counter, count_now: NowCounter | None = None) -> None:
        self.per_key = per_key
        self.total = total
        self._count = count
        self._count_now = count_now
        self._lock = asyncio.Lock()
        self._reserved: dict[str, str] = {}  # task id -> owner, for creates still under way

    def admit(self, owner: str, task_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold a place for the new task ``task_id`` of ``owner`` until the block ends (the task
        is stored by then, so the store's count includes it; or the create failed and the place
        is given back). With both limits off, nothing to hold."""
        if not self.per_key and not self.total:
            return contextlib.nullcontext()
        return self._admit(owner, task_id)

    @contextlib.asynccontextmanager
    async def _admit(self, owner: str, task_id: str) -> AsyncIterator[None]:
        # Counted with each reserved task exactly once: the store's count leaves the reserved ids
        # out, whether their rows are written yet or not (counting both the row and the
        # reservation of a create that is just finishing would refuse a create the limit allows).
        # While a count in a thread holds the lock, every other count and release waits for it.
        reserved = frozenset(self._reserved)
        counted = None if self._lock.locked() or self._count_now is None else self._count_now(owner, reserved)
        if counted is not None:
            self._reserve(owner, task_id, *counted)
        else:
            async with self._lock:
                reserved = frozenset(self._reserved)
                mine, everyone = await asyncio.to_thread(self._count, owner, reserved)
                self._reserve(owner, task_id, mine, everyone)
        try:
            yield
        finally:
            if not self._lock.locked():
                del self._reserved[task_id]  # no count is under way: nothing to wait for
            else:
                # Shielded: a client that hangs up must not leave its place reserved forever.
                await asyncio.shield(self._release(task_id))

    def _reserve(self, owner: str, task_id: str, mine: int, everyone: int) -> None:
        """Refuse, or hold a place: ``mine`` and ``everyone`` are the store's counts without
        the reserved ids, to which the reservations are added here."""
        mine += sum(1 for who in self._reserved.values() if who == owner)
        everyone += len(self._reserved)
        if self.per_key and mine >= self.per_key:
            raise RateLimited(
                f"this API key has {mine} unfinished tasks; at most {self.per_key} may be queued or "
                "running at once: wait for some to finish (or cancel them)",
                code="too_many_queued_tasks",
                retry_after=QUEUE_RETRY_AFTER,
            )
        if self.total and everyone >= self.total:
            raise ServiceUnavailable(
                f"the server's queue is full ({everyone} unfinished tasks); try again later",
                code="queue_full",
                retry_after=QUEUE_RETRY_AFTER,
            )
        self._reserved[task_id] = owner

    async def _release(self, task_id: str) -> None:
        async with self._lock:
            del self._reserved[task_id]
