"""Task objects as response bytes, memoised by the row version they were rendered from.

A task object (``TaskService.render``) is a function of the task's row, the base URL of the
request (links follow it) and whether links are signed (once a key exists). Every UPDATE of a
row bumps its ``version`` (a trigger in the database, migration 0005, whoever writes), and a
task id is never reused, so ``(id, version, base_url, signed)`` is a complete key: nothing needs
invalidating. The hot reads of ``store.inline`` ask for ids and versions first (two small
columns) and read whole only the rows the memo does not hold. A hit skips reading the row, its
JSON decoding, the ``Task``, the rendering (a signed link per completed task) and the JSON
encoding; a list page is then the cached bodies joined, as the floor app joins stored ones.

One step further, while nothing at all commits to the file (``InlineReader.snapshot``: SQLite's
``PRAGMA data_version``, a few microseconds), a GET or a list page is what was served under the
same snapshot for the same request: no row and no stamp is read. Any commit, by any connection
or process, gives a new snapshot, and the entries of older ones are never found again (the LRU
forgets them).

The bytes are those ``JSONResponse`` writes for the same object (``json.dumps`` with
``ensure_ascii=False``, ``allow_nan=False`` and compact separators), so a response is the same
byte for byte whether it came from here or from the ORM path.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..store import Task
from ..store.inline import ID, VERSION, decoded

log = logging.getLogger("opendance.service")

SIZE = 4096  # bodies kept (the rows behind them about 2-4 KB each: a few MB at most)
PAGES = 256  # list pages kept: their items are the bodies above (shared bytes), plus up to 101 row stamps each


def encode(content: Any) -> bytes:
    """Exactly ``starlette.responses.JSONResponse.render``."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def page_body(bodies: list[bytes], first_id: str | None, last_id: str | None, has_more: bool) -> bytes:
    """``encode(routes.page(...))`` from already encoded task objects."""
    return b"".join(
        (
            b'{"object":"list","data":[',
            b",".join(bodies),
            b'],"first_id":',
            encode(first_id),
            b',"last_id":',
            encode(last_id),
            b',"has_more":',
            b"true" if has_more else b"false",
            b"}",
        )
    )


class _LRU:
    """A bounded mapping that forgets the least recently used entry first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, key: tuple) -> Any:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def keep(self, key: tuple, value: Any) -> Any:
        self._entries[key] = value
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return value


class Bodies:
    """An LRU of encoded task objects keyed by (task id, row version, base URL, signed links)."""

    def __init__(self, render: Callable[[Task, str | None], dict[str, Any]], signed: Callable[[], bool], size: int = SIZE):
        self._render = render
        self._signed = signed
        self._bodies = _LRU(size)
        self._pages = _LRU(PAGES)  # whole list pages (InlineReader.page)
        self._current = _LRU(size)  # GET task's bodies by the file's snapshot (InlineReader.snapshot)

    def known(self, task_id: str, version: int, base_url: str | None) -> bytes | None:
        """The body of this version of the task, if the memo holds it."""
        return self._bodies.get((task_id, version, base_url, self._signed()))

    def current(self, snapshot: tuple, task_id: str, owner: str, base_url: str | None) -> bytes | None:
        """The body last served for the owner's task while the file was at ``snapshot``."""
        return self._current.get((snapshot, task_id, owner, base_url, self._signed()))

    def keep_current(self, snapshot: tuple, task_id: str, owner: str, base_url: str | None, body: bytes) -> bytes:
        """``body`` as the owner's task's at ``snapshot``, taken before it was read."""
        return self._current.keep((snapshot, task_id, owner, base_url, self._signed()), body)

    def body(self, values: tuple, base_url: str | None) -> bytes:
        """The task object of this raw row; raises what reading or rendering it raises."""
        key = (values[ID], values[VERSION], base_url, self._signed())
        body = self._bodies.get(key)
        if body is None:
            body = self._bodies.keep(key, encode(self._render(Task.from_row(decoded(values)), base_url)))
        return body

    def listed(
        self, base_url: str | None
    ) -> tuple[Callable[[tuple], tuple[str, bytes | None] | None], Callable[[str, int], tuple[str, bytes | None] | None]]:
        """For ``InlineReader.page``: ``convert``, a raw row as (its id, its body), the body None
        when it cannot be rendered (logged; its id still counts as the page's cursor), or None
        when the row cannot be read at all (logged; read past), as ``TaskStore.list`` and
        ``render_each`` do; and ``known``, (id, body) from the memo or None."""
        signed = self._signed()

        def known(task_id: str, version: int) -> tuple[str, bytes | None] | None:
            body = self._bodies.get((task_id, version, base_url, signed))
            return None if body is None else (task_id, body)

        def convert(values: tuple) -> tuple[str, bytes | None] | None:
            hit = known(values[ID], values[VERSION])
            if hit is not None:
                return hit
            try:
                task = Task.from_row(decoded(values))
            except Exception:
                log.exception("task %s cannot be read; left out of the list", values[ID])
                return None
            try:
                body = encode(self._render(task, base_url))
            except Exception:
                log.exception("task %s cannot be rendered; left out of the list", task.id)
                return task.id, None
            return task.id, self._bodies.keep((task.id, values[VERSION], base_url, signed), body)

        return convert, known

    def pages(self, base_url: str | None) -> _Pages:
        """For ``InlineReader.page``: its memo of whole pages, for this base URL and signing."""
        return _Pages(self._pages, (base_url, self._signed()))


class _Pages:
    """The memo of whole pages as ``InlineReader.page`` sees it: keys scoped by (base URL, signed)."""

    def __init__(self, lru: _LRU, scope: tuple) -> None:
        self._lru, self._scope = lru, scope

    def get(self, key: tuple) -> Any:
        return self._lru.get((key, self._scope))

    def __setitem__(self, key: tuple, page: Any) -> None:
        self._lru.keep((key, self._scope), page)
