"""The one exception tree of the server. A single handler in ``api.app`` renders it.

::

    OpenDanceError                 500  server_error           internal_error
     ├── InvalidRequest            400  invalid_request_error  (code per rule), param names the field
     │    └── MediaError           400  invalid_request_error  invalid_media / media_fetch_failed / ...
     ├── AuthenticationError       401  authentication_error   invalid_api_key
     ├── PermissionDenied          403  permission_error       permission_denied   (the admin API only)
     ├── NotFound                  404  invalid_request_error  not_found
     ├── Conflict                  409  invalid_request_error  conflict
     ├── PayloadTooLarge           413  invalid_request_error  body_too_large
     ├── RateLimited               429  rate_limit_error       rate_limited        (+ retry_after)
     └── ServiceUnavailable        503  server_error           unavailable         (+ retry_after)

Every error carries ``status``, ``type``, ``code`` and ``param`` and renders as
``{"error": {"message", "type", "param", "code"}}``. Nothing here imports FastAPI.
"""

from __future__ import annotations


class OpenDanceError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def to_dict(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(OpenDanceError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class MediaError(InvalidRequest):
    """A media item that cannot be fetched, decoded or probed, or breaks a media rule."""

    code = "invalid_media"


class AuthenticationError(OpenDanceError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(OpenDanceError):
    """A valid key without the right: the admin API. Tasks of other keys are a 404 instead."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(OpenDanceError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(OpenDanceError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(OpenDanceError):
    status = 413
    type = "invalid_request_error"
    code = "body_too_large"


class RateLimited(OpenDanceError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class ServiceUnavailable(OpenDanceError):
    status = 503
    type = "server_error"
    code = "unavailable"


class Cancelled(Exception):
    """Raised inside an engine (through ``StepContext.check_cancelled``) when its task was cancelled."""


class EngineError(Exception):
    """An engine failed in a way the task's ``error`` should explain to the client."""

    def __init__(self, message: str, code: str = "engine_error") -> None:
        super().__init__(message)
        self.code = code
