"""The Python client of the opendance video task API (and of any server speaking it).

Import it from the package root: ``from opendance import Client, AsyncClient, Task``.
"""

from ._client import AsyncClient, Client
from ._errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    OpenDanceAPIError,
    RateLimitError,
    ServerError,
    TaskFailedError,
    TimeoutError,
)
from ._models import Task, TaskError

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "NotFoundError",
    "OpenDanceAPIError",
    "RateLimitError",
    "ServerError",
    "Task",
    "TaskError",
    "TaskFailedError",
    "TimeoutError",
]
