"""How the store writes and reads its JSON columns (``job``, ``extra_body``).

Writing is strict: a value no JSON document may hold (a non-finite number, an unpaired UTF-16
surrogate) raises before the row exists, so a task that cannot be read back is never created.

Reading is forgiving, because rows written before these rules (or by hand) may hold such values,
and one such row must not turn every GET or list of its owner into a 500: ``Infinity``/``NaN``
read as null, unpaired surrogates as U+FFFD, anything nested deeper than ``MAX_DEPTH`` as null,
and a document that does not parse at all as ``{}`` (logged).
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

log = logging.getLogger("opendance.store")

MAX_DEPTH = 64  # deeper than anything the API accepts (32 levels per field)
# What makes a document need the slow, repairing read: escaped surrogates, Infinity/NaN.
_SUSPECT = re.compile(r"\\u[dD][89a-fA-F]|Infinity|NaN")


# ``json.dumps(value, allow_nan=False, ensure_ascii=False)``, without building an encoder per call
# (``dumps`` makes one whenever an option is not the default: half the time of a small value).
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False)


def dumps(value: Any) -> str:
    text = _ENCODER.encode(value)
    if not text.isascii():
        text.encode("utf-8")  # raises UnicodeEncodeError for an unpaired surrogate
    return text


def loads(text: str | bytes | bytearray | memoryview) -> Any:
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8", "replace")
    if not _SUSPECT.search(text) and text.count("[") + text.count("{") < MAX_DEPTH:
        try:
            return json.loads(text)  # the common case: nothing to repair, too shallow to be deep
        except ValueError:
            pass
    try:
        value = json.loads(text, parse_constant=lambda _name: None)
    except (ValueError, RecursionError) as exc:
        log.error("a stored JSON value cannot be read (%s); it reads as {}", type(exc).__name__)
        return {}
    return _repaired(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: str) -> str:
    return value if value.isascii() else _SURROGATE.sub("\ufffd", value)


def _repaired(value: Any) -> Any:
    """A copy of ``value`` that JSON can always render (iterative: a deep value costs no stack)."""
    root: list[Any] = [None]
    # (the value, the container to put its copy in, the index or key there, its depth)
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]
    while stack:
        item, parent, slot, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            item = None
        elif isinstance(item, str):
            item = _text(item)
        elif isinstance(item, (list, dict)):
            if depth >= MAX_DEPTH:
                item = None
            elif isinstance(item, list):
                copy: Any = [None] * len(item)
                stack.extend((child, copy, i, depth + 1) for i, child in enumerate(item))
                item = copy
            else:
                copy = {}
                for key, child in item.items():
                    key = _text(key)
                    copy[key] = None
                    stack.append((child, copy, key, depth + 1))
                item = copy
        parent[slot] = item
    return root[0]
