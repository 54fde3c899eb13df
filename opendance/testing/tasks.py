"""Tasks written straight into a store (no API), for tests of the store and what reads it."""

from __future__ import annotations

from typing import Any

from ..domain import new_task_id
from ..store.repo import Task, TaskStore


def add_task(store: TaskStore, **fields: Any) -> Task:
    """``store.create`` of a queued 5 s 864x480 text-to-video task; ``fields`` override any column
    (``id`` defaults to a new task id, ``job`` to ``{"task_id": id}``) or pass ``check``."""
    return store.create(**task_fields(**fields))


def task_fields(**fields: Any) -> dict[str, Any]:
    """The arguments ``add_task`` gives ``store.create`` (for ``create_at_once`` too)."""
    task_id = fields.pop("id", None) or new_task_id()
    values: dict[str, Any] = {
        "owner": "o",
        "model": "m",
        "mode": "text-to-video",
        "duration": 5,
        "aspect_ratio": "16:9",
        "width": 864,
        "height": 480,
        "fps": 8,
        "seed": 1,
        "engine": "scenario",
        "job": {"task_id": task_id},
        "extra_body": {},
        "base_url": "http://x",
        **fields,
    }
    return {"id": task_id, **values}
