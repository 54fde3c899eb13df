"""Content with ``Range`` as RFC 9110 (section 14) reads it, for local files and for objects
proxied from S3.

``Range: bytes=a-b``, ``a-`` or ``-n`` gives a 206; a range that starts past the end a 416 in
the error shape (with ``Content-Range: bytes */size``); a header that cannot be parsed, or of
another unit, is ignored: the whole file, 200. Local files also serve several ranges at once
(``multipart/byteranges``); proxied objects serve the whole file for those.
"""

from __future__ import annotations

import re
from typing import Literal

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from starlette.datastructures import Headers

from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from starlette.types import Receive, Scope, Send

from ..storage import Stream

_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$", re.ASCII)
# A byte-range set as RFC 9110 writes it (ASCII digits only, for int() reads other scripts too).
_RANGE_SET = re.compile(r"^\s*bytes\s*=\s*[0-9]*\s*-\s*[0-9]*(\s*,\s*[0-9]*\s*-\s*[0-9]*)*\s*$", re.ASCII | re.IGNORECASE)


def range_not_satisfiable(size: int) -> JSONResponse:
    body = {
        "error": {
            "message": f"the Range starts past the end of the file ({size} bytes)",
            "type": "invalid_request_error",
            "param": "Range",
            "code": "range_not_satisfiable",
        }
    }
    return JSONResponse(body, status_code=416, headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})


class RangeFileResponse(FileResponse):
    """Starlette's ``FileResponse`` (sendfile, several ranges, ``If-Range``), except that a
    ``Range`` it cannot parse is ignored instead of a plain-text 400, and a 416 is in the error
    shape. Give it ``stat_result``: the size is needed before anything is sent."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        if not _RANGE_SET.match(http_range):
            return []  # not a byte-range set: ignored, the whole file
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:  # e.g. "bytes=5-3": an invalid range-spec, ignored too
            return []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        wanted, if_range = headers.get("range"), headers.get("if-range")
        if wanted is not None and self.stat_result is not None and (if_range is None or self._should_use_range(if_range)):
            try:
                self._parse_range_header(wanted, self.stat_result.st_size)
            except RangeNotSatisfiable:
                return await range_not_satisfiable(self.stat_result.st_size)(scope, receive, send)
        await super().__call__(scope, receive, send)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | Literal[False]:
    """(first, last) inclusive; None: serve it all; False: not satisfiable."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # several ranges or bad syntax: a server may ignore Range
    first_s, last_s = m.groups()
    if not first_s:  # the last n bytes
        n = int(last_s)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else False
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None  # "bytes=5-3" is an invalid range-spec: ignored, like bad syntax
    if first >= size:
        return False
    return first, min(int(last_s), size - 1) if last_s else size - 1


def stream_response(stream: Stream, request: Request, media_type: str, filename: str, headers: dict[str, str]) -> Response:
    base = {
        **headers,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'inline; filename="{filename}"',
    }
    if stream.etag:
        base["ETag"] = stream.etag
    wanted = parse_range(request.headers.get("range"), stream.size)
    if request.headers.get("if-range") and request.headers.get("if-range") != stream.etag:
        wanted = None  # the client's copy is of another version: send the whole file
    if wanted is False:
        return range_not_satisfiable(stream.size)
    if not wanted:
        if stream.size == 0:
            return Response(b"", media_type=media_type, headers=base)
        first, last, status = 0, stream.size - 1, 200
    else:
        (first, last), status = wanted, 206
        base["Content-Range"] = f"bytes {first}-{last}/{stream.size}"
    base["Content-Length"] = str(last - first + 1)
    body = stream.read(first, last) if request.method != "HEAD" else iter(())
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=base)
