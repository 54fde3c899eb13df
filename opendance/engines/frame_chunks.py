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

from ..media.yuv import Yuv420
from .base import StepContext


Frame = np.ndarray | Yuv420


def _pack(frames: list[Frame]) -> bytes:
    """One chunk: RGB frames as ``frames``, or ``Yuv420`` frames as ``yuv420`` (a run makes all its
    frames in one format; a run resumed after an upgrade may continue another run's chunks in the
    other format, which is why each chunk says what it holds)."""
    buf = io.BytesIO()
    if all(isinstance(f, Yuv420) for f in frames):
        np.savez_compressed(buf, yuv420=np.stack([f.data for f in frames if isinstance(f, Yuv420)]))
    else:
        np.savez_compressed(buf, frames=np.stack([f for f in frames if isinstance(f, np.ndarray)]))
    return buf.getvalue()


def _unpack(data: bytes) -> list[Frame]:
    with np.load(io.BytesIO(data)) as npz:
        if "yuv420" in npz:
            return [Yuv420(np.ascontiguousarray(f)) for f in npz["yuv420"]]
        return list(npz["frames"])


def checkpointed(frames: Iterable[Frame], total: int, ctx: StepContext, chunk: int) -> Iterator[Frame]:
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
    pending: list[Frame] = []
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
