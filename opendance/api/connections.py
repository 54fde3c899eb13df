"""The connection rules of ``opendance serve``: uvicorn's h11 protocol with a head deadline, a
body deadline and a connection cap.

uvicorn (0.55) closes a kept-alive connection after ``timeout_keep_alive`` s of silence, but
bounds nothing else before a request exists: a connection that sends nothing after connecting,
or sends its headers one byte every few seconds (slowloris), is held for ever, and every new
connection is accepted. (``limit_concurrency`` does not help: it answers *requests* 503, and a
trickling client never completes one.) ``protocol_class`` adds:

- a head deadline: the request line and headers must be complete within ``header_timeout`` s of
  connecting, or of the end of the previous response on a kept-alive connection. Else the
  connection is closed, with a 408 in the one error shape when part of a request had come;
- a body deadline: a request's body must be complete within ``body_timeout`` s of the end of its
  head. A client that sends its headers and then trickles the body would otherwise hold the
  connection, its request and the body read so far for ever. Else a 408 in the one error shape
  (when no response has begun) and the connection is closed; the request sees a disconnect;
- a connection cap: a connection beyond ``max_connections`` open ones is answered 503
  ``too_many_connections`` with ``Retry-After`` and closed at once.

h11's own limit stays: a request head over 16 KiB is a 400.
"""

from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("opendance.connections")


def _raw_response(status: int, reason: str, code: str, message: str, error_type: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}", "connection: close"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class LimitedH11Protocol(H11Protocol):
    """``H11Protocol`` plus the head deadline and the connection cap; configured by subclassing
    (``protocol_class``), because uvicorn builds one protocol per connection from a class."""

    header_timeout: float = 10.0
    body_timeout: float = 120.0
    max_connections: int = 0  # 0 = no cap

    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections and len(self.connections) > self.max_connections:
            message = f"the server has too many open connections (at most {self.max_connections}); try again shortly"
            log.debug("refused a connection from %s: %d open", self.client, len(self.connections) - 1)
            transport.write(_raw_response(503, "Service Unavailable", "too_many_connections", message, "server_error", 1))
            transport.close()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request head is complete (or the connection is done)
            self._cancel_head_timer()
        if self.conn.their_state is h11.SEND_BODY:  # a body is on its way: one deadline for all of it
            if self._body_timer is None and self.body_timeout > 0:
                self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)
        else:
            self._cancel_body_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # the next request on this kept-alive connection has its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if self.header_timeout > 0:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why it is closed
            message = f"the request line and headers did not arrive within {self.header_timeout:g} s"
            log.debug("closed a connection from %s: request head incomplete after %g s", self.client, self.header_timeout)
            self.transport.write(_raw_response(408, "Request Timeout", "request_timeout", message, "invalid_request_error"))
        self.transport.close()

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        log.debug("closed a connection from %s: request body incomplete after %g s", self.client, self.body_timeout)
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            message = f"the request body did not arrive within {self.body_timeout:g} s (body_timeout)"
            self.transport.write(_raw_response(408, "Request Timeout", "request_timeout", message, "invalid_request_error"))
        if cycle is not None and not cycle.response_complete:
            # The request reads a disconnect now, and whatever it answers is dropped (the 408 went).
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def protocol_class(header_timeout: float, max_connections: int, *, body_timeout: float = 120.0) -> type[LimitedH11Protocol]:
    """The protocol class to give uvicorn as ``http=``."""
    limits = {"header_timeout": header_timeout, "body_timeout": body_timeout, "max_connections": max_connections}
    return type("OpenDanceH11Protocol", (LimitedH11Protocol,), limits)
