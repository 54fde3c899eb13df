"""What media intake may use on one server, and the bounds on it.

``MediaWork`` holds, for the API process:

- a thread pool for media work (decoding, probing, base64), apart from asyncio's default pool
  that store and storage calls run in: however much media arrives, another key's list or get
  still finds a thread;
- the decode budget: every decode first takes the memory it will need, counted from the file's
  header before a pixel is decoded (``images.decode_cost``, ``probe.decode_cost``); decodes that
  do not fit wait;
- the budget of media bytes in flight: every byte a create fetches (or takes from a ``data:``
  URI) is taken from it before it is written to the spool, and given back when the create ends
  (stored or refused); creates that do not fit wait;
- the spool directory: media is written there while it is fetched, never held in memory, one
  folder per create, removed when the create ends.

A wait for either budget is brief (``media_wait`` seconds in all per create or decode); then
the create is refused with a 503 and ``Retry-After``. A holder alone may always take what it
needs, so an item larger than a budget still goes through on a quiet server. The per-key cap on
stored input bytes is checked here too, as bytes are taken: the key's stored bytes (counted by
the caller, before the create) plus everything its creates under way hold. Nothing here
imports FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import os
import shutil
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import RateLimited, ServiceUnavailable
from .datauri import format_size

T = TypeVar("T")
BUSY_RETRY_AFTER = 5  # seconds: budgets free up as soon as the creates ahead finish their media
# Allocations from this size on get their own mapping, handed back to the system when freed.
LARGE_ALLOCATION = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_large_allocations() -> bool:
    """Make freed decode buffers leave the process (glibc; elsewhere nothing happens).

    glibc raises its mmap threshold each time a large mapped block is freed, after which blocks
    of that size come from the thread's heap and stay resident when freed: four media threads
    that decode one 6000x6000 RGBA picture after another then keep four pictures' memory (550 MiB
    measured) where one is ever in use. A fixed threshold keeps every large block mapped."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION))
    except (OSError, AttributeError):
        return False


class ByteBudget:
    """At most ``total`` bytes held at once. ``acquire`` waits (up to its timeout) until the
    bytes fit, or until nobody else holds any; ``release`` is immediate."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: set[asyncio.Future[None]] = set()

    def _fits(self, n: int, mine: int) -> bool:
        return not self.total or self.used + n <= self.total or self.used == mine

    async def acquire(self, n: int, *, mine: int = 0, timeout: float) -> bool:
        """Take ``n`` bytes for a holder that already has ``mine`` of them; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._fits(n, mine):
            waiter = loop.create_future()
            self._waiters.add(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                return False
            finally:
                self._waiters.discard(waiter)
        self.used += n
        return True

    def release(self, n: int) -> None:
        self.used -= n
        for waiter in self._waiters:  # each checks again whether its bytes fit now
            if not waiter.done():
                waiter.set_result(None)


def _about(n: int) -> str:
    """``10521234`` -> ``"10.0 MiB"``: a size as people read it (for a figure, not for a limit)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a name we did not make): not ours to judge
    return True


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone, and its budget with it
        loop.call_soon_threadsafe(fn, *args)


class MediaWork:
    """The media thread pool, the two budgets and the spool directory of one API process."""

    def __init__(self, spool_root: Path, *, threads: int, decode_bytes: int, inflight_bytes: int, wait: float) -> None:
        # A folder per process: API servers that share a data dir never touch each other's files.
        self.spool_root = Path(spool_root)
        self.spool_dir = self.spool_root / str(os.getpid())
        self.wait = wait
        self.decode_budget = ByteBudget(decode_bytes)
        self.inflight_budget = ByteBudget(inflight_bytes)
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="media")
        return_large_allocations()  # else the budget bounds what is in use, not what stays resident
        self._owners: dict[str, int] = defaultdict(int)  # owner -> bytes its creates hold

    @classmethod
    def from_settings(cls, settings: Any) -> MediaWork:
        s = settings
        return cls(
            s.data_dir / "spool",
            threads=s.media_threads,
            decode_bytes=s.decode_budget_bytes,
            inflight_bytes=s.media_inflight_bytes,
            wait=s.media_wait,
        )

    def clear_spool(self) -> None:
        """Remove what servers that stopped (or were killed) left in the spool: every folder but
        those of live processes; then make this process's own, empty."""
        self.spool_root.mkdir(parents=True, exist_ok=True)
        for entry in self.spool_root.iterdir():
            if entry.name.isdigit() and entry != self.spool_dir and _alive(int(entry.name)):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        self.spool_dir.mkdir()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the media pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    async def decode(self, nbytes: int, fn: Callable[..., T], *args: Any) -> T:
        """Run the decode ``fn(*args)`` on the media pool, holding ``nbytes`` of the decode budget
        until it has finished: if the caller is cancelled while it runs, the bytes stay held until
        the thread is done (the memory is in use until then)."""
        if not await self.decode_budget.acquire(nbytes, timeout=self.wait):
            message = (
                f"the server is decoding too much media at once (at most {format_size(self.decode_budget.total)}); "
                f"try again in {BUSY_RETRY_AFTER} s"
            )
            raise ServiceUnavailable(message, code="decode_budget_exhausted", retry_after=BUSY_RETRY_AFTER)
        loop = asyncio.get_running_loop()
        job = self._pool.submit(fn, *args)
        try:
            return await asyncio.shield(asyncio.wrap_future(job))
        finally:
            if job.done() or job.cancel():  # finished, or cancelled before it started
                self.decode_budget.release(nbytes)
            else:
                job.add_done_callback(lambda _: _call_soon(loop, self.decode_budget.release, nbytes))

    def holding(self, owner: str) -> int:
        """Media bytes held now by ``owner``'s creates under way."""
        return self._owners.get(owner, 0)

    @contextlib.asynccontextmanager
    async def intake(self, owner: str, name: str, *, stored: int = 0, cap: int = 0) -> AsyncIterator[IntakeScope]:
        """One create's share: a spool folder ``name`` and the bytes it takes, all given back at
        the end. ``stored`` is what ``owner`` has stored already; ``cap`` its limit (0 = none)."""
        scope = IntakeScope(self, owner, name, stored, cap)
        try:
            yield scope
        finally:
            scope.release()
            if scope.folder_made:  # text-only creates never make one
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, scope.folder, True))


class IntakeScope:
    """What one create holds: its spool folder, and media bytes taken with ``take``."""

    def __init__(self, work: MediaWork, owner: str, name: str, stored: int, cap: int) -> None:
        self.work = work
        self.owner = owner
        self.name = name
        self.stored = stored
        self.cap = cap
        self.held = 0
        self._wait_left = work.wait
        self._made: asyncio.Future[None] | None = None

    @functools.cached_property
    def folder(self) -> Path:
        """The spool folder's path (built when first asked: most creates carry no media)."""
        return self.work.spool_dir / self.name

    @property
    def folder_made(self) -> bool:
        return self._made is not None

    async def make_folder(self) -> Path:
        """The spool folder, made by the first item that needs it (the others wait for that)."""
        if self._made is None:
            self._made = asyncio.ensure_future(asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True))
        await asyncio.shield(self._made)
        return self.folder

    async def take(self, n: int) -> None:
        """Take ``n`` more bytes: 429 past the key's stored-bytes cap, 503 when the budget of
        bytes in flight stays full for the rest of this create's wait."""
        work = self.work
        if self.cap and self.stored + work.holding(self.owner) + n > self.cap:
            message = (
                f"this API key's inputs would take more than {format_size(self.cap)} of storage "
                f"(it has {_about(self.stored)} stored); delete finished tasks (their inputs go with them) "
                "or send smaller media"
            )
            raise RateLimited(message, code="input_storage_quota_exceeded")
        loop = asyncio.get_running_loop()
        started = loop.time()
        got = await work.inflight_budget.acquire(n, mine=self.held, timeout=self._wait_left)
        self._wait_left = max(0.0, self._wait_left - (loop.time() - started))
        if not got:
            message = (
                f"the server is taking in too much media at once (at most {format_size(work.inflight_budget.total)} in flight); "
                f"try again in {BUSY_RETRY_AFTER} s"
            )
            raise ServiceUnavailable(message, code="media_budget_exhausted", retry_after=BUSY_RETRY_AFTER)
        self.held += n
        work._owners[self.owner] += n

    def release(self) -> None:
        if not self.held:
            return
        self.work.inflight_budget.release(self.held)
        owners = self.work._owners
        owners[self.owner] -= self.held
        if not owners[self.owner]:
            del owners[self.owner]
        self.held = 0
