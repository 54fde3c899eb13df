"""The two executors that run engines in spawned processes: ``cpu`` and ``device``.

- ``cpu`` (preview, scenario): ``cpu_slots`` processes (default: the cores this process may
  use), one task each. One starts with the executor, the others when tasks need them; they stay.
- ``device`` (diffusers and other model engines): the ``devices`` list. A task of a model with
  ``devices_per_task = N`` takes a group of N devices with one rank each; a group is made only
  when all its devices are free, and is kept for the next task of that size. At start the
  devices are split into groups of the size the models use (one size: the common case);
  a task of another size takes free devices, or those of idle groups, which are closed for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ...config import Settings
from .base import Executor, Kind, Placement, Slot
from .groups import Group

log = logging.getLogger("opendance.runner")


def default_cpu_slots() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class ProcessExecutor(Executor):
    def __init__(self, kind: Kind, settings: Settings, devices: list[str], warm: list[int]) -> None:
        """``warm``: the sizes of the groups started with the executor."""
        super().__init__()
        self.kind = kind
        self.settings = settings
        self.devices = devices
        self.warm = warm
        self.groups: list[Group] = []
        self._closing: set[int] = set()  # devices of groups being closed

    @classmethod
    def cpu(cls, settings: Settings) -> ProcessExecutor:
        slots = settings.cpu_slots or default_cpu_slots()
        return cls("cpu", settings, ["cpu"] * slots, warm=[1])

    @classmethod
    def device(cls, settings: Settings, sizes: set[int]) -> ProcessExecutor:
        """``sizes``: the ``devices_per_task`` of the models it will run."""
        devices = list(settings.devices)
        size = next(iter(sizes)) if len(sizes) == 1 else 1
        return cls("device", settings, devices, warm=[size] * (len(devices) // size))

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        for size in self.warm:
            self._spawn(size)

    async def stop(self) -> None:
        await asyncio.gather(*(g.close() for g in self.groups))

    def _spawn(self, size: int) -> Group | None:
        free = self._free_ids()
        if len(free) < size:
            return None
        group = Group(self, free[:size], self.settings)
        self.groups.append(group)
        group.start()
        return group

    def _free_ids(self) -> list[int]:
        taken = {i for g in self.groups for i in g.ids} | self._closing
        return [i for i in range(len(self.devices)) if i not in taken]

    # -- slots ---------------------------------------------------------------------------

    def check(self, placement: Placement) -> str | None:
        if placement.devices > len(self.devices):
            what = "OPENDANCE_CPU_SLOTS" if self.kind == "cpu" else "OPENDANCE_DEVICES"
            return f"devices_per_task = {placement.devices} but {what} gives {len(self.devices)}"
        return None

    def capacity(self, placement: Placement) -> int:
        return max(1, len(self.devices) // placement.devices)

    def try_acquire(self, placement: Placement) -> Slot | None:
        size = placement.devices
        for group in self.groups:
            if group.size == size and group.available:
                group.acquired = True
                return group
        coming = sum(1 for g in self.groups if g.size == size and not g.acquired and g.state in ("starting", "dead"))
        if coming < max(1, self.waiting.get(placement, 0)):
            self._make(size)
        return None

    def _make(self, size: int) -> None:
        """Start a group of ``size`` on free devices; when too few are free, close idle groups
        of other sizes first (their devices are taken once their processes have exited, so a
        GPU's memory is free before a new rank loads onto it)."""
        if len(self._free_ids()) >= size:
            self._spawn(size)
            return
        idle = [g for g in self.groups if g.size != size and g.available]
        while idle and len(self._free_ids()) < size:
            victim = idle.pop()
            self.groups.remove(victim)
            self._closing.update(victim.ids)
            log.info("closing idle %s to make a group of %d", victim, size)
            asyncio.create_task(self._close(victim))

    async def _close(self, group: Group) -> None:
        try:
            await group.close()
        finally:
            self._closing.difference_update(group.ids)
            self.changed()  # whoever waits makes its group now

    def release(self, slot: Slot) -> None:
        assert isinstance(slot, Group)
        slot.acquired = False
        self.changed()

    # -- what /readyz shows ----------------------------------------------------------------

    def processes_alive(self) -> int:
        return sum(1 for g in self.groups for p in g.ranks if p.alive)

    def health(self) -> dict[str, Any]:
        alive = self.processes_alive()
        return {
            "ok": alive > 0 or not self.groups,
            "slots": len(self.devices),
            "processes_alive": alive,
            "busy": sum(1 for g in self.groups if g.acquired),
            "groups": [g.describe() for g in self.groups],
        }
