"""The storage interface. Keys are ``/``-separated relative paths such as
``tasks/<task_id>/video.mp4``; every write is atomic (a reader never sees half a file)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LocalFile:
    """Serve this file from the API process (with Range)."""

    path: Path
    size: int


@dataclass
class Redirect:
    """Send the client here (a presigned URL)."""

    url: str


@dataclass
class Stream:
    """Stream the object through the API process (with Range): for object stores that clients
    cannot or should not reach directly."""

    size: int
    read: Callable[[int, int], Iterator[bytes]]  # (first, last) byte, inclusive -> chunks
    etag: str | None = None


@dataclass
class Leftovers:
    """What killed processes may have left (``Storage.leftovers``)."""

    parts: list[str]  # keys of part files: writes that never finished
    folders: list[str]  # names of the folders right below the prefix whose files are all old


class Storage(ABC):
    @abstractmethod
    def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Store the file at ``path`` under ``key``, atomically."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local file holding the object, for as long as the context lasts."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every object whose key starts with ``prefix``."""

    @abstractmethod
    def locate(self, key: str) -> LocalFile | Redirect | Stream | None:
        """How the API should serve ``key`` to a client, or None if it does not exist."""

    def leftovers(self, prefix: str, older_than: float) -> Leftovers:
        """Part files under ``prefix`` last written before ``older_than`` (a Unix time), and the
        folders right below ``prefix`` whose every file is older than that (and that hold no
        newer folder). The default finds nothing: object stores write whole objects."""
        return Leftovers(parts=[], folders=[])

    def check_writable(self) -> None:
        """Raise if the storage cannot take writes now (used by /readyz)."""
        self.put_bytes(".readyz", b"ok", "text/plain")
