"""The generate activity of ``opendance worker`` (see ``temporal_worker`` for the whole story):
one task on one device process, from QUEUED to a final state, heartbeating on the way."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from ..config import Settings
from ..domain import IllegalTransition, RawStatus
from ..storage import Storage
from ..store import TaskStore
from .checkpoints import checkpoint_prefix
from .devices import DIED, DeviceProcess, DevicePool
from .messages import CancelJob, Checkpointed, Done, Failed, ModelLoaded, Progress, RunJob
from .temporal_workflow import COMPLETED, EXPIRED, FAILED, GENERATE, SKIPPED, STARTED_SIGNAL, STOPPED

log = logging.getLogger("opendance.worker")

TICK = 0.5  # seconds between heartbeats and checks while the engine is quiet
STORE_CHECK_INTERVAL = 1.0  # how often a run looks in the store for a cancel or a delete
PROGRESS_WRITE_INTERVAL = 0.5  # seconds between progress writes per task
CANCEL_GRACE = 30.0  # seconds an engine has to stop before its process is killed


class _Run:
    """The state of one task on one device."""

    def __init__(self, task_id: str, device: DeviceProcess) -> None:
        self.task_id = task_id
        self.device = device
        self.progress = 0
        self.progress_written = 0
        self.checkpoint = 0
        self.stop_reason: str | None = None  # set once we asked the engine to stop
        self.stop_sent_at: float | None = None
        self.died = False
        self.last_store_check = 0.0
        self.last_progress_write = 0.0
        self._getter: asyncio.Future | None = None

    async def next_event(self, timeout: float) -> Any:
        """The device's next message, or ``TICK`` after ``timeout``. The pending read survives
        a cancellation of the activity, so no message is lost while it stops the engine."""
        if self._getter is None:
            self._getter = asyncio.ensure_future(self.device.events.get())
        done, _ = await asyncio.wait({self._getter}, timeout=timeout)
        if not done:
            return TICK
        msg, self._getter = self._getter.result(), None
        if msg is DIED:
            self.died = True
        return msg

    def stop(self, reason: str, now: float) -> None:
        if self.stop_sent_at is None:
            self.stop_reason, self.stop_sent_at = reason, now
            self.device.send(CancelJob(self.task_id))

    def close(self) -> None:
        if self._getter is not None and not self._getter.done():
            self._getter.cancel()


class GenerateActivity:
    def __init__(self, settings: Settings, store: TaskStore, storage: Storage, pool: DevicePool) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.pool = pool
        self._background: set[asyncio.Task] = set()

    @activity.defn(name=GENERATE)
    async def generate(self, task_id: str) -> str:
        task = await asyncio.to_thread(self.store.get, task_id)
        if task is None or task.raw_status.is_terminal():
            return SKIPPED
        device = await self._take_device()
        run = _Run(task_id, device)
        try:
            return await self._run(run)
        finally:
            run.close()
            if run.died:
                self._spawn(self._restart(device))  # a fresh process first, then the device is free
            else:
                self.pool.release(device)

    async def _take_device(self) -> DeviceProcess:
        getter = asyncio.ensure_future(self.pool.free.get())
        try:
            # A worker serving several models can take one task per model; the extra ones wait
            # here for a device, heartbeating so that Temporal knows they are in good hands.
            while not (await asyncio.wait({getter}, timeout=TICK))[0]:
                activity.heartbeat()
            return getter.result()
        except BaseException:
            if getter.done() and not getter.cancelled():
                self.pool.release(getter.result())
            getter.cancel()
            raise

    async def _restart(self, device: DeviceProcess) -> None:
        try:
            await device.restart()
        finally:
            self.pool.release(device)

    def _spawn(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    # -- one run ---------------------------------------------------------------------------

    async def _run(self, run: _Run) -> str:
        info, s = activity.info(), self.settings
        task = await asyncio.to_thread(self.store.get, run.task_id)
        if task is None or task.raw_status.is_terminal():
            return SKIPPED
        if task.attempts >= s.max_attempts:
            message = f"the task was interrupted {task.attempts} times (worker crash or restart) and is not run again"
            return FAILED if await self._fail(run.task_id, RawStatus.FAILED, "interrupted", message) else SKIPPED
        try:
            task = await asyncio.to_thread(self.store.transition, run.task_id, RawStatus.RUNNING)
        except (IllegalTransition, KeyError):
            return SKIPPED
        if task.attempts == 1:
            self._signal_started(info.workflow_id)
        if info.attempt > 1:
            log.info("task %s: attempt %d (run %d), last heartbeat %s", run.task_id, info.attempt, task.attempts, list(info.heartbeat_details))
        run.progress = run.progress_written = task.progress
        run.device.send(RunJob(run.task_id, task.job))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.task_timeout
        try:
            while True:
                msg = await run.next_event(TICK)
                if isinstance(msg, Done):
                    return await self._done(run, msg)
                if isinstance(msg, Failed):
                    return await self._failed(run, msg)
                if msg is DIED:
                    if run.stop_reason is not None:
                        return run.stop_reason
                    await asyncio.to_thread(run.device.process.join, 2.0)
                    raise ApplicationError(
                        f"the worker process for {run.device.device} died (exit code {run.device.exitcode}) while making the video",
                        type="WorkerDied",
                    )
                await self._progress(run, msg, loop.time())
                await self._watch(run, loop.time(), deadline)
        except asyncio.CancelledError:
            outcome = await self._stop_after_cancel(run)
            if activity.is_worker_shutdown():
                if outcome == COMPLETED:
                    return outcome
                raise ApplicationError("the worker is shutting down; the task resumes elsewhere", type="WorkerShutdown") from None
            raise

    async def _progress(self, run: _Run, msg: Any, now: float) -> None:
        if isinstance(msg, Progress) and msg.progress > run.progress:
            run.progress = msg.progress
        elif isinstance(msg, Checkpointed):
            run.checkpoint = msg.step
        elif isinstance(msg, ModelLoaded):
            log.info("engine %s loaded in %.2fs on %s", msg.engine, msg.seconds, run.device.device)
        if run.progress > run.progress_written and now - run.last_progress_write >= PROGRESS_WRITE_INTERVAL:
            run.last_progress_write = now
            try:
                await asyncio.to_thread(self.store.set_progress, run.task_id, run.progress)
                run.progress_written = run.progress
            except Exception as exc:  # noqa: BLE001 - a database blip must not stop the video
                log.warning("task %s: progress not written: %s", run.task_id, exc)
        activity.heartbeat(run.progress, run.checkpoint)

    async def _watch(self, run: _Run, now: float, deadline: float) -> None:
        """Stop the engine when the task is over elsewhere or out of time; kill it if it will not stop."""
        if run.stop_sent_at is not None:
            if now - run.stop_sent_at > CANCEL_GRACE:
                log.error("task %s: the engine did not stop in %ss; killing its process", run.task_id, CANCEL_GRACE)
                run.device.kill()
            return
        if now - run.last_store_check >= STORE_CHECK_INTERVAL:
            run.last_store_check = now
            try:
                task = await asyncio.to_thread(self.store.get, run.task_id)
            except Exception as exc:  # noqa: BLE001 - the store may be briefly away; keep running
                log.warning("task %s: store check failed: %s", run.task_id, exc)
            else:
                if task is None or task.raw_status.is_terminal():
                    run.stop(STOPPED, now)
                    return
        if now > deadline:
            message = f"the task ran longer than {self.settings.task_timeout:g} s and was stopped"
            expired = await self._fail(run.task_id, RawStatus.EXPIRED, "expired", message)
            run.stop(EXPIRED if expired else STOPPED, now)

    async def _done(self, run: _Run, msg: Done) -> str:
        try:
            await _retry_store(
                self.store.transition, run.task_id, RawStatus.COMPLETED,
                video_key=msg.video_key, last_frame_key=msg.last_frame_key, engine_seconds=msg.engine_seconds,
            )
        except (IllegalTransition, KeyError):
            task = await asyncio.to_thread(self.store.get, run.task_id)
            if task is None or task.raw_status is not RawStatus.COMPLETED:
                # Cancelled, expired or deleted while the last frames were written: drop the
                # files. (COMPLETED means an earlier attempt that Temporal had given up on
                # finished first: the files under the same keys are that task's video.)
                for key in (msg.video_key, msg.last_frame_key):
                    if key:
                        await asyncio.to_thread(self.storage.delete_prefix, key)
            return run.stop_reason or STOPPED
        return COMPLETED

    async def _failed(self, run: _Run, msg: Failed) -> str:
        if msg.cancelled:
            return run.stop_reason or STOPPED
        if msg.code == "storage_error":  # storage briefly away: retry (from the checkpoint)
            raise ApplicationError(msg.message, type="StorageError")
        failed = await self._fail(run.task_id, RawStatus.FAILED, msg.code, msg.message)
        return FAILED if failed else (run.stop_reason or STOPPED)

    async def _stop_after_cancel(self, run: _Run) -> str:
        """Temporal cancelled the activity: stop the engine, wait for it (or kill it)."""
        loop = asyncio.get_running_loop()
        run.stop(STOPPED, loop.time())
        while True:
            msg = await run.next_event(TICK)
            if isinstance(msg, Done):
                return await self._done(run, msg)
            if isinstance(msg, Failed) or msg is DIED:
                return run.stop_reason or STOPPED
            if loop.time() - run.stop_sent_at > CANCEL_GRACE:
                run.device.kill()

    async def _fail(self, task_id: str, to: RawStatus, code: str, message: str) -> bool:
        try:
            await _retry_store(self.store.fail, task_id, to, code, message)
        except (IllegalTransition, KeyError):
            return False
        await asyncio.to_thread(self.storage.delete_prefix, checkpoint_prefix(task_id))
        return True

    def _signal_started(self, workflow_id: str) -> None:
        """Tell the workflow the first run began (the API then sends the in_progress callback)."""
        handle = activity.client().get_workflow_handle(workflow_id)

        async def send() -> None:
            try:
                await handle.signal(STARTED_SIGNAL)
            except Exception as exc:  # noqa: BLE001 - a lost callback must not stop the video
                log.warning("could not signal %s: %s", workflow_id, exc)

        self._spawn(send())


async def _retry_store(fn, *args, attempts: int = 20, **kw):
    """A store write that must not be lost to a brief database outage (the video is made)."""
    for attempt in range(attempts):
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except (IllegalTransition, KeyError):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. PostgreSQL restarting
            if attempt == attempts - 1:
                raise
            log.warning("store write failed (%s); retrying", exc)
            if activity.in_activity():
                activity.heartbeat()
            await asyncio.sleep(min(5.0, 0.25 * 2**attempt))
