"""Fixtures shared by the API's store-level tests."""

from __future__ import annotations

import pytest

from opendance.store.migrate import upgrade
from opendance.store.repo import TaskStore


@pytest.fixture
def store(tmp_path):
    """A task store on a migrated SQLite file (``tmp_path / "tasks.db"``), with its inline reads
    and inserts on."""
    store = TaskStore.from_url(f"sqlite:///{tmp_path / 'tasks.db'}")
    upgrade(store.engine)
    assert store.inline is not None and store.inline_insert is not None
    yield store
    store.close()
