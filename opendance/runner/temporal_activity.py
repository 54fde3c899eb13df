"""The generate activity of ``opendance worker`` (see ``temporal_worker`` for the whole story):
one task on one executor slot, from QUEUED to a final state, heartbeating on the way."""

from __future__ import annotations

import asyncio
import logging

from temporalio import activity
from temporalio.exceptions import ApplicationError

from ..config import Settings
from ..storage import Storage
from ..store import TaskStore
from .executors import Executors, placement_of
from .lifecycle import Lifecycle, StoreRetry
from .supervise import Outcome, Supervisor
from .temporal_workflow import COMPLETED, EXPIRED, FAILED, GENERATE, SKIPPED, STARTED_SIGNAL, STOPPED

log = logging.getLogger("opendance.worker")

TICK = 0.5  # seconds between heartbeats and checks while the engine is quiet
STORE_CHECK_INTERVAL = 1.0  # how often a run looks in the store for a cancel or a delete
PROGRESS_WRITE_INTERVAL = 0.5  # seconds between progress writes per task

# On a worker, the preview engine keeps its finished frames as checkpoint chunks of this many
# (unless the model's spec sets ``checkpoint_frames``): a retry on another worker goes on after
# the last chunk instead of frame 0.
PREVIEW_CHECKPOINT_FRAMES = 24

OUTCOMES = {Outcome.COMPLETED: COMPLETED, Outcome.FAILED: FAILED, Outcome.EXPIRED: EXPIRED, Outcome.STOPPED: STOPPED}


class GenerateActivity:
    def __init__(
        self, settings: Settings, store: TaskStore, storage: Storage, executors: Executors, *, identity: str = ""
    ) -> None:
        self.settings = settings
        self.identity = identity  # this worker process (host:pid), for the logs
        self.store = store
        self.executors = executors
        self.lifecycle = Lifecycle(
            store,
            storage,
            max_attempts=settings.max_attempts,
            task_timeout=settings.task_timeout,
            progress_interval=PROGRESS_WRITE_INTERVAL,
            # Through a brief database outage, heartbeating; past 20 tries the activity fails
            # and Temporal runs it again.
            retry=StoreRetry(attempts=20, on_wait=_heartbeat),
        )
        self._background: set[asyncio.Task] = set()

    @activity.defn(name=GENERATE)
    async def generate(self, task_id: str) -> str:
        task = await asyncio.to_thread(self.store.get, task_id)
        if task is None or task.raw_status.is_terminal():
            log.info("task %s: already %s, nothing to run", task_id, task.raw_status.value if task else "deleted")
            return SKIPPED
        placement = placement_of(self.executors.models, task.model, task.job)
        executor = await self.executors.get(placement.kind)
        # A worker serving several models (or more tasks than free devices) may take more
        # tasks than slots; the extra ones wait here, heartbeating, so Temporal knows they are
        # in good hands.
        slot = await executor.acquire(placement, tick=TICK, waiting=activity.heartbeat)
        try:
            return await self._run(task_id, slot)
        finally:
            executor.release(slot)

    async def _run(self, task_id: str, slot) -> str:
        info = activity.info()
        started = await self.lifecycle.start(task_id)
        if started is None:
            return SKIPPED
        if started.gave_up:
            return FAILED
        task = started.task
        if started.first_run and info.workflow_id is not None:
            self._signal_started(info.workflow_id)
        log.info(
            "task %s (%s): taken by worker %s (%s), attempt %d, run %d",
            task_id,
            task.model,
            self.identity,
            slot,
            info.attempt,
            task.attempts,
        )
        if info.attempt > 1 and info.heartbeat_details:
            progress, checkpoint = (list(info.heartbeat_details) + [0, 0])[:2]
            log.info(
                "task %s: the last attempt's last heartbeat: progress %s, checkpoint after step %s", task_id, progress, checkpoint
            )
        execution = await slot.run(task_id, with_frame_checkpoints(task.job))
        supervisor = Supervisor(
            self.lifecycle, execution, progress=task.progress, tick=TICK, retry_codes=("storage_error",), on_tick=self._ticker()
        )
        try:
            result = await supervisor.run()
        except asyncio.CancelledError:
            result = await supervisor.stop_and_wait(hand_over=activity.is_worker_shutdown())
            if activity.is_worker_shutdown():
                if result.outcome is Outcome.COMPLETED:
                    return COMPLETED
                raise ApplicationError("the worker is shutting down; the task resumes elsewhere", type="WorkerShutdown") from None
            raise
        finally:
            execution.close()
        if result.outcome is Outcome.DIED:
            raise ApplicationError(f"the {slot} running the task died while making the video", type="WorkerDied")
        if result.outcome is Outcome.RETRY:  # storage briefly away: retry (from the checkpoint)
            raise ApplicationError(result.failed.message if result.failed else "storage is away", type="StorageError")
        return OUTCOMES[result.outcome]

    def _ticker(self):
        """Heartbeat; stop the engine when the store says the task is over (cancelled, deleted)."""
        last_check = 0.0

        async def tick(supervisor: Supervisor) -> None:
            nonlocal last_check
            activity.heartbeat(supervisor.progress, supervisor.checkpoint)
            now = asyncio.get_running_loop().time()
            if supervisor.stop_sent_at is not None or now - last_check < STORE_CHECK_INTERVAL:
                return
            last_check = now
            try:
                task = await asyncio.to_thread(self.store.get, supervisor.task_id)
            except Exception as exc:
                log.warning("task %s: store check failed: %s", supervisor.task_id, exc)
            else:
                if task is None or task.raw_status.is_terminal():
                    supervisor.stop()

        return tick

    def _signal_started(self, workflow_id: str) -> None:
        """Tell the workflow the first run began (the API then sends the in_progress callback)."""
        handle = activity.client().get_workflow_handle(workflow_id)

        async def send() -> None:
            try:
                await handle.signal(STARTED_SIGNAL)
            except Exception as exc:
                log.warning("could not signal %s: %s", workflow_id, exc)

        t = asyncio.create_task(send())
        self._background.add(t)
        t.add_done_callback(self._background.discard)


def with_frame_checkpoints(job: dict) -> dict:
    """The job, its preview engine keeping frame chunks (``PREVIEW_CHECKPOINT_FRAMES``) unless
    its model says how many (0: none)."""
    spec = job.get("engine") or {}
    if spec.get("engine") != "preview" or "checkpoint_frames" in spec:
        return job
    return {**job, "engine": {**spec, "checkpoint_frames": PREVIEW_CHECKPOINT_FRAMES}}


def _heartbeat() -> None:
    if activity.in_activity():
        activity.heartbeat()
