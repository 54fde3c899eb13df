"""The task store: SQLAlchemy models, Alembic migrations, and ``TaskStore``."""

from .repo import DuplicateIdempotencyKey, Task, TaskStore

__all__ = ["DuplicateIdempotencyKey", "Task", "TaskStore"]
