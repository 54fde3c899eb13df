"""The runner interface: who runs tasks once the service has stored them.

``LocalRunner`` (the embedded default) runs them in worker processes on this machine; the
Temporal runner hands them to workers anywhere. Both move tasks through the store's guarded
transitions and report every change to ``on_change`` (callbacks, metrics).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from ..store import Task

TaskListener = Callable[[Task], Awaitable[None]]


class Runner(ABC):
    def __init__(self) -> None:
        self._listeners: list[TaskListener] = []

    def add_listener(self, listener: TaskListener) -> None:
        self._listeners.append(listener)

    async def _changed(self, task: Task) -> None:
        for listener in self._listeners:
            await listener(task)

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
