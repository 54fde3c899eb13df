"""Frame helpers shared by engines: fit an image to the output size, read a reference video."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image


def fit_cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``image`` to cover ``width`` x ``height`` and crop the centre: no bars, no stretch.

    This is the one definition of "the input resized to the output" (frame 0 of an
    image-to-video task is exactly this image). The centre box of the output's aspect ratio is
    resized straight to the output size, so no intermediate is ever larger than the output or
    the source: an 8192x16 picture covering 864x480 would otherwise first be scaled to 245760x480.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    scale = max(width / w, height / h)
    box_w, box_h = width / scale, height / scale  # one side is the source's, the other fits inside it
    left, top = (w - box_w) / 2, (h - box_h) / 2
    return image.resize((width, height), Image.Resampling.LANCZOS, box=(left, top, left + box_w, top + box_h))


def to_array(image: Image.Image) -> np.ndarray:
    """RGB uint8 H x W x 3."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_video_frames(path: Path, fps: int, width: int, height: int, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Decode a video file resampled to ``fps`` (for each output tick, the latest source frame
    at or before it) and fitted with ``fit_cover`` to ``width`` x ``height``. RGB uint8 arrays."""
    import av

    limit = max_frames if max_frames is not None else float("inf")
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or fps)
        # The latest decoded frame, converted only when a tick first shows it: a source faster
        # than ``fps`` has frames no tick shows, and fitting each costs more than decoding it.
        prev = None
        prev_array: np.ndarray | None = None
        end = 0.0
        for k, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else k / rate
            while prev is not None and n / fps < t - 1e-6 and n < limit:
                if prev_array is None:
                    prev_array = to_array(fit_cover(prev.to_image(), width, height))
                yield prev_array
                n += 1
            if n >= limit:
                return
            prev, prev_array = frame, None
            step = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 1 / rate
            end = max(end, t + step)
        # The last frame holds until the end of the stream.
        while prev is not None and n / fps < end - 1e-6 and n < limit:
            if prev_array is None:
                prev_array = to_array(fit_cover(prev.to_image(), width, height))
            yield prev_array
            n += 1
