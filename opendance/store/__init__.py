"""The task store: SQLAlchemy models, Alembic migrations, and ``TaskStore``."""

from .repo import DuplicateIdempotencyKey, StoreWriteFailed, Task, TaskStore

__all__ = ["DuplicateIdempotencyKey", "StoreWriteFailed", "Task", "TaskStore"]
