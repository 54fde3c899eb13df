"""Executors: where a task runs. A runner decides *when* (queue, retries, recovery); an executor
owns the slots a task can take and runs the job on one.

=============  ==========================================  ========================================
kind           for                                         a slot is
=============  ==========================================  ========================================
``upstream``   the relay engine (an HTTP conversation)     an asyncio task; ``relay_concurrency``
``device``     diffusers and other model engines           N devices and N spawned ranks
``cpu``        preview, scenario                           one spawned process; ``cpu_slots``
=============  ==========================================  ========================================

A runner asks ``place`` which executor a task's model and engine take, gets a ``Slot`` from it
(``try_acquire`` or ``acquire``), starts the job with ``slot.run`` and follows the
``Execution``'s events (``Progress``, ``Checkpointed``, ``ModelLoaded``, then one of ``Done``,
``Failed`` or ``DIED``) until it ends, then gives the slot back with ``release``. ``stop`` asks
the engine to stop at its next step; ``kill`` ends the run now (a ``DIED`` follows).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..processes import DIED

Kind = Literal["upstream", "device", "cpu"]
KINDS: tuple[Kind, ...] = ("upstream", "device", "cpu")
TICK = object()  # what ``Execution.next_event`` returns when nothing came in time

# Engines placed by name; any other engine (wan, ltx, ltx2, ``module:Class``) takes devices.
UPSTREAM_ENGINES = ("relay",)
CPU_ENGINES = ("preview", "scenario")


@dataclass(frozen=True)
class Placement:
    kind: Kind
    devices: int = 1  # devices a task takes (a device group of this many ranks)

    def __str__(self) -> str:
        return f"{self.kind} x{self.devices}" if self.devices > 1 else self.kind


def place(engine: str, devices_per_task: int = 1) -> Placement:
    """The executor of a model's engine: relays upstream; a model that takes several devices
    on a device group (whatever its engine); preview and scenario on the cpu slots; the rest
    on one device."""
    if engine in UPSTREAM_ENGINES:
        return Placement("upstream")
    if devices_per_task > 1:
        return Placement("device", devices_per_task)
    if engine in CPU_ENGINES:
        return Placement("cpu")
    return Placement("device", 1)


class Execution(ABC):
    """One job running on one slot."""

    # Whether a run handed to another (its worker is shutting down) is killed rather than
    # stopped: true where the work goes on without us (a relay's upstream task, which the next
    # run follows; stopping it would cancel it upstream).
    hand_over_by_kill = False

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.events: asyncio.Queue = asyncio.Queue()
        self._getter: asyncio.Future | None = None

    async def next_event(self, timeout: float) -> Any:
        """The next event, or ``TICK`` after ``timeout`` seconds. A read that is cancelled (the
        Temporal activity was) stays pending for the next call, so no event is lost."""
        if self._getter is None:
            self._getter = asyncio.ensure_future(self.events.get())
        done, _ = await asyncio.wait({self._getter}, timeout=timeout)
        if not done:
            return TICK
        msg, self._getter = self._getter.result(), None
        return msg

    @abstractmethod
    def stop(self) -> None:
        """Ask the engine to stop at its next step (it answers ``Failed(cancelled=True)``)."""

    @abstractmethod
    def kill(self) -> None:
        """End the run now, whatever the engine does; ``DIED`` follows."""

    def close(self) -> None:
        if self._getter is not None and not self._getter.done():
            self._getter.cancel()


class Slot(ABC):
    """A place on an executor, held from ``acquire`` to ``release``."""

    executor: Executor

    @abstractmethod
    async def run(self, task_id: str, job: dict[str, Any]) -> Execution: ...


class Executor(ABC):
    kind: Kind

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self.waiting: dict[Placement, int] = {}  # tasks in ``acquire`` now, by placement

    def changed(self) -> None:
        """A slot may have become free: wake whoever waits in ``acquire``."""
        self._changed.set()
        self._changed = asyncio.Event()

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    def capacity(self, placement: Placement) -> int:
        """How many tasks of this placement can run here at once (Temporal's activity slots)."""

    @abstractmethod
    def try_acquire(self, placement: Placement) -> Slot | None:
        """A free slot now, or None (the executor may start making one)."""

    @abstractmethod
    def release(self, slot: Slot) -> None: ...

    @abstractmethod
    def health(self) -> dict[str, Any]: ...

    def processes_alive(self) -> int:
        return 0

    def check(self, placement: Placement) -> str | None:
        """Why tasks of this placement can never run here (None when they can)."""
        return None

    async def acquire(self, placement: Placement, *, tick: float = 0.5, waiting: Callable[[], None] | None = None) -> Slot:
        """Wait for a free slot, calling ``waiting()`` every ``tick`` seconds (a heartbeat)."""
        self.waiting[placement] = self.waiting.get(placement, 0) + 1
        try:
            while (slot := self.try_acquire(placement)) is None:
                changed = self._changed
                try:
                    await asyncio.wait_for(changed.wait(), tick)
                except TimeoutError:
                    if waiting is not None:
                        waiting()
            return slot
        finally:
            self.waiting[placement] -= 1


__all__ = ["DIED", "KINDS", "TICK", "Execution", "Executor", "Kind", "Placement", "Slot", "place"]
