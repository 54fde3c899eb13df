"""The in-process runner: a dispatcher in the API's event loop plus one spawned worker
process per device.

The dispatcher keeps a FIFO of task ids, gives the next one to an idle worker, and turns the
worker's messages into store transitions. Everything durable is in the store, so after a
crash or restart ``start()`` rebuilds the queue from it: queued tasks are dispatched again,
running ones are run again (up to ``max_attempts`` runs in all, then failed with a clear
error). A worker that dies is restarted and its task run again the same way; a task that
outlives ``task_timeout`` is EXPIRED and its worker told to stop (and killed if it will not).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import shutil
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ..config import Settings
from ..domain import IllegalTransition, RawStatus
from ..storage import Storage
from ..store import Task, TaskStore
from .base import Runner
from .messages import CancelJob, Done, Failed, ModelLoaded, Progress, Ready, RunJob, Shutdown
from .worker import worker_main

log = logging.getLogger("opendance.runner")

PROGRESS_WRITE_INTERVAL = 0.25  # seconds between progress writes per task
CANCEL_GRACE = 30.0  # seconds a worker has to stop a cancelled/expired job before it is killed


@dataclass
class _Worker:
    device: str
    process: Any
    conn: Connection
    ready: bool = False
    task_id: str | None = None
    task_started: float = 0.0
    stop_requested_at: float | None = None
    progress_written: dict[str, float] = field(default_factory=dict)


class LocalRunner(Runner):
    def __init__(self, settings: Settings, store: TaskStore, storage: Storage, metrics: Any = None) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.storage = storage
        self.metrics = metrics
        self._ctx = multiprocessing.get_context("spawn")
        self._queue: collections.deque[str] = collections.deque()
        self._workers: list[_Worker] = []
        self._events: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._spawn_failures: dict[str, int] = {}  # device -> deaths before ready, in a row

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        tmp = self.settings.data_dir / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # half-written files of a run that crashed
        tmp.mkdir(parents=True, exist_ok=True)
        for device in self.settings.devices:
            self._workers.append(self._spawn(device))
        self._tasks = [
            asyncio.create_task(self._consume(), name="runner-events"),
            asyncio.create_task(self._watchdog(), name="runner-watchdog"),
        ]
        await self._recover()

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for w in self._workers:
            try:
                w.conn.send(Shutdown())
            except OSError:
                pass
        await asyncio.to_thread(self._join_all, 5.0)

    def _join_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(1.0)

    def _spawn(self, device: str) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main, args=(child, device, self.settings), name=f"opendance-worker-{device}", daemon=True
        )
        process.start()
        child.close()
        worker = _Worker(device=device, process=process, conn=parent)
        threading.Thread(target=self._read, args=(worker,), name=f"read-{device}", daemon=True).start()
        log.info("worker for %s started (pid %s)", device, process.pid)
        return worker

    def _read(self, worker: _Worker) -> None:
        """Forward a worker's messages into the event loop; ``None`` means it died."""
        while True:
            try:
                msg = worker.conn.recv()
            except (EOFError, OSError):
                msg = None
            try:
                self._loop.call_soon_threadsafe(self._events.put_nowait, (worker, msg))
            except RuntimeError:  # the loop is closed: the server is shutting down
                return
            if msg is None:
                return

    async def _recover(self) -> None:
        for task in await asyncio.to_thread(self.store.unfinished):
            log.info("recovering %s (%s, %d runs so far)", task.id, task.raw_status.value, task.attempts)
            self._queue.append(task.id)
        self._pump()

    # -- the interface -------------------------------------------------------------------

    async def submit(self, task: Task) -> None:
        self._queue.append(task.id)
        self._pump()

    async def cancel(self, task_id: str) -> None:
        try:
            self._queue.remove(task_id)
        except ValueError:
            pass
        for w in self._workers:
            if w.task_id == task_id:
                self._stop_job(w)

    def health(self) -> dict[str, object]:
        alive = [w for w in self._workers if w.process.is_alive()]
        return {
            "ok": bool(alive),
            "runner": "local",
            "workers": len(self._workers),
            "workers_alive": len(alive),
            "queued": len(self._queue),
            "running": sum(1 for w in self._workers if w.task_id),
        }

    def queue_depth(self) -> int:
        return len(self._queue)

    # -- dispatch ------------------------------------------------------------------------

    def _pump(self) -> None:
        if not self._stopping:
            self._events.put_nowait((None, "pump"))

    async def _dispatch(self) -> None:
        for w in self._workers:
            while w.ready and w.task_id is None and self._queue:
                task_id = self._queue.popleft()
                task = await asyncio.to_thread(self._start_task, task_id)
                if task is None:
                    continue
                w.task_id, w.task_started, w.stop_requested_at = task_id, time.monotonic(), None
                try:
                    w.conn.send(RunJob(task_id, task.job))
                except OSError:
                    pass  # the worker is dying; its death event puts the task back
                if task.attempts == 1:
                    await self._changed(task)

    def _start_task(self, task_id: str) -> Task | None:
        """Move a task to RUNNING (counting the run), or fail it when it ran too often."""
        task = self.store.get(task_id)
        if task is None or task.raw_status.is_terminal():
            return None
        if task.attempts >= self.settings.max_attempts:
            failed = self.store.fail(
                task_id,
                RawStatus.FAILED,
                "interrupted",
                f"the task was interrupted {task.attempts} times (worker crash or server restart) and is not run again",
            )
            self._notify_soon(failed)
            return None
        try:
            return self.store.transition(task_id, RawStatus.RUNNING)
        except (IllegalTransition, KeyError):
            return None

    def _notify_soon(self, task: Task) -> None:
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._changed(task)))

    # -- events --------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            worker, msg = await self._events.get()
            try:
                await self._handle(worker, msg)
            except Exception:  # noqa: BLE001 - the dispatcher must outlive any one bad event
                log.exception("runner event %r failed", msg)

    async def _handle(self, w: _Worker | None, msg: Any) -> None:
        if msg == "pump":
            await self._dispatch()
        elif msg is None:
            await self._worker_died(w)
        elif isinstance(msg, Ready):
            w.ready = True
            await self._dispatch()
        elif isinstance(msg, Progress):
            now = time.monotonic()
            if now - w.progress_written.get(msg.task_id, 0.0) >= PROGRESS_WRITE_INTERVAL:
                w.progress_written[msg.task_id] = now
                await asyncio.to_thread(self.store.set_progress, msg.task_id, msg.progress)
        elif isinstance(msg, ModelLoaded):
            if self.metrics is not None:
                self.metrics.model_loaded(msg.engine, msg.seconds)
        elif isinstance(msg, Done):
            self._release(w, msg.task_id)
            await self._finish(msg)
            await self._dispatch()
        elif isinstance(msg, Failed):
            self._release(w, msg.task_id)
            if not msg.cancelled:
                await self._fail(msg.task_id, msg.code, msg.message)
            await self._dispatch()

    def _release(self, w: _Worker, task_id: str) -> None:
        if w.task_id == task_id:
            w.task_id = None
        w.progress_written.pop(task_id, None)

    async def _finish(self, msg: Done) -> None:
        try:
            task = await asyncio.to_thread(
                self.store.transition,
                msg.task_id,
                RawStatus.COMPLETED,
                video_key=msg.video_key,
                last_frame_key=msg.last_frame_key,
                engine_seconds=msg.engine_seconds,
            )
        except (IllegalTransition, KeyError):
            # Cancelled, expired or deleted while the last frames were written: drop the files.
            await asyncio.to_thread(self._drop_outputs, msg)
            return
        if self.metrics is not None:
            self.metrics.task_finished(task, msg.engine_seconds)
        await self._changed(task)

    def _drop_outputs(self, msg: Done) -> None:
        for key in (msg.video_key, msg.last_frame_key):
            if key:
                self.storage.delete_prefix(key)

    async def _fail(self, task_id: str, code: str, message: str) -> None:
        try:
            task = await asyncio.to_thread(self.store.fail, task_id, RawStatus.FAILED, code, message)
        except (IllegalTransition, KeyError):
            return
        if self.metrics is not None:
            self.metrics.task_finished(task, None)
        await self._changed(task)

    async def _worker_died(self, w: _Worker) -> None:
        if self._stopping or w not in self._workers:
            return
        await asyncio.to_thread(w.process.join, 5.0)
        code = w.process.exitcode
        log.error("worker for %s died (exit code %s) while running %s", w.device, code, w.task_id)
        if w.ready:
            self._spawn_failures[w.device] = 0
            self._respawn(w)
        else:
            # It died before it was ready: a broken start-up (a bad driver, a full disk) would
            # otherwise restart it in a tight loop. Back off: 1, 2, 4 ... 30 s.
            n = self._spawn_failures[w.device] = self._spawn_failures.get(w.device, 0) + 1
            self._loop.call_later(min(30.0, 2.0 ** (n - 1)), self._respawn, w)
        if w.task_id is not None:
            task = await asyncio.to_thread(self.store.get, w.task_id)
            if task is not None and not task.raw_status.is_terminal():
                # Run it again (the dispatcher fails it once it has used up its runs).
                self._queue.appendleft(w.task_id)
        self._pump()

    def _respawn(self, w: _Worker) -> None:
        if self._stopping or w not in self._workers:
            return
        self._workers[self._workers.index(w)] = self._spawn(w.device)
        self._pump()

    # -- deadlines -----------------------------------------------------------------------

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for w in list(self._workers):
                if w.task_id is None:
                    continue
                if w.stop_requested_at is not None and now - w.stop_requested_at > CANCEL_GRACE:
                    log.error("worker for %s did not stop %s; killing it", w.device, w.task_id)
                    w.process.kill()
                elif w.stop_requested_at is None and now - w.task_started > self.settings.task_timeout:
                    await self._expire(w)

    async def _expire(self, w: _Worker) -> None:
        task_id = w.task_id
        try:
            task = await asyncio.to_thread(
                self.store.fail,
                task_id,
                RawStatus.EXPIRED,
                "expired",
                f"the task ran longer than {self.settings.task_timeout:g} s and was stopped",
            )
        except (IllegalTransition, KeyError):
            task = None
        self._stop_job(w)
        if task is not None:
            if self.metrics is not None:
                self.metrics.task_finished(task, None)
            await self._changed(task)

    def _stop_job(self, w: _Worker) -> None:
        w.stop_requested_at = time.monotonic()
        try:
            w.conn.send(CancelJob(w.task_id))
        except OSError:
            pass
