"""Task objects as response bytes, memoised by the row version they were rendered from.

A task object (``TaskService.render``) is a function of the task's row, the base URL of the
request (links follow it) and whether links are signed (once a key exists). Every UPDATE of a
row bumps its ``version`` (a trigger in the database, migration 0005, whoever writes), and a
task id is never reused, so ``(id, version, base_url, signed)`` is a complete key: nothing needs
invalidating. The hot reads of ``store.inline`` ask for ids and versions first (two small
columns) and read whole only the rows the memo does not hold. A hit skips reading the row, its
JSON decoding, the ``Task``, the rendering (a signed link per completed task) and the JSON
encoding; a list page is then the cached bodies joined, as the floor app joins stored ones.

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


class Bodies:
    """An LRU of encoded task objects keyed by (task id, row version, base URL, signed links)."""

    def __init__(self, render: Callable[[Task, str | None], dict[str, Any]], signed: Callable[[], bool], size: int = SIZE):
        self._render = render
        self._signed = signed
        self._size = size
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._pages: OrderedDict[tuple, Any] = OrderedDict()  # whole list pages (InlineReader.page)

    def _hit(self, key: tuple) -> bytes | None:
        body = self._cache.get(key)
        if body is not None:
            self._cache.move_to_end(key)
        return body

    def _keep(self, key: tuple, body: bytes) -> bytes:
        self._cache[key] = body
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return body

    def known(self, task_id: str, version: int, base_url: str | None) -> bytes | None:
        """The body of this version of the task, if the memo holds it."""
        return self._hit((task_id, version, base_url, self._signed()))

    def body(self, values: tuple, base_url: str | None) -> bytes:
        """The task object of this raw row; raises what reading or rendering it raises."""
        key = (values[ID], values[VERSION], base_url, self._signed())
        body = self._hit(key)
        if body is None:
            body = self._keep(key, encode(self._render(Task.from_row(decoded(values)), base_url)))
        return body

    def listed(
        self, base_url: str | None
    ) -> tuple[Callable[[tuple], tuple[str, bytes | None] | None], Callable[[str, int], tuple[str, bytes | None] | None]]:
        """For ``InlineReader.page``: ``convert``, a raw row as (its id, its body), the body None
        when it cannot be rendered (logged; its id still counts as the page's cursor), or None
        when the row cannot be read at all (logged; read past), as ``TaskStore.list`` and
        ``render_each`` do; and ``known``, (id, body) from the memo or None."""
        signed = self._signed()

        def convert(values: tuple) -> tuple[str, bytes | None] | None:
            key = (values[ID], values[VERSION], base_url, signed)
            body = self._hit(key)
            if body is not None:
                return values[ID], body
            try:
                task = Task.from_row(decoded(values))
            except Exception:
                log.exception("task %s cannot be read; left out of the list", values[ID])
                return None
            try:
                return task.id, self._keep(key, encode(self._render(task, base_url)))
            except Exception:
                log.exception("task %s cannot be rendered; left out of the list", task.id)
                return task.id, None

        def known(task_id: str, version: int) -> tuple[str, bytes | None] | None:
            body = self._hit((task_id, version, base_url, signed))
            return None if body is None else (task_id, body)

        return convert, known

    def pages(self, base_url: str | None) -> _Pages:
        """For ``InlineReader.page``: its memo of whole pages, for this base URL and signing."""
        return _Pages(self._pages, (base_url, self._signed()), PAGES)


class _Pages:
    """A view of the shared LRU of pages whose keys all carry ``scope`` (base URL, signed)."""

    def __init__(self, cache: OrderedDict[tuple, Any], scope: tuple, size: int) -> None:
        self._cache, self._scope, self._size = cache, scope, size

    def get(self, key: tuple) -> Any:
        key = (key, self._scope)
        page = self._cache.get(key)
        if page is not None:
            self._cache.move_to_end(key)
        return page

    def __setitem__(self, key: tuple, page: Any) -> None:
        self._cache[key, self._scope] = page
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
