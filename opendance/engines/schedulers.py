"""Scheduler settings per engine: ``scheduler = {flow_shift = 5.0}`` in a mode's table applies to
that mode's pipeline calls only.

A pipeline object is shared by the engines of every mode that loads the same folder (a Wan
model's modes all extend chunks with one VACE pipeline), so an override cannot be written into
the pipeline's scheduler. Each engine keeps its own scheduler object per pipeline, made once from
the folder's config with the overrides (``from_config``), and puts it on the pipeline for the
length of its own call only; the pipeline's own scheduler is put back on every exit path.

Only engine modules import this (it imports diffusers' config machinery through the pipeline).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any


def check_overrides(pipe, overrides: Mapping[str, Any]) -> None:
    """``ValueError`` naming keys the pipeline's scheduler has no config entry for."""
    config = pipe.scheduler.config
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        known = ", ".join(sorted(k for k in config if not k.startswith("_")))
        raise ValueError(f"scheduler {unknown} are not settings of {type(pipe.scheduler).__name__} (it has {known})")


class EngineSchedulers:
    """One engine's schedulers: ``overrides`` over each pipeline's own scheduler config."""

    def __init__(self, overrides: Mapping[str, Any]) -> None:
        self.overrides = dict(overrides)
        self._own: list[tuple[Any, Any, Any]] = []  # (pipeline, the scheduler it came with, the engine's own)

    def own(self, pipe):
        """The engine's scheduler for ``pipe`` (None when there is nothing to override)."""
        if not self.overrides:
            return None
        for p, base, mine in self._own:
            if p is pipe and base is pipe.scheduler:
                return mine
        check_overrides(pipe, self.overrides)
        mine = type(pipe.scheduler).from_config({**pipe.scheduler.config, **self.overrides})
        self._own.append((pipe, pipe.scheduler, mine))
        return mine

    @contextlib.contextmanager
    def on(self, pipe) -> Iterator[None]:
        """Around one call of ``pipe``: the engine's scheduler is the pipeline's scheduler."""
        mine = self.own(pipe)
        if mine is None:
            yield
            return
        base = pipe.scheduler
        pipe.scheduler = mine
        try:
            yield
        finally:
            pipe.scheduler = base

    def clear(self) -> None:
        self._own = []
