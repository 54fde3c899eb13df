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
import weakref

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

log = logging.getLogger("opendance.connections")


def _raw_response(status: int, reason: str, code: str, message: str, error_type: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}", "connection: close"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class LimitedH11Protocol(H11Protocol):
    """``H11Protocol`` plus the head and body deadlines and the connection cap; configured by
    subclassing (``protocol_class``), because uvicorn builds one protocol per connection from a
    class.

    A deadline is a time on the loop's clock kept on the connection (0: none running), not a
    timer: arming and cancelling a ``TimerHandle`` twice per request cost more than the rest of
    this class, and a kept-alive connection arms one per request. One ``_Sweep`` per server and
    loop closes the connections past theirs, ``_tick`` seconds late at most (a tenth of the
    shorter timeout, within 0.05-1 s)."""

    header_timeout: float = 10.0
    body_timeout: float = 120.0
    max_connections: int = 0  # 0 = no cap

    _head_deadline: float = 0.0
    _body_deadline: float = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections and len(self.connections) > self.max_connections:
            message = f"the server has too many open connections (at most {self.max_connections}); try again shortly"
            log.debug("refused a connection from %s: %d open", self.client, len(self.connections) - 1)
            transport.write(_raw_response(503, "Service Unavailable", "too_many_connections", message, "server_error", 1))
            transport.close()
            return
        self._arm_head_deadline()
        _Sweep.watch(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is not h11.IDLE:  # the request head is complete (or the connection is done)
            self._head_deadline = 0.0
        if state is h11.SEND_BODY:  # a body is on its way: one deadline for all of it
            if not self._body_deadline and self.body_timeout > 0:
                self._body_deadline = self.loop.time() + self.body_timeout
        else:
            self._body_deadline = 0.0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()  # the next request on this kept-alive connection has its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_deadline = self._body_deadline = 0.0
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self.loop.time() + self.header_timeout if self.header_timeout > 0 else 0.0

    def _check_deadlines(self, now: float) -> None:
        """Called by the sweep: close the connection if a deadline has passed."""
        if self._head_deadline and now >= self._head_deadline:
            self._head_deadline = 0.0
            self._head_timed_out()
        if self._body_deadline and now >= self._body_deadline:
            self._body_deadline = 0.0
            self._body_timed_out()

    def _head_timed_out(self) -> None:
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why it is closed
            message = f"the request line and headers did not arrive within {self.header_timeout:g} s"
            log.debug("closed a connection from %s: request head incomplete after %g s", self.client, self.header_timeout)
            self.transport.write(_raw_response(408, "Request Timeout", "request_timeout", message, "invalid_request_error"))
        self.transport.close()

    def _body_timed_out(self) -> None:
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


class _Sweep:
    """The one timer of a server's connections on one loop: every ``every`` seconds it checks
    each open connection's deadlines, and it stops when no connection is left (the next
    connection starts it again)."""

    _running: weakref.WeakKeyDictionary[ServerState, _Sweep] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set, every: float) -> None:
        self.loop = loop
        self.connections = connections
        self.every = every
        self.handle: asyncio.TimerHandle | None = loop.call_later(every, self._tick)

    @classmethod
    def watch(cls, protocol: LimitedH11Protocol) -> None:
        """Make sure a sweep runs for ``protocol``'s server on its loop."""
        sweep = cls._running.get(protocol.server_state)
        if sweep is None or sweep.handle is None or sweep.loop is not protocol.loop:
            timeouts = [t for t in (protocol.header_timeout, protocol.body_timeout) if t > 0]
            if not timeouts:
                return
            every = min(1.0, max(0.05, min(timeouts) / 10))
            cls._running[protocol.server_state] = cls(protocol.loop, protocol.connections, every)

    def _tick(self) -> None:
        now = self.loop.time()
        for connection in tuple(self.connections):
            if isinstance(connection, LimitedH11Protocol):
                try:
                    connection._check_deadlines(now)
                except Exception:  # one broken connection must not stop the deadlines of the others
                    log.exception("checking the deadlines of a connection from %s failed", connection.client)
        self.handle = self.loop.call_later(self.every, self._tick) if self.connections else None


def protocol_class(header_timeout: float, max_connections: int, *, body_timeout: float = 120.0) -> type[LimitedH11Protocol]:
    """The protocol class to give uvicorn as ``http=``."""
    limits = {"header_timeout": header_timeout, "body_timeout": body_timeout, "max_connections": max_connections}
    return type("OpenDanceH11Protocol", (LimitedH11Protocol,), limits)
