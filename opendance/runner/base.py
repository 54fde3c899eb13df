"""The runner interface: who runs tasks once the service has stored them.

``LocalRunner`` (the embedded default) runs them on this machine's executors; the Temporal
runner hands them to workers anywhere. Both move tasks through the store's guarded transitions
(``lifecycle.Lifecycle``) and report every change they make to their listeners (callbacks,
metrics), and what their executors see (a model loaded, an upstream request) to their
observers (metrics).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from ..store import Task

TaskListener = Callable[[Task], Awaitable[None]]
Observer = Callable[[Any], None]  # gets ``messages.ModelLoaded`` and ``messages.UpstreamRequest``


class Runner(ABC):
    def __init__(self) -> None:
        self._listeners: list[TaskListener] = []
        self._observers: list[Observer] = []

    def add_listener(self, listener: TaskListener) -> None:
        self._listeners.append(listener)

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    async def _changed(self, task: Task) -> None:
        for listener in self._listeners:
            await listener(task)

    def _observe(self, event: Any) -> None:
        for observer in self._observers:
            observer(event)

    @abstractmethod
    async def start(self) -> None:
        """Start, then take up every task left queued or running (recovery)."""

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def submit(self, task: Task) -> None:
        """Run a stored, queued task."""

    @abstractmethod
    async def cancel(self, task_id: str) -> None:
        """Stop a task that the store already marks CANCELLED (or EXPIRED)."""

    @abstractmethod
    def health(self) -> dict[str, object]:
        """What /readyz reports; ``ok`` False when tasks cannot run."""
