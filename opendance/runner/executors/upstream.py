"""The upstream executor: relay jobs as asyncio tasks in this process, sharing one
``httpx.AsyncClient``, ``relay_concurrency`` at once (default 256). No worker process, no
device, no torch: in local mode it runs in the API process, in Temporal mode in an ``opendance
worker`` that serves relay models with async activities.

A slot is a permit. A job loads its inputs and checkpoint in threads, runs ``RelayJob`` (create
with failover, the upstream id checkpointed at once, whatever ``checkpoint_every`` says, then
polls), and hands the downloaded video to ``deliver_video`` in a thread; at most as many of
those at once as there are cores, since a video that must be fitted is decoded and encoded.
``stop`` (a cancel) reaches the job at its next poll; ``kill`` cancels the asyncio task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ...config import Settings
from ...engines.base import Job
from ...engines.options import RelayOptions
from ...engines.relay import RelayContext, RelayJob, channel_keys
from ...engines.relay.channels import ChannelBoard, RequestObserver
from ...engines.relay.engine import USER_AGENT
from ...errors import Cancelled, EngineError
from ...storage import Storage
from ..checkpoints import TaskCheckpoints
from ..execute import deliver_video, open_inputs
from ..messages import Checkpointed, Done, Failed, Progress
from .base import DIED, Execution, Executor, Placement, Slot
from .pool import default_cpu_slots

log = logging.getLogger("opendance.runner")

ENGINE_SHARE = 90  # the upstream's progress fills this much of the bar; storing the video the rest


class UpstreamExecutor(Executor):
    kind = "upstream"

    def __init__(self, settings: Settings, storage: Storage, observe: RequestObserver | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.storage = storage
        self.slots = settings.relay_concurrency
        self.busy = 0
        self.board = ChannelBoard(settings.relay_breaker_failures, settings.relay_breaker_cooldown, observe)
        self.http: httpx.AsyncClient | None = None
        self.delivering = asyncio.Semaphore(default_cpu_slots())
        self.running: set[UpstreamExecution] = set()

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=self.slots + 16, max_keepalive_connections=min(self.slots, 128))
        self.http = httpx.AsyncClient(headers={"User-Agent": USER_AGENT}, limits=limits)

    async def stop(self) -> None:
        # The jobs stop where they are; the upstream keeps working, and the next run of each
        # task (after a restart, on another worker) follows its upstream task from the checkpoint.
        for execution in list(self.running):
            execution.kill()
        if self.running:
            await asyncio.wait([e.task for e in self.running], timeout=5.0)
        if self.http is not None:
            await self.http.aclose()

    def capacity(self, placement: Placement) -> int:
        return self.slots

    def try_acquire(self, placement: Placement) -> Slot | None:
        if self.busy >= self.slots:
            return None
        self.busy += 1
        return UpstreamSlot(self)

    def release(self, slot: Slot) -> None:
        self.busy -= 1
        self.changed()

    def health(self) -> dict[str, Any]:
        return {"ok": True, "slots": self.slots, "busy": self.busy, "channels": self.board.describe()}


class UpstreamSlot(Slot):
    executor: UpstreamExecutor

    def __init__(self, executor: UpstreamExecutor) -> None:
        self.executor = executor

    def __str__(self) -> str:
        return "upstream slot"

    async def run(self, task_id: str, job: dict[str, Any]) -> Execution:
        execution = UpstreamExecution(self.executor, task_id, job)
        self.executor.running.add(execution)
        execution.task.add_done_callback(lambda _: self.executor.running.discard(execution))
        return execution


class UpstreamExecution(Execution, RelayContext):
    hand_over_by_kill = True

    def __init__(self, executor: UpstreamExecutor, task_id: str, job: dict[str, Any]) -> None:
        super().__init__(task_id)
        self.executor = executor
        self.job = job
        s = executor.settings
        # Always on for relays: the upstream id is what keeps a restart from paying twice.
        self.checkpoints = TaskCheckpoints(executor.storage, task_id, max(1, s.checkpoint_every))
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._main(), name=f"relay-{task_id}")

    # -- Execution ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def kill(self) -> None:
        self.task.cancel()

    async def _main(self) -> None:
        msg: Any = DIED
        try:
            msg = await self._make()
        finally:  # a killed job leaves DIED
            self.events.put_nowait(msg)

    async def _make(self) -> Done | Failed:
        ex, s, task_id = self.executor, self.executor.settings, self.task_id
        t0 = time.perf_counter()
        try:
            job = Job.from_dict(self.job)
            opts = RelayOptions(**{"engine": "relay", **job.engine})
            keys = channel_keys(opts)
            tmp_dir = s.data_dir / "tmp"
            tmp_dir.mkdir(parents=True, exist_ok=True)
            with contextlib.ExitStack() as stack:
                inputs = await asyncio.to_thread(open_inputs, job, ex.storage, stack)
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=tmp_dir, prefix="relay-")))
                assert ex.http is not None
                path = await RelayJob(job, opts, keys, ex.http, ex.board).run(inputs, self, folder)
                engine_seconds = time.perf_counter() - t0
                async with ex.delivering:
                    result = await asyncio.to_thread(
                        deliver_video,
                        job,
                        path,
                        ex.storage,
                        cancelled=self.cancelled,
                        engine_seconds=engine_seconds,
                        tmp_dir=tmp_dir,
                        checkpoints=self.checkpoints,
                    )
            return Done(task_id, result.video_key, result.last_frame_key, result.engine_seconds, result.wall_seconds)
        except Cancelled:
            return Failed(task_id, "cancelled", "the task was cancelled", cancelled=True)
        except EngineError as exc:
            return Failed(task_id, exc.code, str(exc))
        except OSError as exc:
            log.exception("task %s: storage error", task_id)
            return Failed(task_id, "storage_error", f"the video could not be stored: {exc.strerror or exc}")
        except Exception as exc:
            log.exception("task %s failed", task_id)
            return Failed(task_id, "engine_error", f"{type(exc).__name__}: {exc}")

    # -- RelayContext ------------------------------------------------------------------------

    def cancelled(self) -> bool:
        return self._stop.is_set()

    async def wait(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def progress(self, percent: int) -> None:
        self.events.put_nowait(Progress(self.task_id, ENGINE_SHARE * percent // 100))

    async def load_state(self) -> dict[str, Any] | None:
        saved = await asyncio.to_thread(self.checkpoints.load)
        return saved[0] if saved is not None and isinstance(saved[0], dict) else None

    async def save_state(self, state: dict[str, Any]) -> None:
        # A failed write is the job's failure: going on without the id could pay for the video twice.
        await asyncio.to_thread(self.checkpoints.save, state, 0, required=True)
        self.events.put_nowait(Checkpointed(self.task_id, 0))
