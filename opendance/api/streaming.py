"""Serve a ``storage.Stream`` (an object proxied from S3) with single-range support, as
``FileResponse`` does for local files: ``Range: bytes=a-b``, ``a-`` or ``-n`` gives a 206,
a range past the end a 416, anything else (several ranges, bad syntax) the whole file."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from ..storage import Stream

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
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
    last = min(int(last_s), size - 1) if last_s else size - 1
    if first >= size or last < first:
        return False
    return first, last


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
        return Response(status_code=416, headers={**base, "Content-Range": f"bytes */{stream.size}"})
    if wanted is None:
        if stream.size == 0:
            return Response(b"", media_type=media_type, headers=base)
        first, last, status = 0, stream.size - 1, 200
    else:
        (first, last), status = wanted, 206
        base["Content-Range"] = f"bytes {first}-{last}/{stream.size}"
    base["Content-Length"] = str(last - first + 1)
    body = stream.read(first, last) if request.method != "HEAD" else iter(())
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=base)
