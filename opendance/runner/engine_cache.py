"""A worker process's engines: one per distinct spec, kept between tasks, evicted
least-recently-used when loading another would not fit the device, and a load that failed not
tried again for every task.

- Fitting: the memory plan (``engines.memory_plan``) of the engines held plus the new one
  (shared components once) against the device's memory: ``device_memory`` when set, else the
  CUDA device's total. Without a known memory (a CPU, no setting) nothing is evicted.
- Eviction closes the engine (its pipelines leave the process's caches) and empties the device
  cache (``torch.cuda.empty_cache``).
- A failed load is an ``EngineError`` (``engine_error``; an ``OSError`` of a half-downloaded
  folder is not a storage error) and is remembered per spec: the tasks that come within its backoff (30 s, doubling
  up to 10 min) fail at once with the same error, saying when it is tried again. Each failure is
  reported (``ModelLoaded`` with ``error``), so ``/readyz`` shows it.
- ``torch.OutOfMemoryError`` at load or at run is ``out_of_memory`` with the device's numbers
  (``out_of_memory``), and the device cache is emptied.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engines.base import Engine, engine_class
from ..errors import EngineError
from .messages import ModelLoaded

log = logging.getLogger("opendance.worker")

BACKOFF, MAX_BACKOFF = 30.0, 600.0


class OutOfMemory(EngineError):
    def __init__(self, message: str) -> None:
        super().__init__(message, "out_of_memory")


def is_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def free_device_cache(device: str) -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def out_of_memory(exc: BaseException, device: str, when: str) -> OutOfMemory:
    """An ``out_of_memory`` error with torch's numbers (what it tried to allocate, what is free)
    and the process's own (allocated, reserved)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    numbers = ""
    torch = sys.modules.get("torch")
    if torch is not None and device.startswith("cuda") and torch.cuda.is_available():
        gib = 1024**3
        numbers = (
            f" (this process: {torch.cuda.memory_allocated(device) / gib:.2f} GiB allocated, "
            f"{torch.cuda.memory_reserved(device) / gib:.2f} GiB reserved)"
        )
    free_device_cache(device)
    return OutOfMemory(f"{device} ran out of memory {when}: {first}{numbers}")


@dataclass
class _Failure:
    error: BaseException
    attempts: int
    until: float


def _capacity(device: str, stated: str | None) -> int | None:
    from ..engines.memory_plan import parse_size

    if stated:
        return parse_size(stated)
    if device.startswith("cuda"):
        import torch  # a CUDA worker runs torch engines anyway

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(device)[1])
    return None


class EngineCache:
    def __init__(
        self, device: str, device_memory: str | None = None, send: Callable[[Any], None] = lambda m: None, clock=time.monotonic
    ) -> None:
        self.device, self.send, self.clock = device, send, clock
        self.device_memory = device_memory
        self._capacity: int | None = None
        self.engines: OrderedDict[str, Engine] = OrderedDict()  # least recently used first
        self.failures: dict[str, _Failure] = {}

    @property
    def capacity(self) -> int | None:
        """The device's memory, asked for when the first engine loads (not at the worker's start)."""
        if self._capacity is None:
            self._capacity = _capacity(self.device, self.device_memory)
        return self._capacity

    def get(self, spec: dict, label: str = "") -> Engine:
        key = json.dumps(spec, sort_keys=True)
        if key in self.engines:
            self.engines.move_to_end(key)
            return self.engines[key]
        failure = self.failures.get(key)
        now = self.clock()
        if failure is not None and now < failure.until:
            saved = failure.error
            again = f"loading it failed {failure.attempts} time(s); next try in {failure.until - now:.0f} s"
            raise (OutOfMemory if isinstance(saved, OutOfMemory) else EngineError)(f"{saved} ({again})")
        self._make_room(spec)
        t0 = time.perf_counter()
        try:
            engine = engine_class(spec["engine"])(spec, self.device)
        except Exception as exc:
            if is_oom(exc):
                error: BaseException = out_of_memory(exc, self.device, "loading the model")
            elif isinstance(exc, EngineError):
                error = exc
            else:  # a folder that cannot be read is the engine's failure, not storage's (OSError)
                error = EngineError(f"{type(exc).__name__}: {exc}")
            attempts = failure.attempts + 1 if failure is not None else 1
            wait = min(MAX_BACKOFF, BACKOFF * 2 ** (attempts - 1))
            self.failures[key] = _Failure(error, attempts, self.clock() + wait)
            log.error(
                "engine %s (%s) failed to load (attempt %d, next in %.0f s): %s", spec["engine"], label, attempts, wait, error
            )
            self.send(
                ModelLoaded(engine=spec["engine"], seconds=time.perf_counter() - t0, model=label, error=str(error), retry_in=wait)
            )
            if error is not exc:
                raise error from exc
            raise
        seconds = time.perf_counter() - t0
        self.failures.pop(key, None)
        self.engines[key] = engine
        log.info("engine %s loaded in %.2fs", spec["engine"], seconds)
        self.send(ModelLoaded(engine=spec["engine"], seconds=seconds, model=label))
        return engine

    def _make_room(self, spec: dict) -> None:
        """Evict the least recently used engines until the new one fits with the rest."""
        if self.capacity is None:
            return
        from ..engines.memory_plan import MemoryPlan, plan_mode
        from ..engines.options import OPTIONS, DiffusersOptions

        def plan(s):
            options = OPTIONS.get(s["engine"])
            if options is None or not issubclass(options, DiffusersOptions):
                return None
            try:
                m = plan_mode("", "", s["engine"], {k: v for k, v in s.items() if k != "engine"})
            except (OSError, ValueError):
                return None  # the load will say what is wrong
            if self.device == "cpu":
                m.overhead = 0
            return m

        new = plan(spec)
        if new is None:
            return
        while self.engines:
            held = [m for m in (plan(json.loads(k)) for k in self.engines) if m is not None]
            modes = [*held, new]
            need = MemoryPlan(modes, [self.device], {}, None).resident() + max(m.activations + m.overhead for m in modes)
            if need <= self.capacity:
                return
            key, engine = self.engines.popitem(last=False)
            log.info(
                "evicting engine %s to make room (%d bytes needed, %d on %s)",
                json.loads(key)["engine"],
                need,
                self.capacity,
                self.device,
            )
            engine.close()
            del engine
            free_device_cache(self.device)

    def values(self):
        return list(self.engines.values())

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()
