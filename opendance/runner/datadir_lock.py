"""One local server per data dir: an exclusive ``flock`` on ``<data_dir>/server.lock``.

The local runner owns everything in its data dir: at start it reruns the RUNNING tasks it finds,
clears the media spool and the scratch folder, sweeps half-written inputs. A second server on
the same data dir would do all that to the tasks the first one is running, so the lock is taken
before any of it, and held for the life of the process: the kernel drops it when the process
ends, crash or SIGKILL included, so a stale lock file never blocks a restart. The file holds
the PID of the holder, for the message a second server gives::

    opendance serve: the data dir /srv/opendance-data is in use by another opendance server (PID 4242); ...

The lock is per process: ``hold`` in a process that holds it already (``serve`` takes it before
building the app, the app's start takes it again) counts one more holder of the same lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "server.lock"


class DataDirBusy(RuntimeError):
    """Another live process holds the data dir."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir, self.pid = data_dir, pid
        who = f"PID {pid}" if pid is not None else "PID unknown"
        super().__init__(
            f"the data dir {data_dir} is in use by another opendance server ({who}); "
            "stop that server or give this one another --data-dir"
        )


class DataDirLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd, self._holders = path, fd, 1

    def release(self) -> None:
        """One holder fewer; the last one unlocks (exiting does as well)."""
        self._holders -= 1
        if self._holders == 0:
            _held.pop(self.path, None)
            os.close(self._fd)  # closing the only descriptor drops the flock


_held: dict[Path, DataDirLock] = {}  # the locks this process holds, by lock file


def hold(data_dir: Path) -> DataDirLock:
    """Lock ``data_dir`` for this process, or raise ``DataDirBusy`` naming the PID that has it."""
    data_dir = Path(data_dir).resolve()
    path = data_dir / LOCK_NAME
    if (mine := _held.get(path)) is not None:
        mine._holders += 1
        return mine
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # never inherited by workers
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirBusy(data_dir, _holder_pid(path)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    lock = _held[path] = DataDirLock(path, fd)
    return lock


def _holder_pid(path: Path, wait: float = 1.0) -> int | None:
    """The PID the holder wrote; it writes it just after locking, so wait a moment for it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
