"""The store-writable check of ``/readyz``: a write probe, its answer kept for ``ttl`` seconds.

On a full disk SQLite still reads (``ping`` passes) but takes no write, so no create, progress
or terminal write can be stored: the server is not ready. The probe is one tiny committed write
(``TaskStore.check_writable``); keeping its answer a moment keeps ``/readyz`` cheap however
often a balancer polls it, and one probe runs at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class WriteProbe:
    def __init__(self, probe: Callable[[], None], ttl: float = 1.5) -> None:
        self.probe = probe
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._error: Exception | None = None

    def check(self) -> None:
        """Raise the probe's error (fresh or at most ``ttl`` s old); blocking, call it in a thread."""
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                try:
                    self.probe()
                    self._error = None
                except Exception as exc:
                    self._error = exc
                self._at = time.monotonic()
            error = self._error
        if error is not None:
            raise error
