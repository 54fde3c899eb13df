"""opendance: a self-hostable server for the Seedance-2.0-style video generation task API.

The public surface is the client (``__all__``); everything else is internal. Importing the
package loads httpx only: never FastAPI, torch or the server.
"""

__version__ = "0.1.0"

from .client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    NotFoundError,
    OpenDanceAPIError,
    RateLimitError,
    ServerError,
    Task,
    TaskError,
    TaskFailedError,
    TimeoutError,
)

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
    "__version__",
]
