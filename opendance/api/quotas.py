"""The limits of a store key, enforced when a task is created: a 429 ``quota_exceeded``.

- ``max_concurrent``: tasks of the key queued or running at once.
- ``seconds_per_day``: seconds of video asked for per UTC day (tasks created that day, unless
  they ended failed, cancelled or expired: those made no video).

Checked twice. First before any media is fetched (a refused create costs nothing), counting
the store and the creates still under way in this process, under one lock, as
``QueueAdmission`` does. Then again in the transaction that inserts the task, with the key's
row locked (``SELECT ... FOR UPDATE``), so that API servers sharing PostgreSQL cannot pass a
limit together: the second one waits for the first one's insert and counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from sqlalchemy.orm import Session

from ..errors import RateLimited
from ..keys import Caller, utc_midnight
from ..store.keys import KeyStore

CONCURRENT_RETRY_AFTER = 10  # seconds; tasks take seconds (preview) to minutes (models)


def quota_error(caller: Caller, unfinished: int, seconds_today: int, seconds: int, now: float) -> RateLimited | None:
    """The 429 for a new task of ``seconds`` given what the key already has, or None."""
    if caller.max_concurrent is not None and unfinished >= caller.max_concurrent:
        return RateLimited(
            f"this API key may have at most {caller.max_concurrent} tasks queued or running at once and has "
            f"{unfinished}: wait for one to finish (or cancel one)",
            code="quota_exceeded",
            retry_after=CONCURRENT_RETRY_AFTER,
        )
    if caller.seconds_per_day is not None and seconds_today + seconds > caller.seconds_per_day:
        reset = int(utc_midnight(now) + 86400 - now) + 1
        return RateLimited(
            f"this API key may make {caller.seconds_per_day} s of video per UTC day; {seconds_today} s are used today "
            f"and this task asks for {seconds} s (the day ends in {reset // 3600} h {reset % 3600 // 60} min)",
            code="quota_exceeded",
            retry_after=reset,
        )
    return None


class KeyQuotas:
    def __init__(self, keys: KeyStore, clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self._clock = clock
        self._lock = asyncio.Lock()
        self._reserved: dict[str, tuple[str, int]] = {}  # task id -> (owner, seconds), creates under way

    @contextlib.asynccontextmanager
    async def admit(self, caller: Caller, task_id: str, seconds: int) -> AsyncIterator[None]:
        """Hold a place for the new task until the block ends (it is stored by then, or failed)."""
        if not caller.limited:
            yield
            return
        async with self._lock:
            now = self._clock()
            mine = {tid: secs for tid, (owner, secs) in self._reserved.items() if owner == caller.owner}
            unfinished, today = await asyncio.to_thread(
                self.keys.counts, caller.owner, utc_midnight(now), frozenset(self._reserved)
            )
            error = quota_error(caller, unfinished + len(mine), today + sum(mine.values()), seconds, now)
            if error is not None:
                raise error
            self._reserved[task_id] = (caller.owner, seconds)
        try:
            yield
        finally:
            await asyncio.shield(self._release(task_id))

    async def _release(self, task_id: str) -> None:
        async with self._lock:
            del self._reserved[task_id]

    def store_check(self, caller: Caller, task_id: str, seconds: int) -> Callable[[Session], None] | None:
        """The same limits, counted again inside the insert's transaction (run in its thread)."""
        if not caller.limited:
            return None

        def check(session: Session) -> None:
            self.keys.lock(session, caller.owner)
            now = self._clock()
            # Creates of this process still under way were let in by ``admit``: they count too
            # (this one is among them; it is counted as the new task instead).
            others = {
                tid: secs for tid, (owner, secs) in list(self._reserved.items()) if owner == caller.owner and tid != task_id
            }
            unfinished, today = self.keys.counts(caller.owner, utc_midnight(now), frozenset(self._reserved), session=session)
            error = quota_error(caller, unfinished + len(others), today + sum(others.values()), seconds, now)
            if error is not None:
                raise error

        return check
