"""The in-process runner: a dispatcher in the API's event loop onto this machine's executors.

Each executor (``upstream``, ``device``, ``cpu``; see ``executors/base.py``) has its own FIFO of
task ids and one dispatcher that gives the task at its head the next free slot of the kind it
needs (strict order: a task waiting for a whole device group is not overtaken). Relays run as
asyncio tasks in this process; model engines in spawned worker processes, so a crash or OOM in
torch cannot take the API down.

Everything durable is in the store, so after a crash or restart ``start()`` rebuilds the
queues from it: queued tasks are dispatched again, running ones are run again (up to
``max_attempts`` runs in all, then failed with a clear error; a relay follows its upstream task
from its checkpoint). A run whose process dies is run again the same way; a task that outlives
``task_timeout`` is EXPIRED and its engine told to stop (and killed if it will not).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import shutil

from ..config import ModelConfig, Settings
from ..storage import Storage
from ..store import Task, TaskStore
from .base import Runner
from .executors import Executor, Executors, Kind, Placement, Slot, placement_of
from .lifecycle import Lifecycle, StoreRetry
from .messages import UpstreamRequest
from .supervise import Outcome, Supervisor

log = logging.getLogger("opendance.runner")

PROGRESS_WRITE_INTERVAL = 0.25  # seconds between progress writes per task


class LocalRunner(Runner):
    def __init__(
        self, settings: Settings, store: TaskStore, storage: Storage, models: dict[str, ModelConfig] | None = None
    ) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.storage = storage
        self.models = models if models is not None else settings.models()
        self.executors = Executors(settings, storage, self.models, observe=lambda *a: self._observe(UpstreamRequest(*a)))
        self.lifecycle = Lifecycle(
            store,
            storage,
            max_attempts=settings.max_attempts,
            task_timeout=settings.task_timeout,
            progress_interval=PROGRESS_WRITE_INTERVAL,
            notify=self._changed,
        )
        self._queues: dict[Kind, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._placement: dict[str, Placement] = {}
        self._wakeups: dict[Kind, asyncio.Event] = collections.defaultdict(asyncio.Event)
        self._dispatchers: dict[Kind, asyncio.Task] = {}
        self._active: dict[str, Supervisor | None] = {}  # started runs (None until the engine has the job)
        self._stop_asked: set[str] = set()  # cancelled while starting
        self._runs: set[asyncio.Task] = set()
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        tmp = self.settings.data_dir / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # half-written files of a run that crashed
        tmp.mkdir(parents=True, exist_ok=True)
        self.executors.check()
        await self.executors.start()
        for task in await asyncio.to_thread(self.store.unfinished):
            log.info("recovering %s (%s, %d runs so far)", task.id, task.raw_status.value, task.attempts)
            self._enqueue(task)

    async def stop(self) -> None:
        self._stopping = True
        for t in self._dispatchers.values():
            t.cancel()
        await self.executors.stop()  # running tasks stay RUNNING: the next start runs them again

    # -- the interface -------------------------------------------------------------------

    async def submit(self, task: Task) -> None:
        self._enqueue(task)

    async def cancel(self, task_id: str) -> None:
        for queue in self._queues.values():
            try:
                queue.remove(task_id)
                self._placement.pop(task_id, None)
            except ValueError:
                pass
        if task_id in self._active:
            supervisor = self._active[task_id]
            if supervisor is None:
                self._stop_asked.add(task_id)
            else:
                supervisor.stop()

    def health(self) -> dict[str, object]:
        executors = self.executors.health()
        alive = self.executors.processes_alive()
        return {
            "ok": all(bool(h.get("ok", True)) for h in executors.values()),
            "runner": "local",
            "workers": sum(len(g["pids"]) for h in executors.values() for g in h.get("groups", [])),
            "workers_alive": alive,
            "queued": sum(len(q) for q in self._queues.values()),
            "running": len(self._active),
            "executors": executors,
        }

    def queue_depth(self) -> int:
        return sum(len(q) for q in self._queues.values())

    # -- dispatch ------------------------------------------------------------------------

    def _enqueue(self, task: Task, front: bool = False) -> None:
        if task.id in self._placement:  # queued already (``_placement`` holds exactly the queued tasks)
            return
        placement = self._placement[task.id] = placement_of(self.models, task.model, task.job)
        queue = self._queues[placement.kind]
        queue.appendleft(task.id) if front else queue.append(task.id)
        if self._stopping:
            return
        if placement.kind not in self._dispatchers:
            self._dispatchers[placement.kind] = asyncio.create_task(
                self._dispatch(placement.kind), name=f"dispatch-{placement.kind}"
            )
        self._wakeups[placement.kind].set()

    async def _dispatch(self, kind: Kind) -> None:
        """Runs for the life of the runner: an error is logged and dispatching goes on."""
        queue, wakeup = self._queues[kind], self._wakeups[kind]
        executor: Executor | None = None
        while True:
            try:
                if executor is None:
                    executor = await self.executors.get(kind)
                while not queue:
                    wakeup.clear()
                    await wakeup.wait()
                await self._dispatch_head(executor, queue)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatching a %s task failed", kind)
                await asyncio.sleep(1.0)

    async def _dispatch_head(self, executor: Executor, queue: collections.deque[str]) -> None:
        task_id = queue[0]
        placement = self._placement[task_id]
        if why := executor.check(placement):
            queue.popleft()
            del self._placement[task_id]
            await self.lifecycle.fail(task_id, "unplaceable", f"this server cannot run the task: {why}")
            return
        slot = await executor.acquire(placement)
        if not queue or self._placement.get(queue[0]) != placement:  # the head left (cancelled) while we waited
            executor.release(slot)
            return
        task_id = queue.popleft()
        del self._placement[task_id]
        self._active[task_id] = None
        run = asyncio.create_task(self._run(task_id, executor, slot), name=f"run-{task_id}")
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)

    async def _run(self, task_id: str, executor: Executor, slot: Slot) -> None:
        execution = None
        try:
            started = await self.lifecycle.start(task_id)
            if started is None or started.gave_up:
                return
            execution = await slot.run(task_id, started.task.job)
            supervisor = Supervisor(self.lifecycle, execution, progress=started.task.progress, observe=self._observe)
            self._active[task_id] = supervisor
            if task_id in self._stop_asked:
                supervisor.stop()
            result = await supervisor.run()
            if result.outcome is Outcome.DIED and not self._stopping:
                await self._again(task_id)
        except Exception:
            # Never a task left RUNNING with nobody running it: stop what may still run it, and
            # run it again (its start counts the run, so this ends after max_attempts).
            log.exception("task %s: its run failed; running it again", task_id)
            if execution is not None:
                execution.kill()
            if not self._stopping:
                self._again_later(task_id, delay=1.0)
        finally:
            if execution is not None:
                execution.close()
            executor.release(slot)
            self._active.pop(task_id, None)
            self._stop_asked.discard(task_id)

    async def _again(self, task_id: str) -> None:
        """Its process died: run it again, first in line (the next start fails it once it
        has used up its runs)."""
        task = await StoreRetry()(self.store.get, task_id)
        if task is not None and not task.raw_status.is_terminal():
            log.error("task %s: its run died; running it again", task_id)
            self._enqueue(task, front=True)

    def _again_later(self, task_id: str, delay: float) -> None:
        async def after() -> None:
            await asyncio.sleep(delay)
            await self._again(task_id)

        run = asyncio.create_task(after(), name=f"again-{task_id}")
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
