"""Log redaction: no API key, signed-link token or data: URI ever reaches a log line.

``RedactingFilter`` rewrites every record that passes a handler: ``Authorization`` values
(``Bearer <key>``), secret query values (``token=``, presigned S3 signatures ...) and ``data:``
URIs (which may be megabytes of someone's private picture). It sits on the handlers, not the
loggers, because a filter on a logger does not see records propagated from its children.
``uvicorn_log_config`` is uvicorn's own logging config with the filter on every handler and a
root handler for the application's loggers; ``install`` adds the filter to an already configured
process (the worker processes).
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

REDACTED = "[redacted]"

# "Bearer <key>" / "Basic <credentials>", wherever it appears (headers dumped in a message, reprs).
_AUTH = re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s'\",;}\]]+")
# "Authorization: <anything>" or "'authorization': '<anything>'" up to the end of the value.
_AUTH_HEADER = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?!\[redacted\])[^'\"\r\n,}]+")
# Secret query parameters: our signed links, S3 presigned links, the usual key parameters; also
# percent-encoded, as when a whole signed URL is itself a query value.
_SECRET_QUERY = re.compile(
    r"(?i)((?:[?&;]|%3F|%26)(?:token|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
    r"api_key|apikey|access_token|key)(?:=|%3D))[^&#\s'\"]*"
)
# data:[<type>][;params],<payload>, plain or percent-encoded (a data: URI sent in a query string
# reaches the access log encoded): the payload goes, the type stays (it helps reading logs).
_DATA_URI = re.compile(
    r"(?i)\bdata(?::|%3A)((?:[a-z0-9.+-]|/|%2F)*)((?:(?:;|%3B)(?:[a-z0-9.+-]|=|%3D)*)*)(?:,|%2C)[^\s&'\"<>)\]}]*"
)


# Each pattern above needs one of these to match (in ASCII text, lower-cased), so text holding
# none of them is returned as it is without running the four of them (every access-log line
# passes here: its client address, method and path rarely hold any). A secret query value needs
# both a mark that starts a parameter and a name: every name ``_SECRET_QUERY`` knows holds one of
# ``_QUERY_NAMES`` (a list page's ``?limit=20&after=...`` holds none).
_NEEDLES = ("bearer", "basic", "authorization", "data:", "data%3a")
_QUERY_MARKS = ("?", "&", ";", "%3f", "%26")
_QUERY_NAMES = ("token", "sig", "key", "credential")


def _may_hold_secret(text: str) -> bool:
    if not text.isascii():  # re.IGNORECASE also folds some non-ASCII letters (\u017f is "s"): scan it all
        return True
    low = text.lower()
    if any(needle in low for needle in _NEEDLES):
        return True
    return any(mark in low for mark in _QUERY_MARKS) and any(name in low for name in _QUERY_NAMES)


# Short texts found clean, kept to skip even the needle scan next time: an access-log line's
# fields repeat (its format, the method, the HTTP version, the client's address and port, the
# paths polled). Bounded: emptied when full. Only the clean ones are kept, so nothing here can
# let a secret through: a text is in it only if the full scan would return it unchanged.
_CLEAN: set[str] = set()
_CLEAN_KEPT = 4096
_CLEAN_LONGEST = 512


def redact(text: str) -> str:
    """``text`` with every credential, secret query value and data: URI payload replaced."""
    if not text or text in _CLEAN:
        return text
    if _may_hold_secret(text):
        return _redact_all(text)
    if len(text) <= _CLEAN_LONGEST:
        if len(_CLEAN) >= _CLEAN_KEPT:
            _CLEAN.clear()
        _CLEAN.add(text)
    return text


def _redact_all(text: str) -> str:
    text = _DATA_URI.sub(lambda m: f"data:{m.group(1) or ''}{m.group(2) or ''},{REDACTED}", text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _SECRET_QUERY.sub(lambda m: m.group(1) + REDACTED, text)


def _redact_value(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class RedactingFilter(logging.Filter):
    """Redacts a record in place and lets it through.

    Arguments are redacted one by one rather than merged into the message, because formatters
    such as uvicorn's access formatter read ``record.args`` as a tuple of fields. Non-string
    arguments (an httpx URL, a dict of headers) are turned into redacted strings first.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        else:
            record.msg = redact(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(map(_redact_arg, record.args))
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            # Exception messages may quote a URL or a header; format once here, redacted.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _redact_arg(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value  # %d and %f still need numbers
    if isinstance(value, str):
        return redact(value)
    text = str(value)
    redacted = redact(text)
    return value if redacted == text else redacted


def install(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of ``logger`` (default: the root logger)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's default logging config, redacted, plus a root handler for ``opendance.*``."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {**config.get("filters", {}), "redact": {"()": RedactingFilter}}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact"]
    config["formatters"]["app"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["app"] = {
        "class": "logging.StreamHandler",
        "formatter": "app",
        "stream": "ext://sys.stderr",
        "filters": ["redact"],
    }
    # Without a root handler, the application's records would reach Python's last-resort
    # handler, which has no filters at all.
    config["root"] = {"handlers": ["app"], "level": level.upper()}
    return config
