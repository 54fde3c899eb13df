"""Checkpoint helpers for tests."""

from __future__ import annotations

from ..runner.checkpoints import TaskCheckpoints


class PartsRead(TaskCheckpoints):
    """``TaskCheckpoints`` that remembers which parts a run read back (``read``), so a test can
    show that finished chunks came from the checkpoint rather than being made again."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.read: list[str] = []

    def load_part(self, name: str) -> bytes:
        self.read.append(name)
        return super().load_part(name)
