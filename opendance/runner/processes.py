"""The one worker-process spawner: a ``spawn``ed (never forked) child driven from asyncio.

A child runs ``target(conn, *args)`` and talks to its parent over one pipe with the messages in
``messages.py``. A reader thread forwards what the child sends into ``events`` (an asyncio
queue of the loop that started it), then ``DIED`` once the pipe closes: the child exited,
crashed or was killed. Every executor that runs engines in processes (the cpu slots, the ranks
of a device group) spawns them through this class, in the API process (local runner) and in
``opendance worker`` (Temporal) alike.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections.abc import Callable
from typing import Any

from .messages import Shutdown

log = logging.getLogger("opendance.runner")

DIED = None  # the last event of every process: its pipe closed


class WorkerProcess:
    def __init__(
        self,
        name: str,
        target: Callable[..., None],
        args: tuple[Any, ...],
        *,
        events: asyncio.Queue | None = None,
        tag: Any = None,
    ) -> None:
        """``events``: a queue to share with other processes; with a ``tag``, each event is
        put as ``(tag, event)`` (the ranks of a device group share one queue)."""
        self.name = name
        self.target = target
        self.args = args
        self.process: Any = None
        self.conn: Any = None
        self.events: asyncio.Queue = events if events is not None else asyncio.Queue()
        self.tag = tag

    def start(self) -> WorkerProcess:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.conn = parent
        self.process = ctx.Process(target=self.target, args=(child, *self.args), name=self.name, daemon=True)
        self.process.start()
        child.close()
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._read, args=(parent, self.events, loop, self.tag), name=f"read-{self.name}", daemon=True
        ).start()
        log.info("%s started (pid %s)", self.name, self.process.pid)
        return self

    @staticmethod
    def _read(conn: Any, events: asyncio.Queue, loop: asyncio.AbstractEventLoop, tag: Any) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = DIED
            try:
                loop.call_soon_threadsafe(events.put_nowait, msg if tag is None else (tag, msg))
            except RuntimeError:  # the loop is closed: the server is exiting
                return
            if msg is DIED:
                return

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode if self.process is not None else None

    def send(self, msg: Any) -> bool:
        try:
            self.conn.send(msg)
            return True
        except (OSError, ValueError):
            return False  # it is dying; its DIED event follows

    def kill(self) -> None:
        if self.alive:
            self.process.kill()

    def join(self, timeout: float) -> None:
        """Blocking: call it through ``asyncio.to_thread`` from the event loop."""
        if self.process is not None:
            self.process.join(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Ask it to exit, wait ``timeout`` seconds, then kill it (blocking)."""
        if self.process is None:
            return
        self.send(Shutdown())
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
