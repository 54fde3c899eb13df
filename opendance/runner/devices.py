"""Device processes for ``opendance worker``: one spawned ``worker_main`` per device, driven
from asyncio.

The same worker process the local runner uses owns the engines (built once per spec and kept),
so a crash, OOM or hang in torch takes down one device process, never the Temporal worker
around it: the activity sees the process die, reports it, and a fresh process takes its place.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from typing import Any

from ..config import Settings
from .messages import Ready, Shutdown
from .worker import worker_main

log = logging.getLogger("opendance.devices")

DIED = None  # the event a device process leaves when it exits


class DeviceProcess:
    """One device's worker process; ``events`` receives its messages, then ``DIED``."""

    def __init__(self, device: str, settings: Settings) -> None:
        self.device = device
        self.settings = settings
        self.process: Any = None
        self.events: asyncio.Queue = asyncio.Queue()

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.conn = parent
        self.events = asyncio.Queue()
        self.process = ctx.Process(
            target=worker_main, args=(child, self.device, self.settings), name=f"opendance-device-{self.device}", daemon=True
        )
        self.process.start()
        child.close()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, args=(parent, self.events, loop), name=f"device-{self.device}", daemon=True).start()
        log.info("device process for %s started (pid %s)", self.device, self.process.pid)

    @staticmethod
    def _read(conn, events: asyncio.Queue, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = DIED
            try:
                loop.call_soon_threadsafe(events.put_nowait, msg)
            except RuntimeError:  # the loop is closed: the worker is exiting
                return
            if msg is DIED:
                return

    async def wait_ready(self, timeout: float = 300.0) -> None:
        msg = await asyncio.wait_for(self.events.get(), timeout)
        if not isinstance(msg, Ready):
            raise RuntimeError(f"device process for {self.device} did not start (got {msg!r})")

    def send(self, msg: Any) -> bool:
        try:
            self.conn.send(msg)
            return True
        except OSError:
            return False  # it is dying; its DIED event follows

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode if self.process is not None else None

    async def restart(self) -> None:
        """After it died (or was killed): reap it and start a fresh one."""
        await asyncio.to_thread(self.process.join, 5.0)
        log.error("device process for %s exited (code %s); starting a new one", self.device, self.process.exitcode)
        self.start()
        await self.wait_ready()

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()

    def close(self, timeout: float = 5.0) -> None:
        if self.process is None:
            return
        self.send(Shutdown())
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)


class DevicePool:
    """The free devices of this worker. A task takes one for its whole run."""

    def __init__(self, devices: list[str], settings: Settings) -> None:
        self.all = [DeviceProcess(d, settings) for d in devices]
        self.free: asyncio.Queue[DeviceProcess] = asyncio.Queue()

    async def start(self) -> None:
        for d in self.all:
            d.start()
        await asyncio.gather(*(d.wait_ready() for d in self.all))
        for d in self.all:
            self.free.put_nowait(d)

    def release(self, device: DeviceProcess) -> None:
        self.free.put_nowait(device)

    def close(self) -> None:
        for d in self.all:
            d.close()
