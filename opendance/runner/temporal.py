"""The scale-out runner, API side: every task is a Temporal workflow (workflow id = task id).

The API server keeps no state of its own. ``submit`` starts the task's workflow, ``cancel``
cancels it, and the server polls the control queue, where it runs the workflows and their two
bookkeeping activities (``finish``: a guarded store transition when retries are used up or the
deadline passed; ``notify``: the task's callbacks and metrics). Any API server can run any of
these, so a second server serves the same tasks and a restart of either changes nothing.

A task stored but without a workflow (Temporal unreachable at submit, or the server died
between the store write and the start) gets one from ``reconcile``: at start, every
``temporal_reconcile_interval`` seconds, and every few seconds for starts that failed here.
Starting is idempotent: a running workflow with the task's id is kept, a closed one is
replaced only while the store says the task is unfinished.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import timedelta
from collections.abc import Iterable
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.enums.v1 import WorkerStatus
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, ListWorkersRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from ..config import Settings
from ..domain import IllegalTransition, RawStatus
from ..storage import Storage
from ..store import Task, TaskStore
from .base import Runner
from .checkpoints import checkpoint_prefix
from .temporal_workflow import (
    ENDED_EVENT,
    FINISH,
    NOTIFY,
    STARTED_EVENT,
    WORKFLOW,
    Finish,
    TaskInput,
    TaskWorkflow,
    connect,
    model_queue,
    worker_heartbeat_interval,
)

log = logging.getLogger("opendance.runner.temporal")

RETRY_PENDING_EVERY = 2.0  # seconds between retries of starts/cancels that failed here
WATCH_QUEUES_EVERY = 10.0  # seconds between looks at who serves each model (at most; see _watch_every)
PROBE_EVERY = 2.0  # seconds between checks that Temporal answers (readiness)
PROBE_TIMEOUT = 2.0  # a frozen server is unreachable after this long
# Ends only a worker makes: a notify of an end found by a later attempt reports these; an API
# server that cancelled or expired a task reported it itself.
WORKER_ENDS = (RawStatus.COMPLETED, RawStatus.FAILED)


class TemporalRunner(Runner):
    def __init__(self, settings: Settings, store: TaskStore, storage: Storage, models: Iterable[str] = ()) -> None:
        super().__init__()
        self.settings = settings
        self.models = list(models)
        self._queues: dict[str, dict[str, object]] = {}  # model -> what its queue's pollers look like
        self._worker_ids: set[str] = set()  # worker processes polling any model's queue
        self.store = store
        self.storage = storage
        self.client: Client | None = None
        self._worker: Any = None
        self._tasks: list[asyncio.Task] = []
        self._pending_starts: dict[str, str] = {}  # task id -> model
        self._pending_cancels: set[str] = set()
        self._inflight: set[asyncio.Task] = set()
        self._temporal_error: str | None = None  # the last start or cancel that failed
        self._unreachable: str | None = "not checked yet"  # what the last probe of Temporal said

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        from temporalio.worker import Worker
        from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

        s = self.settings
        self.client = await connect(s.temporal_address, s.temporal_namespace)
        # The workflow module is deterministic and keeps no state; passing the package through
        # spares the sandbox from re-importing opendance (and httpx, through its __init__).
        sandbox = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("opendance"))
        self._worker = Worker(
            self.client,
            task_queue=s.temporal_control_queue,
            workflows=[TaskWorkflow],
            activities=[self.finish, self.notify],
            workflow_runner=sandbox,
            # Hundreds of relay tasks at once mean thousands of small workflow tasks here; with the
            # SDK's default 5 pollers they queued up to 40 s for this worker (measured: 200 relays
            # of 10 s took 112-135 s, with 20 pollers 65-74 s, Temporal's own floor 35-63 s).
            max_concurrent_workflow_task_polls=20,
            max_concurrent_activity_task_polls=20,
        )
        self._tasks = [
            asyncio.create_task(self._worker.run(), name="temporal-control-worker"),
            asyncio.create_task(self._reconcile_forever(), name="temporal-reconcile"),
            asyncio.create_task(self._watch_queues_forever(), name="temporal-queues"),
            asyncio.create_task(self._probe_forever(), name="temporal-probe"),
        ]

    async def stop(self) -> None:
        for t in self._tasks[1:]:
            t.cancel()
        if self._inflight:  # starts and cancels under way; what does not finish, reconcile does
            await asyncio.wait(list(self._inflight), timeout=5.0)
        if self._worker is not None:
            await self._worker.shutdown()

    # -- the interface -------------------------------------------------------------------

    async def submit(self, task: Task) -> None:
        # In the background: the task is stored, so the client has its answer now, even while
        # Temporal is away (the SDK retries an unreachable server for ~5 s before giving up).
        self._background(self._start_or_remember(task.id, task.model))

    async def cancel(self, task_id: str) -> None:
        # The store already says CANCELLED, and workers look there every second; the workflow
        # cancel makes the workflow end and reaches the engine through Temporal too.
        self._pending_starts.pop(task_id, None)
        self._background(self._cancel_or_remember(task_id))

    def _background(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._inflight.add(t)
        t.add_done_callback(self._inflight.discard)

    async def _start_or_remember(self, task_id: str, model: str) -> None:
        if not await self._start_workflow(task_id, model):
            self._pending_starts[task_id] = model  # retried every few seconds

    async def _cancel_or_remember(self, task_id: str) -> None:
        if not await self._cancel_workflow(task_id):
            self._pending_cancels.add(task_id)

    def health(self) -> dict[str, object]:
        worker_alive = bool(self._tasks) and not self._tasks[0].done()
        return {
            # Ready when this server can hand tasks on: its control worker runs and Temporal
            # answered its last probe (reads and creates go on meanwhile; starts are retried).
            "ok": worker_alive and self._unreachable is None,
            "runner": "temporal",
            "address": self.settings.temporal_address,
            "temporal": "ok" if self._unreachable is None else f"unreachable: {self._unreachable}",
            "pending_starts": len(self._pending_starts),
            "queues": self._queues,
            "workers_alive": len(self._worker_ids),
        }

    # -- is Temporal there ------------------------------------------------------------------

    async def _probe_forever(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(PROBE_EVERY)

    async def probe(self) -> bool:
        """One health check of Temporal's frontend, within ``PROBE_TIMEOUT`` (a frozen or stopped
        server fails it); readiness follows the last answer."""
        assert self.client is not None
        try:
            await self.client.service_client.check_health(timeout=timedelta(seconds=PROBE_TIMEOUT))
        except Exception as exc:
            reason = getattr(exc, "message", "") or str(exc) or type(exc).__name__
            if self._unreachable is None:
                log.warning("Temporal at %s does not answer (%s): not ready", self.settings.temporal_address, reason)
            self._unreachable = reason
            return False
        if self._unreachable is not None and self._unreachable != "not checked yet":
            log.info("Temporal at %s answers again: ready", self.settings.temporal_address)
        self._unreachable = None
        return True

    # -- who serves each model -------------------------------------------------------------

    def _watch_every(self) -> float:
        """Often enough that a dead worker leaves the list within 2 heartbeat timeouts."""
        return min(WATCH_QUEUES_EVERY, max(1.0, self.settings.temporal_heartbeat_timeout / 4))

    async def _watch_queues_forever(self) -> None:
        while True:
            try:
                await self.watch_queues()
            except Exception as exc:
                log.debug("looking for the workers failed: %s", exc)
            await asyncio.sleep(self._watch_every())

    async def watch_queues(self) -> None:
        """Which worker processes serve each model: those whose worker heartbeat (every
        ``worker_heartbeat_interval``) is recent. Temporal servers without worker heartbeats
        (before 1.29) answer from the queues' pollers instead."""
        assert self.client is not None
        try:
            self._queues, self._worker_ids = await self._by_heartbeats()
        except RPCError as exc:
            if exc.status not in (RPCStatusCode.UNIMPLEMENTED, RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.INVALID_ARGUMENT):
                raise
            self._queues, self._worker_ids = await self._by_pollers()

    async def _by_heartbeats(self) -> tuple[dict, set[str]]:
        """A worker counts while its last heartbeat is younger than the heartbeat timeout (at
        least 3 heartbeats): a killed one leaves within about that plus one look."""
        assert self.client is not None
        s, now = self.settings, time.time()
        window = max(s.temporal_heartbeat_timeout, 3 * worker_heartbeat_interval(s.temporal_heartbeat_timeout))
        queue_of = {model_queue(s.temporal_queue_prefix, m): m for m in self.models}
        seen: dict[str, dict[str, float]] = {m: {} for m in self.models}  # model -> worker id -> age
        token = b""
        while True:
            answer = await self.client.workflow_service.list_workers(
                ListWorkersRequest(namespace=s.temporal_namespace, page_size=1000, next_page_token=token)
            )
            for info in answer.workers_info:
                hb = info.worker_heartbeat
                model = queue_of.get(hb.task_queue)
                if model is None or hb.status in (WorkerStatus.WORKER_STATUS_SHUTTING_DOWN, WorkerStatus.WORKER_STATUS_SHUTDOWN):
                    continue
                age = max(0.0, now - hb.heartbeat_time.ToMilliseconds() / 1000)
                worker = hb.worker_identity.rsplit(":", 1)[0]  # "host:pid:model" -> one process
                if age <= window:
                    seen[model][worker] = min(age, seen[model].get(worker, age))
            token = answer.next_page_token
            if not token:
                break
        queues = {
            m: {
                "workers": len(ages),
                "worker_ids": sorted(ages),
                "last_heartbeat_seconds_ago": round(min(ages.values()), 1) if ages else None,
            }
            for m, ages in seen.items()
        }
        return queues, {w for ages in seen.values() for w in ages}

    async def _by_pollers(self) -> tuple[dict, set[str]]:
        """Who polled each model's queue lately. A worker polls while it has a free slot;
        Temporal lists a poller for 5 minutes after its last poll, so a worker that died is
        still listed for a while (``last_poll_seconds_ago`` tells)."""
        assert self.client is not None
        s, now, queues, everyone = self.settings, time.time(), {}, set()
        for model in self.models:
            answer = await self.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=s.temporal_namespace,
                    task_queue=TaskQueue(name=model_queue(s.temporal_queue_prefix, model)),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
                )
            )
            # Worker identities are "host:pid:model" (``opendance worker``): one process per host:pid.
            ids = sorted({p.identity.rsplit(":", 1)[0] for p in answer.pollers})
            everyone.update(ids)
            last = max((p.last_access_time.ToSeconds() for p in answer.pollers), default=None)
            queues[model] = {
                "workers": len(ids),
                "worker_ids": ids,
                "last_poll_seconds_ago": round(max(0.0, now - last), 1) if last is not None else None,
            }
        return queues, everyone

    # -- Temporal calls --------------------------------------------------------------------

    def _input(self, task_id: str, model: str) -> TaskInput:
        s = self.settings
        return TaskInput(
            task_id=task_id,
            model_queue=model_queue(s.temporal_queue_prefix, model),
            control_queue=s.temporal_control_queue,
            heartbeat_timeout=s.temporal_heartbeat_timeout,
            deadline=s.temporal_execution_deadline,
            retry_interval=s.temporal_retry_interval,
            retry_max_interval=s.temporal_retry_max_interval,
            max_attempts=s.max_attempts,
        )

    async def _start_workflow(self, task_id: str, model: str) -> bool:
        assert self.client is not None, "start() connects the client"
        try:
            await self.client.start_workflow(
                WORKFLOW,
                self._input(task_id, model),
                id=task_id,
                task_queue=self.settings.temporal_control_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
        except RPCError as exc:
            self._temporal_error = exc.message
            log.warning("task %s: workflow not started yet (%s); retrying", task_id, exc.message)
            return False
        self._temporal_error = None
        return True

    async def _cancel_workflow(self, task_id: str) -> bool:
        assert self.client is not None, "start() connects the client"
        handle: WorkflowHandle = self.client.get_workflow_handle(task_id)
        try:
            await handle.cancel()
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                return True  # no workflow, or it already ended: nothing runs
            self._temporal_error = exc.message
            log.warning("task %s: workflow not cancelled yet (%s); retrying", task_id, exc.message)
            return False
        return True

    async def _reconcile_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            try:
                if loop.time() >= next_sweep:
                    await self.reconcile()
                    next_sweep = loop.time() + self.settings.temporal_reconcile_interval
                await self._retry_pending()
            except Exception:
                log.exception("reconcile failed")
            await asyncio.sleep(RETRY_PENDING_EVERY)

    async def reconcile(self) -> int:
        """Make sure every unfinished task in the store has a workflow; returns how many
        could not be started now (they are retried)."""
        missing = 0
        for task in await asyncio.to_thread(self.store.unfinished):
            if not await self._start_workflow(task.id, task.model):
                self._pending_starts[task.id] = task.model
                missing += 1
        return missing

    async def _retry_pending(self) -> None:
        for task_id, model in list(self._pending_starts.items()):
            task = await asyncio.to_thread(self.store.get, task_id)
            if task is None or task.raw_status.is_terminal() or await self._start_workflow(task_id, model):
                self._pending_starts.pop(task_id, None)
        for task_id in list(self._pending_cancels):
            if await self._cancel_workflow(task_id):
                self._pending_cancels.discard(task_id)

    # -- bookkeeping activities (control queue) --------------------------------------------

    @activity.defn(name=FINISH)
    async def finish(self, f: Finish) -> str:
        """Move the task to a final state unless it is in one already; drop its checkpoints."""
        try:
            task = await asyncio.to_thread(self.store.fail, f.task_id, RawStatus(f.raw_status), f.code, f.message)
        except (IllegalTransition, KeyError):
            task = None
        await asyncio.to_thread(self.storage.delete_prefix, checkpoint_prefix(f.task_id))
        if task is None:
            return "unchanged"
        await self._changed(task)
        return f.raw_status.lower()

    @activity.defn(name=NOTIFY)
    async def notify(self, task_id: str, event: str) -> None:
        """Callbacks and metrics (the listeners) for a change a worker made: ``started``,
        ``finished``, or ``ended`` (a later attempt found the task ended by an earlier one
        whose result Temporal never got). A callback already delivered (by another server's
        resend sweep) is not sent again."""
        task = await asyncio.to_thread(self.store.get, task_id)
        if task is None:
            return
        if event == STARTED_EVENT and task.raw_status is not RawStatus.RUNNING:
            return  # already over: its final notification says so
        if event == ENDED_EVENT and task.raw_status not in WORKER_ENDS:
            return  # cancelled or expired by an API server, which reported it then
        if task.callback_url and task.callback_pending is None:
            task = dataclasses.replace(task, callback_url=None)
        await self._changed(task)
