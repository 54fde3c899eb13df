"""Upstream channels: which one a create goes to, and what each one's health is.

``ChannelBoard`` keeps one health record per channel name (a circuit breaker) for the whole
process, shared by every task and model. A request that fails as an outage does (a network
error, a timeout, HTTP 429 or 5xx) counts against its channel; ``failures`` of them in a row
open the breaker: the channel is skipped by creates for ``cooldown`` seconds, then half-open,
when one create at a time may try it; a success closes it, a failure opens it again.

``order`` is the order a create tries a model's channels in: those not cooling down, by
priority (lower first), then fewest failures in a row, then at random in proportion to
``weight``; when every one is cooling down, the one whose cool-down ends first (a task is
never failed only because breakers are open).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ...errors import EngineError
from ..options import ChannelOptions
from .protocol import Request

# (channel, operation, seconds, failed): every request's outcome, for metrics.
RequestObserver = Callable[[str, str, float, bool], None]


class UpstreamDown(EngineError):
    """The channel did not answer usefully: a network error, a timeout, HTTP 429 or 5xx."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="upstream_unavailable")


@dataclass
class ChannelHealth:
    in_a_row: int = 0  # failures since the last success
    opened_at: float | None = None  # the breaker opened (or opened again) then
    trial: bool = False  # a half-open create is under way
    requests: int = 0
    failures: int = 0
    last_error: str | None = None


class ChannelBoard:
    def __init__(
        self,
        failures: int = 3,
        cooldown: float = 30.0,
        observe: RequestObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.observe = observe
        self.clock = clock
        self._health: dict[str, ChannelHealth] = {}

    def health(self, name: str) -> ChannelHealth:
        return self._health.setdefault(name, ChannelHealth())

    def state(self, name: str) -> str:
        h = self.health(name)
        if h.opened_at is None:
            return "closed"
        return "open" if self.clock() - h.opened_at < self.cooldown else "half-open"

    def _usable(self, name: str) -> bool:
        state = self.state(name)
        return state == "closed" or (state == "half-open" and not self.health(name).trial)

    def order(self, channels: list[ChannelOptions], rng: random.Random | None = None) -> list[ChannelOptions]:
        draw = (rng or random).random
        usable = [c for c in channels if self._usable(c.id)]
        if not usable:
            return [min(channels, key=lambda c: self.health(c.id).opened_at or 0.0)]

        def key(c: ChannelOptions) -> tuple[int, int, float]:
            # Efraimidis-Spirakis: sorting by -u**(1/w) is a weighted random order.
            return c.priority, self.health(c.id).in_a_row, -(draw() ** (1.0 / c.weight))

        return sorted(usable, key=key)

    def claim(self, name: str) -> None:
        """A create is about to try ``name``: a half-open channel takes one at a time."""
        if self.state(name) == "half-open":
            self.health(name).trial = True

    def record(self, name: str, op: str, seconds: float, error: str | None) -> None:
        h = self.health(name)
        h.requests += 1
        h.trial = False
        if error is None:
            h.in_a_row, h.opened_at = 0, None
        else:
            h.failures += 1
            h.in_a_row += 1
            h.last_error = error
            half_open = self.state(name) == "half-open"
            if h.in_a_row >= self.threshold or half_open:
                h.opened_at = self.clock()
        if self.observe is not None:
            self.observe(name, op, seconds, error is not None)

    def describe(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, h in sorted(self._health.items()):
            state = self.state(name)
            left = max(0.0, self.cooldown - (self.clock() - h.opened_at)) if state == "open" and h.opened_at is not None else 0.0
            out[name] = {
                "state": state,
                "failures_in_a_row": h.in_a_row,
                "requests": h.requests,
                "failures": h.failures,
                "cooldown_left_s": round(left, 1),
                "last_error": h.last_error,
            }
        return out


class ChannelClient:
    """One channel's requests, through the shared HTTP client, with its key and its record."""

    def __init__(
        self, channel: ChannelOptions, key: str | None, http: httpx.AsyncClient, board: ChannelBoard, timeout: float
    ) -> None:
        self.channel = channel
        self.name = channel.id
        self.base_url = channel.base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = http
        self.board = board
        self.timeout = httpx.Timeout(timeout)

    async def send(self, request: Request, op: str, headers: dict[str, str] | None = None) -> httpx.Response:
        """The answer, whatever its status; ``UpstreamDown`` for a network error or a timeout.
        429 and 5xx answers are returned, and recorded as failures of the channel."""
        t0 = time.perf_counter()
        try:
            r = await self.http.request(
                request.method,
                self.base_url + request.path,
                headers={**self.headers, **(headers or {})},
                timeout=self.timeout,
                **request.kwargs,
            )
        except httpx.HTTPError as exc:
            message = f"the upstream at {self.base_url} cannot be reached: {type(exc).__name__}: {exc}".rstrip(": ")
            self.board.record(self.name, op, time.perf_counter() - t0, message)
            raise UpstreamDown(message) from None
        outage = r.status_code == 429 or r.status_code >= 500
        self.board.record(self.name, op, time.perf_counter() - t0, f"HTTP {r.status_code}" if outage else None)
        return r
