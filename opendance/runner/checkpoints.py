"""Resume checkpoints of one task's engine state, kept in storage under
``tasks/<task_id>/checkpoints/``.

An engine saves its state every ``every`` steps through ``StepContext.save_checkpoint``; when
the task runs again (a worker died, a server restarted, Temporal retried the activity), the
engine finds the last state with ``StepContext.load_checkpoint`` and continues from there. So a
crash loses the steps since the last checkpoint, never the whole task.

Layout: ``state`` is one object, replaced at every save (a single PUT, so it is always whole:
either the old state or the new one); ``parts/<name>`` are write-once objects an engine adds
next to it (the preview's finished frame chunks). A state is written after its parts, so a
state never names a part that is missing.

The ``state`` object is ``MAGIC``, one JSON header line ``{"step": n, "kind": "json"|"bytes"}``,
then the payload (JSON text, or the engine's own bytes, e.g. ``torch.save`` output).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from ..storage import Storage

log = logging.getLogger("opendance.checkpoints")

MAGIC = b"ODCKPT1\n"
_PART_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def checkpoint_prefix(task_id: str) -> str:
    return f"tasks/{task_id}/checkpoints/"


def encode_state(state: bytes | dict[str, Any], step: int) -> bytes:
    if isinstance(state, (bytes, bytearray, memoryview)):
        kind, payload = "bytes", bytes(state)
    elif isinstance(state, dict):
        kind, payload = "json", json.dumps(state, separators=(",", ":")).encode()
    else:
        raise TypeError(f"a checkpoint state is bytes or a JSON-able dict, not {type(state).__name__}")
    header = json.dumps({"step": int(step), "kind": kind, "saved_at": time.time()}).encode()
    return MAGIC + header + b"\n" + payload


def decode_state(blob: bytes) -> tuple[bytes | dict[str, Any], int]:
    if not blob.startswith(MAGIC):
        raise ValueError("not an opendance checkpoint")
    header_line, _, payload = blob[len(MAGIC) :].partition(b"\n")
    header = json.loads(header_line)
    state: bytes | dict[str, Any] = json.loads(payload) if header["kind"] == "json" else payload
    return state, int(header["step"])


class TaskCheckpoints:
    """The checkpoints of one task. ``every`` 0 turns saving off (loading still works)."""

    def __init__(
        self, storage: Storage, task_id: str, every: int, on_saved: Callable[[int], None] | None = None, read_only: bool = False
    ) -> None:
        self.storage = storage
        self.task_id = task_id
        self.every = max(0, int(every))
        self.prefix = checkpoint_prefix(task_id)
        self._on_saved = on_saved
        # A device group's ranks other than 0 read the checkpoint (to resume where rank 0 does)
        # and "save" as often as it does, but only rank 0 writes.
        self.read_only = read_only

    def save(
        self, state: bytes | dict[str, Any], step: int, parts: dict[str, bytes] | None = None, *, required: bool = False
    ) -> bool:
        """Store ``parts`` (new write-once objects), then ``state`` as the newest. A failed write
        is logged, not raised: a checkpoint only saves work, the job itself can go on; unless
        it is ``required`` (a relay's upstream id: going on without it could pay twice)."""
        if self.every <= 0:
            return False
        if self.read_only:
            return True
        try:
            for name, data in (parts or {}).items():
                self.storage.put_bytes(self.prefix + "parts/" + _part(name), data, "application/octet-stream")
            self.storage.put_bytes(self.prefix + "state", encode_state(state, step), "application/octet-stream")
        except OSError as exc:
            if required:
                raise
            log.warning("task %s: checkpoint at step %d not saved: %s", self.task_id, step, exc)
            return False
        if self._on_saved is not None:
            self._on_saved(step)
        return True

    def load(self) -> tuple[bytes | dict[str, Any], int] | None:
        """The newest (state, step), or None (no checkpoint, or one that cannot be read)."""
        try:
            blob = self.storage.get_bytes(self.prefix + "state")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("task %s: checkpoint not readable, starting over: %s", self.task_id, exc)
            return None
        try:
            state, step = decode_state(blob)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("task %s: checkpoint damaged, starting over: %s", self.task_id, exc)
            return None
        log.info("task %s: resuming after step %d from its checkpoint", self.task_id, step)
        return state, step

    def load_part(self, name: str) -> bytes:
        return self.storage.get_bytes(self.prefix + "parts/" + _part(name))

    def clear(self) -> None:
        self.storage.delete_prefix(self.prefix)


def _part(name: str) -> str:
    if not _PART_NAME.match(name):
        raise ValueError(f"checkpoint part names are 1-100 of A-Z a-z 0-9 . _ -; got {name!r}")
    return name
