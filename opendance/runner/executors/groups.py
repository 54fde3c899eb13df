"""Process slots: a ``Group`` is the N spawned rank processes one task runs on (N = 1: one
process), and the one ``Execution`` of the job on it.

Every rank is a ``worker_main`` (``runner/worker.py``) spawned through ``WorkerProcess``; the
ranks of one group join one ``torch.distributed`` group at start. A group is ready when every
rank said ``Ready``. It runs a job by sending it to every rank; rank 0's events are the job's,
and the job is over when rank 0 has said ``Done`` or ``Failed`` and every other rank ``Idle``.

A group lives and dies whole: when any rank dies (or the others do not finish within
``RANK_GRACE`` seconds of rank 0, or rank 0 not within that time of another rank's error, which
means some rank waits in a collective for one that left), every rank is killed and the group
starts again: at once after a death in service, with backoff (1, 2, 4 ... 30 s) after deaths
before it was ever ready (a broken start-up must not spin).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from ...config import Settings
from ..messages import CancelJob, Checkpointed, Done, Failed, Idle, ModelLoaded, Progress, Ready, RunJob
from ..processes import DIED, WorkerProcess
from ..worker import worker_main
from .base import Execution, Slot

if TYPE_CHECKING:
    from .pool import ProcessExecutor

log = logging.getLogger("opendance.runner")

RANK_GRACE = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GroupExecution(Execution):
    def __init__(self, group: Group, task_id: str) -> None:
        super().__init__(task_id)
        self.group = group
        self.final: Done | Failed | None = None
        self.idle: set[int] = set()
        self.errors: dict[int, str] = {}
        self.ended = False
        self._timer: asyncio.TimerHandle | None = None

    def stop(self) -> None:
        self.group.cancel(self.task_id)

    def kill(self) -> None:
        self.group.kill()

    def feed(self, rank: int, msg: Any) -> None:
        if self.ended:
            return
        if rank == 0:
            if isinstance(msg, (Done, Failed)) and msg.task_id == self.task_id:
                self.final = msg
            elif isinstance(msg, (Progress, Checkpointed, ModelLoaded)):
                self.events.put_nowait(msg)
        elif isinstance(msg, Idle) and msg.task_id == self.task_id:
            self.idle.add(rank)
            if msg.error:
                self.errors[rank] = msg.error
        elif isinstance(msg, (Progress, Checkpointed, ModelLoaded, Done, Failed)):
            self.group.stray_events += 1  # only rank 0 reports; a worker that breaks that is a bug
            log.warning("task %s: rank %d sent %s, which only rank 0 may; ignored", self.task_id, rank, type(msg).__name__)
        if self.final is not None and len(self.idle) == self.group.size - 1:
            self._end(self.final, healthy=True)
        elif (self.final is not None or self.errors) and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(RANK_GRACE, self._stuck)

    def _kept(self) -> Done | Failed | None:
        """Rank 0's answer when it stands although the group broke: a stored video, a stop."""
        final = self.final
        if isinstance(final, Done) or (isinstance(final, Failed) and final.cancelled):
            return final
        return None

    def _stuck(self) -> None:
        if self.ended:
            return
        waiting = [r for r in range(1, self.group.size) if r not in self.idle]
        log.error(
            "task %s: ranks %s of %s did not finish (errors: %s); restarting the group",
            self.task_id,
            waiting or [0],
            self.group,
            self.errors or "none",
        )
        self._end(self._kept() or DIED, healthy=False)

    def died(self) -> None:
        """A rank died while this job ran."""
        if not self.ended:
            self._end(self._kept() or DIED, healthy=False)

    def _end(self, msg: Any, *, healthy: bool) -> None:
        self.ended = True
        if self._timer is not None:
            self._timer.cancel()
        self.events.put_nowait(msg)
        self.group.job_ended(self, healthy)


class Group(Slot):
    def __init__(self, executor: ProcessExecutor, ids: list[int], settings: Settings) -> None:
        self.executor = executor
        self.ids = ids  # indexes into the executor's device list
        self.devices = [executor.devices[i] for i in ids]
        self.size = len(ids)
        self.settings = settings
        self.state = "new"  # starting | ready | dead | closed
        self.acquired = False
        self.execution: GroupExecution | None = None
        self.ranks: list[WorkerProcess] = []
        self.failures = 0  # deaths before ready, in a row
        self.stray_events = 0  # task events from ranks other than 0 (ignored; there should be none)
        self._serve_task: asyncio.Task | None = None

    def __str__(self) -> str:
        return f"group {'+'.join(self.devices)}" if self.size > 1 else f"worker {self.devices[0]}"

    @property
    def available(self) -> bool:
        return self.state == "ready" and not self.acquired

    @property
    def pids(self) -> list[int | None]:
        return [p.pid for p in self.ranks]

    def start(self) -> None:
        self.state = "starting"
        inbox: asyncio.Queue = asyncio.Queue()
        init = f"tcp://127.0.0.1:{_free_port()}" if self.size > 1 else None
        kind = self.executor.kind
        self.ranks = []
        for rank, device in enumerate(self.devices):
            name = f"opendance-{kind}-{device}" if self.size == 1 else f"opendance-{kind}-{device}-rank{rank}"
            args = (device, self.settings, rank, self.size, init)
            self.ranks.append(WorkerProcess(name, worker_main, args, events=inbox, tag=rank).start())
        self._serve_task = asyncio.create_task(self._serve(inbox, self.ranks), name=f"serve-{self}")

    async def _serve(self, inbox: asyncio.Queue, ranks: list[WorkerProcess]) -> None:
        ready: set[int] = set()
        while True:
            rank, msg = await inbox.get()
            if msg is DIED:
                await self._died(ranks, rank, was_ready=len(ready) == self.size)
                return
            if isinstance(msg, Ready):
                ready.add(rank)
                if len(ready) == self.size and self.state == "starting":
                    self.state, self.failures = "ready", 0
                    self.executor.changed()
            elif self.execution is not None:
                self.execution.feed(rank, msg)

    async def _died(self, ranks: list[WorkerProcess], rank: int, *, was_ready: bool) -> None:
        if self.state == "closed":
            return
        self.state = "dead"
        for p in ranks:
            p.kill()
        if self.execution is not None:
            self.execution.died()
        await asyncio.to_thread(_join_all, ranks, 5.0)
        log.error(
            "%s: rank %d (pid %s) exited with code %s%s",
            self,
            rank,
            ranks[rank].pid,
            ranks[rank].exitcode,
            "" if self.size == 1 else "; its other ranks were stopped",
        )
        if was_ready:
            self.failures, delay = 0, 0.0
        else:
            # It died before it was ready: a broken start-up (a bad driver, a full disk) would
            # otherwise restart it in a tight loop.
            self.failures += 1
            delay = min(30.0, 2.0 ** (self.failures - 1))
        asyncio.get_running_loop().call_later(delay, self._restart)

    def _restart(self) -> None:
        if self.state == "dead":
            self.start()

    # -- a job -------------------------------------------------------------------------------

    async def run(self, task_id: str, job: dict[str, Any]) -> Execution:
        execution = self.execution = GroupExecution(self, task_id)
        if self.state != "ready":
            execution.died()  # it died between acquire and now
        else:
            for p in self.ranks:
                p.send(RunJob(task_id, job))  # a rank that cannot take it is dying: DIED follows
        return execution

    def job_ended(self, execution: GroupExecution, healthy: bool) -> None:
        if self.execution is execution:
            self.execution = None
        if not healthy and self.state == "ready":
            self.kill()  # its DIED events restart it

    def cancel(self, task_id: str) -> None:
        for p in self.ranks:
            p.send(CancelJob(task_id))

    def kill(self) -> None:
        for p in self.ranks:
            p.kill()

    async def close(self) -> None:
        self.state = "closed"
        if self._serve_task is not None:
            self._serve_task.cancel()
        if self.execution is not None:
            self.execution.died()
        await asyncio.gather(*(asyncio.to_thread(p.close) for p in self.ranks))

    def describe(self) -> dict[str, Any]:
        running = self.execution.task_id if self.execution is not None else None
        described = {"devices": self.devices, "pids": self.pids, "state": self.state, "task": running}
        if self.size > 1:
            described["stray_events"] = self.stray_events
        return described


def _join_all(processes, timeout: float) -> None:
    for p in processes:
        p.join(timeout)
