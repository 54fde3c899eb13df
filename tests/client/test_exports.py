"""The public surface is pinned: only what ``opendance.__all__`` lists, and importing the
package stays light (no server, no FastAPI, no torch)."""

from __future__ import annotations

import builtins
import subprocess
import sys

import opendance

PUBLIC = {
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
}


def test_all_is_pinned_and_every_name_resolves():
    assert set(opendance.__all__) == PUBLIC
    assert len(opendance.__all__) == len(PUBLIC)
    for name in opendance.__all__:
        assert getattr(opendance, name) is not None, name
    for name in PUBLIC - {"__version__", "TaskError", "Task", "Client", "AsyncClient"}:
        assert getattr(opendance, name).__module__ == "opendance.client._errors", name


def test_error_tree():
    for name in ("BadRequestError", "AuthenticationError", "NotFoundError", "ConflictError", "RateLimitError", "ServerError"):
        assert issubclass(getattr(opendance, name), opendance.OpenDanceAPIError), name
    assert not issubclass(opendance.TaskFailedError, opendance.OpenDanceAPIError)
    # ``except TimeoutError`` (the built-in) also catches a wait that timed out.
    assert issubclass(opendance.TimeoutError, builtins.TimeoutError)


def test_import_is_light():
    heavy = ("fastapi", "starlette", "sqlalchemy", "torch", "numpy", "av", "opendance.api", "opendance.store")
    code = f"import sys, opendance\nprint(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m in {heavy!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
