"""Checkpoints of finished frame chunks, for engines that make their frames one by one.

``checkpointed(frames, total, ctx, chunk)`` passes the frames through and, every ``chunk``
frames, saves them (compressed) as a checkpoint part, with a state naming every part so far.
A run that finds a checkpoint yields the saved frames first, then skips as many frames of
``frames`` and goes on: the output is the same frames either way.

The step of these checkpoints is a frame. They cost a compression and a PUT per chunk (about
60 KB per 864x480 frame), so an engine turns them on only when a frame is dearer to make than
to store and load.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Iterator

import numpy as np

from .base import StepContext


def _pack(frames: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, frames=np.stack(frames))
    return buf.getvalue()


def _unpack(data: bytes) -> np.ndarray:
    with np.load(io.BytesIO(data)) as npz:
        return npz["frames"]


def checkpointed(frames: Iterable[np.ndarray], total: int, ctx: StepContext, chunk: int) -> Iterator[np.ndarray]:
    if chunk <= 0 or ctx.checkpoint_every <= 0:
        yield from frames
        return
    it = iter(frames)
    names: list[str] = []
    done = 0
    saved = ctx.load_checkpoint()
    if saved is not None and isinstance(saved[0], dict) and saved[0].get("kind") == "frame-chunks":
        for name in saved[0]["parts"]:
            for frame in _unpack(ctx.load_checkpoint_part(name)):
                ctx.check_cancelled()
                yield frame
                done += 1
            names.append(name)
            ctx.progress(done, total)
        # The frames before ``done`` are already out: advance the source past them.
        for _ in itertools.islice(it, done):
            pass
    pending: list[np.ndarray] = []
    saving = True  # after a failed save, later chunks would leave a gap: stop saving
    for frame in it:
        yield frame
        done += 1
        if not saving:
            continue
        pending.append(frame)
        if len(pending) == chunk or done == total:
            name = f"frames-{done - len(pending):06d}"
            state = {"kind": "frame-chunks", "parts": [*names, name]}
            saving = ctx.save_checkpoint(state, done, parts={name: _pack(pending)})
            names.append(name)
            pending = []
