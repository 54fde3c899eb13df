"""Decode ``data:`` URIs given in place of media URLs, with the same byte caps as fetches."""

from __future__ import annotations

import base64
import binascii

from ..errors import MediaError

MiB = 1024 * 1024


def format_size(n: int) -> str:
    """``31457280`` -> ``"30 MiB"``: byte caps as people write them, never rounded (a rounded
    cap would tell a client that a file of exactly that size is too large)."""
    if n and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


def decode_data_uri(uri: str, *, param: str, max_bytes: int) -> tuple[str, bytes]:
    """``data:[<mediatype>][;base64],<data>`` -> (mime type, bytes).

    Only base64 payloads are accepted (media is binary). The decoded size is computed from the
    encoded length and refused before anything is decoded, so a huge URI costs no memory beyond
    the string the client already sent. Decoding is strict: no whitespace, no URL-safe alphabet,
    correct padding. Messages never repeat the URI (it may be megabytes, or private).
    """
    if uri[:5].lower() != "data:":
        raise MediaError(f"{param} is not a data: URI", param=param, code="invalid_data_uri")
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise MediaError(f"{param} is not a valid data: URI: it has no ',' before the data", param=param, code="invalid_data_uri")
    mime, *params = header.split(";")
    if not params or params[-1].strip().lower() != "base64":
        message = f"{param}: a data: URI must be base64-encoded (data:<type>;base64,<data>)"
        raise MediaError(message, param=param, code="invalid_data_uri")
    mime = mime.strip().lower() or "text/plain"
    # Every 4 characters make 3 bytes, less the '=' padding: the size, known without decoding.
    padding = len(payload) - len(payload.rstrip("=")) if payload.endswith("=") else 0
    size = len(payload) // 4 * 3 - min(padding, 2)
    if size > max_bytes:
        raise MediaError(f"{param} is larger than {format_size(max_bytes)}", param=param, code="media_too_large")
    try:
        data = base64.b64decode(payload.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        message = f"{param}: the data: URI's payload is not valid base64"
        raise MediaError(message, param=param, code="invalid_data_uri") from None
    return mime, data
