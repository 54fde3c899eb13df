"""The store side of running a task, the same for every runner and executor.

``start`` counts a run (QUEUED/RUNNING -> RUNNING) or, once a task has had ``max_attempts``
runs, fails it as ``interrupted``; ``progress`` writes progress at most every
``progress_interval`` seconds per task; ``complete``, ``fail`` and ``expire`` are the terminal
moves. Every move is one of the store's guarded transitions, so a late or repeated run can
never move a task backwards: a completion that finds its task cancelled, expired or deleted
drops the files it made. Checkpoints go when a task ends (``run_job`` drops them itself when
it stores the video).

``notify`` hears of every change made here (the local runner's listeners: callbacks, metrics);
the Temporal worker passes none (its workflow tells the API servers). ``retry`` wraps the writes
that must not be lost (the start of a run, the terminal moves): by default ``StoreRetry`` tries
again until the write is stored, with backoff, logging each failure, so a full disk or a
database that is away never leaves a task RUNNING with no worker; the Temporal worker bounds
the tries and heartbeats between them (then the activity fails and Temporal runs it again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..domain import IllegalTransition, RawStatus
from ..storage import Storage
from ..store import Task, TaskStore
from .checkpoints import checkpoint_prefix
from .messages import Done

log = logging.getLogger("opendance.runner")

Notify = Callable[[Task], Awaitable[None]]
Retry = Callable[..., Awaitable[Any]]  # retry(fn, *args, **kw): run a blocking store call until it is stored


class StoreRetry:
    """``await retry(fn, *args, **kw)``: run the blocking store write ``fn`` in a thread until it
    is stored. A guarded transition's refusal (``IllegalTransition``, ``KeyError``: the task
    moved or went) is an answer, not a failure, and is raised at once; any other error is logged
    and the write tried again after ``first_wait`` s, doubling up to ``max_wait`` s. ``attempts``
    bounds the tries (None: until stored); ``on_wait`` runs before each wait (a heartbeat)."""

    def __init__(
        self,
        *,
        attempts: int | None = None,
        first_wait: float = 0.25,
        max_wait: float = 5.0,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self.attempts = attempts
        self.first_wait = first_wait
        self.max_wait = max_wait
        self.on_wait = on_wait

    async def __call__(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        tries = 0
        while True:
            tries += 1
            try:
                result = await asyncio.to_thread(fn, *args, **kw)
            except (IllegalTransition, KeyError):
                raise
            except Exception as exc:
                if self.attempts is not None and tries >= self.attempts:
                    raise
                wait = min(self.max_wait, self.first_wait * 2 ** min(tries - 1, 16))
                log.warning("the store did not take the write %s (try %d: %s); retrying in %gs", _name(fn), tries, exc, wait)
                if self.on_wait is not None:
                    self.on_wait()
                await asyncio.sleep(wait)
                continue
            if tries > 1:
                log.warning("the store took the write %s after %d tries", _name(fn), tries)
            return result


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", repr(fn))


@dataclass
class Started:
    """What ``start`` did: ``task`` is RUNNING (``run`` counts it) or, when ``gave_up``, FAILED."""

    task: Task
    gave_up: bool = False

    @property
    def first_run(self) -> bool:
        return not self.gave_up and self.task.attempts == 1


class Lifecycle:
    def __init__(
        self,
        store: TaskStore,
        storage: Storage,
        *,
        max_attempts: int,
        task_timeout: float,
        progress_interval: float = 0.25,
        notify: Notify | None = None,
        retry: Retry | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.max_attempts = max_attempts
        self.task_timeout = task_timeout
        self.progress_interval = progress_interval
        self.notify = notify
        self.retry: Retry = retry if retry is not None else StoreRetry()
        self._progress_at: dict[str, float] = {}

    async def _changed(self, task: Task | None) -> None:
        if task is not None and self.notify is not None:
            await self.notify(task)

    # -- start ---------------------------------------------------------------------------

    async def start(self, task_id: str) -> Started | None:
        """Count a run of the task, or fail it when it ran ``max_attempts`` times; None when
        there is nothing to run (finished, deleted, or moved meanwhile)."""
        task = await asyncio.to_thread(self.store.get, task_id)
        if task is None or task.raw_status.is_terminal():
            return None
        if task.attempts >= self.max_attempts:
            message = f"the task was interrupted {task.attempts} times (worker crash or server restart) and is not run again"
            failed = await self.fail(task_id, "interrupted", message)
            return Started(failed, gave_up=True) if failed is not None else None
        try:  # retried too: a run whose start is lost would leave its task queued with nobody to run it
            task = await self.retry(self.store.transition, task_id, RawStatus.RUNNING)
        except (IllegalTransition, KeyError):
            return None
        if task.attempts == 1:
            await self._changed(task)  # the in_progress callback, once
        return Started(task)

    # -- while it runs -------------------------------------------------------------------

    async def progress(self, task_id: str, progress: int) -> bool:
        """Write progress unless this task's last write is younger than ``progress_interval``;
        True when written. A failed write is logged: progress is not worth stopping a video."""
        now = time.monotonic()
        if now - self._progress_at.get(task_id, 0.0) < self.progress_interval:
            return False
        self._progress_at[task_id] = now
        try:
            await asyncio.to_thread(self.store.set_progress, task_id, progress)
        except Exception as exc:
            log.warning("task %s: progress not written: %s", task_id, exc)
            return False
        return True

    def forget(self, task_id: str) -> None:
        """The run ended: drop what ``progress`` kept for it."""
        self._progress_at.pop(task_id, None)

    # -- the end ---------------------------------------------------------------------------

    async def complete(self, task_id: str, done: Done) -> Task | None:
        """COMPLETED with its video; None (and the files dropped) when the task had already
        ended another way, unless an earlier run of it completed it with the same keys."""
        try:
            task = await self.retry(
                self.store.transition,
                task_id,
                RawStatus.COMPLETED,
                video_key=done.video_key,
                last_frame_key=done.last_frame_key,
                engine_seconds=done.engine_seconds,
            )
        except (IllegalTransition, KeyError):
            current = await asyncio.to_thread(self.store.get, task_id)
            if current is None or current.raw_status is not RawStatus.COMPLETED:
                await self.drop_outputs(done)
            return None
        await self._changed(task)
        return task

    async def fail(self, task_id: str, code: str, message: str, to: RawStatus = RawStatus.FAILED) -> Task | None:
        """FAILED (or EXPIRED, CANCELLED) with an error; None when the task had already ended."""
        try:
            task = await self.retry(self.store.fail, task_id, to, code, message)
        except (IllegalTransition, KeyError):
            return None
        try:
            await asyncio.to_thread(self.storage.delete_prefix, checkpoint_prefix(task_id))
        except Exception as exc:  # the task has ended: leftover checkpoints are no reason to hide that
            log.warning("task %s: checkpoints not removed: %s", task_id, exc)
        await self._changed(task)
        return task

    async def expire(self, task_id: str) -> Task | None:
        message = f"the task ran longer than {self.task_timeout:g} s and was stopped"
        return await self.fail(task_id, "expired", message, RawStatus.EXPIRED)

    async def drop_outputs(self, done: Done) -> None:
        for key in (done.video_key, done.last_frame_key):
            if key:
                await asyncio.to_thread(self.storage.delete_prefix, key)
