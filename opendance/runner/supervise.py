"""Follow one run to its end: the loop both runners use around an ``Execution``.

It writes progress (``Lifecycle.progress``), notes checkpoints, and ends the task through the
lifecycle when the engine answers (``Done``: COMPLETED; ``Failed``: FAILED, unless the code is
one the runner retries). It expires a run that outlives ``task_timeout``, asks the engine to
stop when the runner says so (``stop``: a cancel, a delete), and kills a run that has not
stopped ``grace`` seconds after it was asked. ``on_tick`` runs after every event and at least
every ``tick`` seconds (the Temporal activity heartbeats there and looks for cancels in the
store).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .executors.base import DIED, Execution
from .lifecycle import Lifecycle
from .messages import Checkpointed, Done, Failed, ModelLoaded, Progress

log = logging.getLogger("opendance.runner")

CANCEL_GRACE = 30.0  # seconds an engine has to stop a cancelled/expired job before its run is killed


class Outcome(str, enum.Enum):
    COMPLETED = "completed"  # the task is COMPLETED
    FAILED = "failed"  # the task is FAILED (the engine's error)
    EXPIRED = "expired"  # the task is EXPIRED (it ran too long)
    STOPPED = "stopped"  # it was stopped: cancelled, deleted, or ended elsewhere
    DIED = "died"  # the run's process died: run it again
    RETRY = "retry"  # the engine failed in a way worth another run (``retry_codes``)


@dataclass
class Result:
    outcome: Outcome
    failed: Failed | None = None  # the engine's answer, for RETRY


class Supervisor:
    def __init__(
        self,
        lifecycle: Lifecycle,
        execution: Execution,
        *,
        progress: int = 0,
        tick: float = 0.5,
        grace: float = CANCEL_GRACE,
        retry_codes: tuple[str, ...] = (),
        on_tick: Callable[[Supervisor], Awaitable[None]] | None = None,
        observe: Callable[[Any], None] | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.execution = execution
        self.task_id = execution.task_id
        self.progress = self.written = progress
        self.checkpoint = 0  # the step of the engine's last checkpoint
        self.tick = tick
        self.grace = grace
        self.retry_codes = retry_codes
        self.on_tick = on_tick
        self.observe = observe
        self.stop_reason: Outcome | None = None
        self.stop_sent_at: float | None = None
        self._loop = asyncio.get_running_loop()

    def stop(self, reason: Outcome = Outcome.STOPPED) -> None:
        """Ask the engine to stop (once); the run ends as ``reason``."""
        if self.stop_sent_at is None:
            self.stop_reason, self.stop_sent_at = reason, self._loop.time()
            self.execution.stop()

    async def run(self) -> Result:
        deadline = self._loop.time() + self.lifecycle.task_timeout
        try:
            while True:
                msg = await self.execution.next_event(self.tick)
                if (end := await self._end(msg)) is not None:
                    return end
                await self._note(msg)
                now = self._loop.time()
                if self.stop_sent_at is not None:
                    self._kill_if_late(now)
                elif now > deadline:
                    expired = await self.lifecycle.expire(self.task_id)
                    self.stop(Outcome.EXPIRED if expired is not None else Outcome.STOPPED)
                if self.on_tick is not None:
                    await self.on_tick(self)
        finally:
            self.lifecycle.forget(self.task_id)

    async def stop_and_wait(self, hand_over: bool = False) -> Result:
        """Stop the engine and wait for it (or kill it): the Temporal activity was cancelled.
        ``hand_over``: because this worker is shutting down; the task runs again elsewhere."""
        if hand_over and self.execution.hand_over_by_kill:
            self.execution.kill()
        self.stop()
        while True:
            msg = await self.execution.next_event(self.tick)
            if isinstance(msg, Done):
                return await self._done(msg)
            if isinstance(msg, Failed) or msg is DIED:
                return Result(self.stop_reason or Outcome.STOPPED)
            self._kill_if_late(self._loop.time())

    def _kill_if_late(self, now: float) -> None:
        if self.stop_sent_at is not None and now - self.stop_sent_at > self.grace:
            log.error("task %s: the engine did not stop in %gs; killing its run", self.task_id, self.grace)
            self.execution.kill()
            self.stop_sent_at = now  # and again after another grace, should the kill not take

    async def _end(self, msg: Any) -> Result | None:
        if isinstance(msg, Done):
            return await self._done(msg)
        if isinstance(msg, Failed):
            if msg.cancelled:
                return Result(self.stop_reason or Outcome.STOPPED)
            if msg.code in self.retry_codes:
                return Result(Outcome.RETRY, msg)
            failed = await self.lifecycle.fail(self.task_id, msg.code, msg.message)
            return Result(Outcome.FAILED if failed is not None else (self.stop_reason or Outcome.STOPPED))
        if msg is DIED:
            return Result(self.stop_reason or Outcome.DIED)
        return None

    async def _done(self, msg: Done) -> Result:
        task = await self.lifecycle.complete(self.task_id, msg)
        return Result(Outcome.COMPLETED if task is not None else (self.stop_reason or Outcome.STOPPED))

    async def _note(self, msg: Any) -> None:
        if isinstance(msg, Progress) and msg.progress > self.progress:
            self.progress = msg.progress
        elif isinstance(msg, Checkpointed):
            self.checkpoint = msg.step
        elif isinstance(msg, ModelLoaded):
            if msg.error is None:
                log.info("engine %s loaded in %.2fs", msg.engine, msg.seconds)
            else:
                log.warning(
                    "engine %s of %s failed to load (next try in %.0f s): %s", msg.engine, msg.model, msg.retry_in or 0, msg.error
                )
            if self.observe is not None:
                self.observe(msg)
        if self.progress > self.written and await self.lifecycle.progress(self.task_id, self.progress):
            self.written = self.progress
