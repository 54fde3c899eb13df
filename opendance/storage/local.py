"""Local directory storage (the embedded default)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .base import Leftovers, LocalFile, Storage

PART_PREFIX = ".part-"  # a write in progress (renamed to its key when complete)


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def _atomic_write(self, key: str, write) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=PART_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        with open(path, "rb") as src:
            self._atomic_write(key, lambda f: shutil.copyfileobj(src, f, 1024 * 1024))

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        if not path.exists():
            raise FileNotFoundError(key)
        yield path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)

    def leftovers(self, prefix: str, older_than: float) -> Leftovers:
        base = self._path(prefix.rstrip("/"))
        found = Leftovers(parts=[], folders=[])
        try:
            folders = [entry for entry in os.scandir(base) if entry.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return found
        for folder in folders:
            newest = 0.0
            for dirpath, dirnames, filenames in os.walk(folder.path):
                for name in [*filenames, *dirnames]:
                    path = os.path.join(dirpath, name)
                    try:
                        mtime = os.lstat(path).st_mtime
                    except FileNotFoundError:  # removed meanwhile
                        continue
                    newest = max(newest, mtime)
                    if name.startswith(PART_PREFIX) and mtime < older_than:
                        found.parts.append(Path(path).relative_to(self.root).as_posix())
            if max(newest, folder.stat(follow_symlinks=False).st_mtime) < older_than:
                found.folders.append(folder.name)
        return found

    def locate(self, key: str) -> LocalFile | None:
        path = self._path(key)
        try:
            return LocalFile(path=path, size=path.stat().st_size)
        except FileNotFoundError:
            return None
