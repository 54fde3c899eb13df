"""Which conditions an LTX-family chunk is made with (LTX-Video and LTX-2 plan them alike and
differ only in the condition class their pipeline takes and how it counts frames).

- every chunk after the first: the previous chunk's tail, a video condition at frame 0, strength 1;
- the first chunk: the first image at frame 0, strength 1;
- the last chunk of first-and-last-frame: the last image at its last frame, strength 1;
- omni-reference, the first chunk: soft conditions (``strength``): the reference videos' frames
  from frame 0, the reference images as keyframes spread evenly over the chunk after them.

A video condition is ``k * temporal + 1`` frames (what the VAE encodes exactly); frames are native
frames of the chunk, keyframes on multiples of ``temporal`` (one latent frame each).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..domain import Mode
from ._torch_utils import Chunk, Timeline


@dataclass(frozen=True)
class Condition:
    frame: int  # the chunk's native frame it starts at (a multiple of temporal)
    strength: float
    video: list[np.ndarray] | None = None  # k * temporal + 1 frames, uint8 H x W x 3
    image: Any = None  # a PIL image


def _whole(frames: Sequence[np.ndarray], temporal: int) -> list[np.ndarray]:
    """The longest ``k * temporal + 1`` frames from the start."""
    return list(frames[: (len(frames) - 1) // temporal * temporal + 1])


def plan_conditions(
    mode: Mode,
    chunk: Chunk,
    last: bool,
    timeline: Timeline,
    *,
    temporal: int,
    image=None,
    last_image=None,
    control: Sequence[np.ndarray] = (),
    references: Sequence[Any] = (),
    strength: float = 0.5,
) -> list[Condition]:
    """The conditions of ``chunk`` (``last``: the job's last chunk), in the order the pipeline gets them."""
    out: list[Condition] = []
    if chunk.cond:
        out.append(Condition(0, 1.0, video=_whole(timeline.tail(chunk), temporal)))
    if chunk.index == 0 and image is not None:
        out.append(Condition(0, 1.0, image=image))
    if last and mode == Mode.FIRST_AND_LAST_FRAME:
        out.append(Condition(chunk.length - 1, 1.0, image=last_image))
    if chunk.index == 0 and mode == Mode.OMNI_REFERENCE:
        window = _whole(control[: chunk.length], temporal) if len(control) else []
        if window:
            out.append(Condition(0, strength, video=window))
        slots = len(references) + (1 if window else 0)
        for j, ref in enumerate(references):
            index = round((j + slots - len(references)) * (chunk.length - 1) / slots / temporal) * temporal
            out.append(Condition(index, strength, image=ref))
    return out
