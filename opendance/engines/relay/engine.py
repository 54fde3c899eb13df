"""``RelayEngine``: the relay as an ordinary engine (``generate`` in, frames out), for a relay
run in a worker process or called directly. Servers run relays on the upstream executor
(``runner/executors/upstream.py``) instead, as asyncio tasks; both run the same ``RelayJob``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx

from ...errors import Cancelled
from ..base import Engine, Inputs, Job, Output, StepContext
from ..options import RelayOptions
from .channels import ChannelBoard
from .fit import fit_output
from .job import RelayContext, RelayJob

USER_AGENT = "opendance-relay"


def channel_keys(opts: RelayOptions) -> dict[str, str | None]:
    """Each channel's API key, from the environment variable it names."""
    keys: dict[str, str | None] = {}
    for channel in opts.channels:
        key = None
        if channel.api_key_env:
            key = os.environ.get(channel.api_key_env)
            if not key:
                raise ValueError(f"api_key_env = {channel.api_key_env!r}: that environment variable is not set")
        keys[channel.id] = key
    return keys


class RelayEngine(Engine):
    name = "relay"

    def __init__(self, spec: dict[str, Any], device: str = "cpu") -> None:
        super().__init__(spec, device)
        self.opts = RelayOptions(**{"engine": "relay", **spec})
        self.keys = channel_keys(self.opts)
        self.board = ChannelBoard()

    def generate(self, job: Job, inputs: Inputs, ctx: StepContext) -> Output:
        return asyncio.run(self._generate(job, inputs, ctx))

    async def _generate(self, job: Job, inputs: Inputs, ctx: StepContext) -> Output:
        async with httpx.AsyncClient(headers={"User-Agent": USER_AGENT}) as http:
            relay = RelayJob(job, self.opts, self.keys, http, self.board)
            with tempfile.TemporaryDirectory(prefix="relay-") as tmp:
                path = await relay.run(inputs, _StepRelayContext(ctx), Path(tmp))
                return await asyncio.to_thread(fit_output, job, path)


class _StepRelayContext(RelayContext):
    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx

    def cancelled(self) -> bool:
        try:
            self.ctx.check_cancelled()
        except Cancelled:
            return True
        return False

    async def wait(self, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            if self.cancelled():
                return True
            await asyncio.sleep(min(0.2, left))
        return self.cancelled()

    def progress(self, percent: int) -> None:
        self.ctx.progress(percent, 100)

    async def load_state(self) -> dict[str, Any] | None:
        saved = self.ctx.load_checkpoint()
        return saved[0] if saved is not None and isinstance(saved[0], dict) else None

    async def save_state(self, state: dict[str, Any]) -> None:
        self.ctx.save_checkpoint(state, 0)
