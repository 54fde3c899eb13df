"""One task on an upstream, as asyncio code: create (with failover), follow, download.

The create goes to the channels in ``ChannelBoard.order``; a network error, a timeout, 429 or a
5xx answer moves on to the next one (up to ``CREATE_ROUNDS`` rounds through them, with
backoff); any other refusal is the task's error. It carries ``Idempotency-Key: <task id>``.
The upstream task's id and its channel are saved as the task's checkpoint before anything
else, so a run that starts again (a restart, a retry elsewhere) follows the same upstream task
on the same channel and never orders the video twice. Polls that fail as outages are tried
again for ``poll_outage`` seconds; the finished video is streamed to a file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ...errors import Cancelled, EngineError
from ..base import Inputs, Job
from ..options import ChannelOptions, RelayOptions
from .ark import ArkProtocol
from .channels import ChannelBoard, ChannelClient, UpstreamDown
from .legacy import LegacyProtocol
from .openai import OpenAIProtocol
from .protocol import UpstreamProtocol, read_answer

log = logging.getLogger("opendance.engines.relay")

PROTOCOLS: dict[str, type[UpstreamProtocol]] = {p.name: p for p in (LegacyProtocol, OpenAIProtocol, ArkProtocol)}
CREATE_ROUNDS = 3  # passes through the channels before a create gives up


class RelayContext(ABC):
    """What a relay job asks of whoever runs it."""

    @abstractmethod
    def cancelled(self) -> bool: ...

    @abstractmethod
    async def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less when the task is cancelled meanwhile (then True)."""

    @abstractmethod
    def progress(self, percent: int) -> None: ...

    @abstractmethod
    async def load_state(self) -> dict[str, Any] | None: ...

    @abstractmethod
    async def save_state(self, state: dict[str, Any]) -> None: ...


class RelayJob:
    def __init__(
        self, job: Job, opts: RelayOptions, keys: dict[str, str | None], http: httpx.AsyncClient, board: ChannelBoard
    ) -> None:
        self.job = job
        self.opts = opts
        self.http = http
        self.board = board
        self.clients = {c.id: ChannelClient(c, keys.get(c.id), http, board, opts.request_timeout) for c in opts.channels}

    def protocol(self, channel: ChannelOptions) -> UpstreamProtocol:
        return PROTOCOLS[channel.protocol](channel.upstream_model)

    async def run(self, inputs: Inputs, ctx: RelayContext, folder: Path) -> Path:
        """The upstream's finished video, downloaded into ``folder``."""
        saved = await ctx.load_state()
        if saved is not None and isinstance(saved.get("upstream_id"), str):
            channel, upstream = self._channel_of(saved), saved["upstream_id"]
            log.info("task %s: following upstream task %s on %s again", self.job.task_id, upstream, channel.id)
        else:
            for channel in self.opts.channels:
                self.protocol(channel).check(self.job)
            channel, upstream = await self._create(inputs, ctx)
            await ctx.save_state({"upstream_id": upstream, "channel": channel.id})
            log.info("task %s: upstream task %s created on %s", self.job.task_id, upstream, channel.id)
        link = await self._wait(channel, upstream, ctx)
        path = folder / "upstream.mp4"
        await self._download(channel, link, path, ctx)
        return path

    def _channel_of(self, saved: dict[str, Any]) -> ChannelOptions:
        name = saved.get("channel")
        for channel in self.opts.channels:
            if channel.id == name or (name is None and len(self.opts.channels) == 1):
                return channel
        raise EngineError(
            f"upstream task {saved['upstream_id']} was made on channel {name!r}, "
            "which the models file no longer lists; it cannot be followed"
        )

    # -- create --------------------------------------------------------------------------------

    async def _create(self, inputs: Inputs, ctx: RelayContext) -> tuple[ChannelOptions, str]:
        last: Exception | None = None
        for round_ in range(CREATE_ROUNDS):
            if round_ and await ctx.wait(0.5 * 2 ** (round_ - 1)):
                raise Cancelled()
            for channel in self.board.order(self.opts.channels):
                if ctx.cancelled():
                    raise Cancelled()
                client = self.clients[channel.id]
                request = self.protocol(channel).create(self.job, inputs)
                self.board.claim(channel.id)
                try:
                    r = await client.send(request, "create", headers={"Idempotency-Key": self.job.task_id})
                except UpstreamDown as exc:
                    last = exc
                    log.warning("task %s: create on %s failed (%s); trying the next channel", self.job.task_id, channel.id, exc)
                    continue
                if r.status_code == 429 or r.status_code >= 500:
                    last = EngineError(f"the upstream at {client.base_url} answered HTTP {r.status_code} to the create")
                    log.warning(
                        "task %s: create on %s answered %d; trying the next channel", self.job.task_id, channel.id, r.status_code
                    )
                    continue
                upstream = self.protocol(channel).task_id(answer := read_answer(r, "create"))
                if upstream is None:
                    raise EngineError(f"the upstream's create answer has no task id: {str(answer)[:200]}")
                return channel, upstream
        names = ", ".join(c.id for c in self.opts.channels)
        raise EngineError(f"no upstream channel took the task ({names}); last: {last}", code="upstream_unavailable")

    # -- follow --------------------------------------------------------------------------------

    async def _wait(self, channel: ChannelOptions, upstream: str, ctx: RelayContext) -> str:
        """Poll until the upstream task is finished (its video's URL) or failed (an error)."""
        client, protocol = self.clients[channel.id], self.protocol(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.deadline
        outage_since: float | None = None
        while True:
            if ctx.cancelled():
                await self._cancel(client, protocol, upstream)
                raise Cancelled()
            try:
                r = await client.send(protocol.status(upstream), "status")
                if r.status_code == 429 or r.status_code >= 500:
                    raise UpstreamDown(f"the upstream at {client.base_url} answered HTTP {r.status_code}")
            except UpstreamDown as exc:
                outage_since = outage_since or loop.time()
                if loop.time() - outage_since > self.opts.poll_outage:
                    raise EngineError(
                        f"upstream task {upstream} on {channel.id}: no answer for {self.opts.poll_outage:g} s ({exc})",
                        code="upstream_unavailable",
                    ) from None
                await ctx.wait(min(self.opts.poll_interval * 2, 10.0))
                continue
            outage_since = None
            answer = read_answer(r, "status")
            state = protocol.state(answer)
            if state.progress is not None:
                ctx.progress(state.progress)
            if state.done:
                url = protocol.video_link(upstream, answer, client.base_url)
                if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                    raise EngineError(f"upstream task {upstream} is completed but has no video_url")
                return url
            if state.failed:
                raise EngineError(f"upstream task {upstream} {state.status}: {state.error or 'no reason given'}")
            if loop.time() > deadline:
                await self._cancel(client, protocol, upstream)
                raise EngineError(f"upstream task {upstream} did not finish in {self.opts.deadline:.0f} s")
            await ctx.wait(self.opts.poll_interval)

    async def _cancel(self, client: ChannelClient, protocol: UpstreamProtocol, upstream: str) -> None:
        """Best effort: the task ends here whatever the upstream answers."""
        try:
            await client.send(protocol.cancel(upstream), "cancel")
        except UpstreamDown as exc:
            log.warning("cancelling upstream task %s failed: %s", upstream, exc)

    # -- bring it home -------------------------------------------------------------------------

    async def _download(self, channel: ChannelOptions, url: str, path: Path, ctx: RelayContext) -> None:
        client = self.clients[channel.id]
        same_host = urlsplit(url).netloc == urlsplit(client.base_url).netloc
        # The key goes to the upstream itself only, not to a storage host its link points at
        # (httpx drops it on a redirect to another origin too).
        headers = client.headers if same_host else {}
        t0 = time.perf_counter()
        try:
            async with self.http.stream(
                "GET", url, headers=headers, follow_redirects=True, timeout=httpx.Timeout(self.opts.request_timeout)
            ) as r:
                if r.status_code != 200:
                    raise EngineError(f"downloading the upstream video failed: HTTP {r.status_code}")
                size = 0
                with open(path, "wb") as f:  # noqa: ASYNC230 (a local file; 1 MiB writes between network reads)
                    async for chunk in r.aiter_bytes(1 << 20):
                        size += len(chunk)
                        if size > self.opts.max_video_bytes:
                            raise EngineError(f"the upstream video is larger than {self.opts.max_video_bytes} bytes")
                        f.write(chunk)
                        if ctx.cancelled():
                            raise Cancelled()
        except httpx.HTTPError as exc:
            if same_host:
                self.board.record(client.name, "download", time.perf_counter() - t0, str(exc))
            raise EngineError(f"downloading the upstream video failed: {exc}") from None
        if same_host:
            self.board.record(client.name, "download", time.perf_counter() - t0, None)
