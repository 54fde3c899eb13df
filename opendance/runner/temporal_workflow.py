"""The Temporal workflow of one task (workflow id = task id), and the names both sides share.

::

    API server (control queue)              worker of the model (queue <prefix><model>)
    ---------------------------             -------------------------------------------
    TaskWorkflow.run
      generate(task_id) ------------------> QUEUED -> RUNNING, engine, encode, store,
        (heartbeats: progress, checkpoint)   RUNNING -> COMPLETED | FAILED | EXPIRED
      <- "started" signal (first run) ----- (the API sends the in_progress callback)
      notify(task_id, "finished")           (the API sends the final callback, metrics)
      on "skipped"/"stopped": notify(task_id, "ended")  (an earlier attempt made the end, but its
                                            result never reached Temporal: an outage longer than
                                            the heartbeat timeout; what it left pending goes now)
      on retries used up / deadline: finish(FAILED "interrupted" | EXPIRED)
      on cancellation: finish(CANCELLED), after the engine has stopped

The store is the source of truth for clients: every activity moves the task with the store's
guarded transitions, so an activity that runs again (a retry, a second workflow for the same
task) can never move a task backwards, and a GET never asks Temporal.

This module runs inside Temporal's workflow sandbox: it imports nothing but temporalio and the
standard library, and names activities by string.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError, RetryState, TimeoutError, TimeoutType

WORKFLOW = "opendance.task"
GENERATE = "opendance.generate"
FINISH = "opendance.finish"
NOTIFY = "opendance.notify"
STARTED_SIGNAL = "started"
# NOTIFY's events: the first run began; a worker ended the task; the task was found ended.
STARTED_EVENT, FINISHED_EVENT, ENDED_EVENT = "started", "finished", "ended"
NOTIFY_ENDED_PATCH = "notify-ended"  # workflows from before it replay without that notify

# Outcomes of GENERATE (its return value).
COMPLETED, FAILED, EXPIRED = "completed", "failed", "expired"  # the worker moved the task
STOPPED, SKIPPED = "stopped", "skipped"  # nothing for the workflow to report


@dataclass
class TaskInput:
    """Everything the workflow needs, fixed at submit time (so a replay is deterministic)."""

    task_id: str
    model_queue: str
    control_queue: str
    heartbeat_timeout: float
    deadline: float  # seconds from the start of the workflow, queueing and retries included
    retry_interval: float
    retry_max_interval: float
    max_attempts: int


@dataclass
class Finish:
    task_id: str
    raw_status: str  # FAILED | EXPIRED | CANCELLED
    code: str
    message: str


def _bookkeeping(queue: str) -> dict:
    """Options of the small store/callback activities run by the API servers."""
    return {
        "task_queue": queue,
        "start_to_close_timeout": timedelta(seconds=30),
        "schedule_to_close_timeout": timedelta(hours=1),
        "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)),
    }


@workflow.defn(name=WORKFLOW)
class TaskWorkflow:
    @workflow.init
    def __init__(self, req: TaskInput) -> None:
        self.req = req
        self.notifying = 0

    @workflow.signal(name=STARTED_SIGNAL)
    async def started(self) -> None:
        """The first run began on a worker: the API sends the in_progress callback."""
        self.notifying += 1
        try:
            await workflow.execute_activity(
                NOTIFY, args=[self.req.task_id, STARTED_EVENT], **_bookkeeping(self.req.control_queue)
            )
        finally:
            self.notifying -= 1

    @workflow.run
    async def run(self, req: TaskInput) -> str:
        try:
            outcome = await workflow.execute_activity(
                GENERATE,
                req.task_id,
                task_queue=req.model_queue,
                schedule_to_close_timeout=timedelta(seconds=req.deadline),
                heartbeat_timeout=timedelta(seconds=req.heartbeat_timeout),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=req.retry_interval),
                    backoff_coefficient=2.0,
                    maximum_interval=timedelta(seconds=req.retry_max_interval),
                    maximum_attempts=req.max_attempts,
                ),
                # A cancelled task's workflow ends only once its engine has stopped.
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                return await self._cancelled()
            outcome = await workflow.execute_activity(FINISH, self._finish_for(err), **_bookkeeping(req.control_queue))
        except asyncio.CancelledError:
            return await self._cancelled()
        event = None
        if outcome in (COMPLETED, FAILED, EXPIRED):
            event = FINISHED_EVENT
        elif outcome in (SKIPPED, STOPPED) and workflow.patched(NOTIFY_ENDED_PATCH):
            # The task ended before this attempt could run it: an earlier attempt finished it and
            # its result was lost (Temporal away longer than the heartbeat timeout), or it lost a
            # race with one. Nobody has reported that end yet.
            event = ENDED_EVENT
        if event is not None:
            # After the in_progress callback, never before it: callbacks of a task stay in order.
            await workflow.wait_condition(lambda: self.notifying == 0)
            await workflow.execute_activity(NOTIFY, args=[req.task_id, event], **_bookkeeping(req.control_queue))
        await workflow.wait_condition(workflow.all_handlers_finished)
        return outcome

    async def _cancelled(self) -> str:
        # The service already marked the task CANCELLED (and sent its callback); this only
        # makes sure of it and drops the checkpoints. Then the workflow ends as cancelled.
        finish = Finish(self.req.task_id, "CANCELLED", "cancelled", "the task was cancelled by the client")
        await workflow.execute_activity(FINISH, finish, **_bookkeeping(self.req.control_queue))
        raise asyncio.CancelledError()

    def _finish_for(self, err: ActivityError) -> Finish:
        cause = err.cause
        # Out of time overall: while retrying (retry state TIMEOUT), or never picked up at all
        # (no worker for the model: the schedule-to-start timeout, which equals the deadline).
        out_of_time = err.retry_state is RetryState.TIMEOUT or (
            isinstance(cause, TimeoutError) and cause.type in (TimeoutType.SCHEDULE_TO_START, TimeoutType.SCHEDULE_TO_CLOSE)
        )
        if out_of_time:
            return Finish(
                self.req.task_id,
                "EXPIRED",
                "expired",
                f"the task did not finish within {self.req.deadline:g} s of its submission and was stopped",
            )
        why = (
            "a worker stopped heartbeating" if isinstance(cause, TimeoutError) else (getattr(cause, "message", "") or str(cause))
        )
        return Finish(
            self.req.task_id,
            "FAILED",
            "interrupted",
            f"the task was interrupted {self.req.max_attempts} times and is not run again (last: {why})",
        )


def model_queue(prefix: str, model: str) -> str:
    """The task queue of one model's generate activities (only workers holding it poll it)."""
    return f"{prefix}{model}"


def worker_heartbeat_interval(heartbeat_timeout: float) -> float:
    """Seconds between a worker process's heartbeats to Temporal (its own, not an activity's):
    a quarter of the activity heartbeat timeout, within the 1-60 s Temporal allows."""
    return min(60.0, max(1.0, heartbeat_timeout / 4))


async def connect(address: str, namespace: str, timeout: float = 60.0, runtime=None):
    """A Temporal client, retrying while the server is starting or briefly away. ``runtime``:
    the SDK runtime (a worker's sets its worker heartbeat interval)."""
    from temporalio.client import Client
    from temporalio.service import RPCError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await Client.connect(address, namespace=namespace, runtime=runtime)
        except (RPCError, RuntimeError, OSError) as exc:
            if loop.time() > deadline:
                raise RuntimeError(f"cannot reach Temporal at {address}: {exc}") from exc
            await asyncio.sleep(1.0)
