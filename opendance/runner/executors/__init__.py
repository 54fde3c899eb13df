"""The executors of one process, made from the models it serves (see ``base`` for the idea)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ...config import ModelConfig, Settings
from ...storage import Storage
from .base import DIED, KINDS, TICK, Execution, Executor, Kind, Placement, Slot, place
from .pool import ProcessExecutor, default_cpu_slots
from .upstream import UpstreamExecutor

__all__ = [
    "DIED",
    "KINDS",
    "TICK",
    "Execution",
    "Executor",
    "Executors",
    "Kind",
    "Placement",
    "ProcessExecutor",
    "Slot",
    "UpstreamExecutor",
    "check_models",
    "default_cpu_slots",
    "place",
    "placement_of",
]


def placement_of(models: dict[str, ModelConfig], model: str, job: dict[str, Any]) -> Placement:
    cfg = models.get(model)
    return place(job["engine"]["engine"], cfg.devices_per_task if cfg is not None else 1)


def check_models(settings: Settings, models: dict[str, ModelConfig], served: Iterable[str] | None = None) -> None:
    """Raise ``ValueError`` for a served model that can never run with these settings."""
    for name in models if served is None else served:
        n = models[name].devices_per_task
        if n > len(settings.devices):
            raise ValueError(
                f"models.{name}: devices_per_task = {n}, but OPENDANCE_DEVICES lists {len(settings.devices)} "
                f"device(s) ({','.join(settings.devices)})"
            )


class Executors:
    """One executor per kind, for the models this process serves; made when first needed
    (a task recovered from the store may be of a model no longer in the models file)."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        models: dict[str, ModelConfig],
        *,
        served: Iterable[str] | None = None,
        observe: Callable[[str, str, float, bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.models = models
        self.served = list(models) if served is None else list(served)
        self.observe = observe
        self.by_kind: dict[Kind, Executor] = {}
        self._started: set[Kind] = set()
        self._device_sizes = {
            self.placement(m, mode).devices
            for m in self.served
            for mode in models[m].modes
            if self.placement(m, mode).kind == "device"
        }

    def placement(self, model: str, mode: Any) -> Placement:
        cfg = self.models[model]
        return place(cfg.modes[mode].engine, cfg.devices_per_task)

    def placements(self) -> dict[str, set[Placement]]:
        return {m: {self.placement(m, mode) for mode in self.models[m].modes} for m in self.served}

    def check(self) -> None:
        check_models(self.settings, self.models, self.served)

    async def start(self) -> None:
        for wanted in self.placements().values():
            for p in wanted:
                await self.get(p.kind)

    def make(self, kind: Kind) -> Executor:
        if kind not in self.by_kind:
            if kind == "upstream":
                self.by_kind[kind] = UpstreamExecutor(self.settings, self.storage, self.observe)
            elif kind == "cpu":
                self.by_kind[kind] = ProcessExecutor.cpu(self.settings)
            else:
                self.by_kind[kind] = ProcessExecutor.device(self.settings, self._device_sizes or {1})
        return self.by_kind[kind]

    async def get(self, kind: Kind) -> Executor:
        executor = self.make(kind)
        if kind not in self._started:
            self._started.add(kind)
            await executor.start()
        return executor

    async def stop(self) -> None:
        for executor in self.by_kind.values():
            await executor.stop()

    def processes_alive(self) -> int:
        return sum(e.processes_alive() for e in self.by_kind.values())

    def health(self) -> dict[str, Any]:
        return {kind: e.health() for kind, e in self.by_kind.items()}
