"""The pieces the diffusers engines (``wan``, ``ltx``, ``ltx2``) are made of: loading a pipeline
once per process, progress/cancel on every step, chunk planning and seam blending, and turning
generated frames into the exact output size and count. ``diffusers_base.DiffusersEngine`` puts
them together into the one skeleton every family runs on.

Only engine modules import this (it imports torch).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import Cancelled
from ..media.frames import fit_cover, to_array
from . import levers
from .base import Audio, Inputs, Job, StepContext
from . import components as cached_components
from .memory_plan import component_dtypes
from .options import DiffusersOptions

log = logging.getLogger("opendance.engines")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_window(opts: DiffusersOptions, temporal: int) -> None:
    """A window and an overlap the VAE can encode exactly: ``k * temporal + 1`` frames."""
    for name in ("frames", "overlap"):
        value = getattr(opts, name)
        if (value - 1) % temporal:
            raise ValueError(f"{name} = {value}: must be {temporal} * k + 1 for this model (e.g. {temporal * 2 + 1})")


def check_call_kwargs(pipe, call_kwargs: dict[str, Any]) -> None:
    import inspect

    accepted = inspect.signature(type(pipe).__call__).parameters
    unknown = sorted(set(call_kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"call_kwargs {unknown} are not arguments of {type(pipe).__name__}")


# ---------------------------------------------------------------------------------------------
# Loading: one pipeline object per (class, folder, load options) in a worker process, shared by
# the engines of several modes (a Wan model's four modes all extend chunks with the same VACE).

_LOADED: dict[tuple, list] = {}  # key -> [pipeline, users]


def load_pipeline(
    cls, path: Path, opts: DiffusersOptions, device: str, dtype_defaults: dict[str, str] | None = None, **components
):
    """``cls.from_pretrained(path)``, moved to ``device`` (or CPU-offloaded), VAE tiling and the
    cache hook applied, each component at its dtype (``component_dtypes``). ``components``
    (already-loaded modules to reuse) only matter on a miss."""
    cache = opts.cache.model_dump() if opts.cache else None
    dtypes = component_dtypes(path, opts.dtype, dtype_defaults)
    fused = [one.model_dump(mode="json") for one in opts.loras], opts.lora_hotswap_rank  # weights differ with fused LoRAs
    key: tuple[Any, ...] = (
        cls.__name__,
        str(Path(path).resolve()),
        repr(sorted(dtypes.items())),
        device,
        opts.cpu_offload,
        opts.vae_tiling,
        repr(cache),
        repr(fused),
    )
    key += levers.load_key(opts)
    if key in _LOADED:
        _LOADED[key][1] += 1
        return _LOADED[key][0]
    t0 = time.perf_counter()
    by_name = {name: DTYPES[d] for name, d in dtypes.items()}
    # Components with the same weights as one already loaded (in another folder too) are that one.
    shared = {} if opts.cpu_offload or opts.offload else cached_components.lookup(path, dtypes, device, opts.vae_tiling)
    components = {**shared, **components}
    pipe = cls.from_pretrained(str(path), dtype={"default": DTYPES["float32"], **by_name}, local_files_only=True, **components)
    pipe.set_progress_bar_config(disable=True)
    if opts.loras:
        from .lora import fuse_at_load

        fuse_at_load(pipe, opts.loras)
    if opts.lora_hotswap_rank:  # before anything compiles the transformer
        from .lora import enable_hotswap

        enable_hotswap(pipe, opts.lora_hotswap_rank)
    levers.apply(pipe, opts, device)  # moved to the device or offloaded; quantized, compiled ... as configured
    if opts.vae_tiling:
        pipe.vae.enable_tiling()
    held = [] if opts.cpu_offload or opts.offload else cached_components.adopt(pipe, path, dtypes, device, opts.vae_tiling)
    log.info(
        "loaded %s from %s in %.2fs (%s shared)", cls.__name__, path, time.perf_counter() - t0, ", ".join(shared) or "nothing"
    )
    _LOADED[key] = [pipe, 1, held]
    return pipe


def release_pipeline(pipe) -> None:
    for key, entry in list(_LOADED.items()):
        if entry[0] is pipe:
            entry[1] -= 1
            if entry[1] <= 0:
                cached_components.release(entry[2])
                del _LOADED[key]


def enable_cache(pipe, opts: DiffusersOptions, defaults: dict[str, Any] | None = None) -> None:
    """Put the configured cache hook on every transformer of the pipeline (once)."""
    if opts.cache is None:
        return
    for name in ("transformer", "transformer_2"):
        model = getattr(pipe, name, None)
        if model is not None and not model.is_cache_enabled:
            model.enable_cache(opts.cache.build(opts.steps, defaults))


def reset_cache(pipe) -> None:
    """Clear cache-hook state, so each call starts fresh (same seed, same video)."""
    for name in ("transformer", "transformer_2"):
        model = getattr(pipe, name, None)
        if model is not None and getattr(model, "is_cache_enabled", False):
            model._reset_stateful_cache()


def make_generator(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device="cpu" if device.startswith("mps") else device).manual_seed(seed)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device.startswith("mps"):
        torch.mps.synchronize()


class StepReporter:
    """The ``callback_on_step_end`` of every pipeline call of a job.

    After each denoising step: wait for the device (so progress is true on a GPU), report
    ``done / total`` across all chunks, then check cancellation. On cancel it sets the pipeline's
    interrupt flag and raises ``Cancelled`` from inside the loop, so the pipeline never reaches its
    VAE decode and nothing of the video is written.
    """

    def __init__(self, ctx: StepContext, total: int, device: str, checkpoints=None) -> None:
        self.ctx, self.total, self.device = ctx, total, device
        self.checkpoints = checkpoints  # a DenoiseCheckpoints: resume state saved every K steps
        self.done = checkpoints.done_before if checkpoints is not None else 0

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        synchronize(self.device)
        self.done += 1
        self.ctx.progress(self.done, self.total)
        if self.checkpoints is not None:
            self.checkpoints.on_step(pipe, self.done, callback_kwargs)
        try:
            self.ctx.check_cancelled()
        except Cancelled:
            pipe._interrupt = True
            raise
        return callback_kwargs


# ---------------------------------------------------------------------------------------------
# Geometry: native grid, chunks, seams, output frames.


def grid_size(width: int, height: int, max_area: int, multiple: int) -> tuple[int, int]:
    """The model grid with the output's aspect ratio, at most ``max_area`` pixels, both sides
    multiples of ``multiple`` (nearest multiples, or the ones below when those are too big)."""
    h = math.sqrt(max_area * height / width)
    w = h * width / height
    gw, gh = (max(multiple, round(v / multiple) * multiple) for v in (w, h))
    if gw * gh > max_area:
        gw, gh = (max(multiple, int(v // multiple) * multiple) for v in (w, h))
    return gw, gh


def round_frames(n: int, temporal: int) -> int:
    """The smallest ``k * temporal + 1`` that is at least ``n``."""
    return max(1, math.ceil((n - 1) / temporal)) * temporal + 1


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # first native frame of the chunk
    length: int  # frames generated (k * temporal + 1)
    cond: int  # leading frames that repeat the previous chunk's tail (0 for the first)


def plan_chunks(total: int, window: int, overlap: int, temporal: int) -> list[Chunk]:
    """Cover ``total`` native frames with windows of at most ``window`` frames, each after the
    first starting ``overlap`` frames before the previous one ends. The last chunk is as short as
    the model allows (``k * temporal + 1`` frames) and ends exactly at ``total``, so it may
    overlap more."""
    chunks = [Chunk(0, 0, min(total, window), 0)]
    end = chunks[0].length
    while end < total:
        length = min(window, round_frames(total - end + overlap, temporal))
        start = min(end - overlap, total - length)
        chunks.append(Chunk(len(chunks), start, length, end - start))
        end = start + length
    return chunks


class Timeline:
    """The native frames of a job so far (uint8, grid size); chunks are blended in at their seams."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def tail(self, chunk: Chunk) -> list[np.ndarray]:
        return self.frames[chunk.start : chunk.start + chunk.cond]

    def add(self, chunk: Chunk, frames: list[np.ndarray]) -> None:
        """Cross-fade the chunk's first ``cond`` frames into the existing tail, append the rest."""
        for j in range(chunk.cond):
            w = (j + 1) / (chunk.cond + 1)
            old = self.frames[chunk.start + j].astype(np.float32)
            self.frames[chunk.start + j] = np.round(old * (1 - w) + frames[j].astype(np.float32) * w).astype(np.uint8)
        self.frames.extend(frames[chunk.cond :])


def to_uint8_frames(video) -> list[np.ndarray]:
    """A pipeline's ``output_type="np"`` video (1, F, H, W, 3) floats in [0, 1] -> uint8 frames."""
    video = np.asarray(video[0] if np.ndim(video) == 5 else video)
    return [np.round(np.clip(f, 0.0, 1.0) * 255).astype(np.uint8) for f in video]


def output_frames(native: list[np.ndarray], num_frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Exactly ``num_frames`` frames of ``width`` x ``height``: the native timeline resampled so
    its first and last frames are the output's first and last (nearest frame), each fitted with
    ``fit_cover``."""
    n = len(native)
    last_k, last = -1, np.empty(0)
    for i in range(num_frames):
        k = round(i * (n - 1) / (num_frames - 1)) if num_frames > 1 else 0
        if k != last_k:  # true for i == 0: k is never -1
            last_k, last = k, to_array(fit_cover(Image.fromarray(native[k]), width, height))
        yield last


def reference_video_frames(inputs: Inputs, fps: int, width: int, height: int, limit: int) -> list[np.ndarray]:
    """The reference videos one after another, at the native fps and grid, at most ``limit`` frames."""
    from ..media.frames import read_video_frames

    out: list[np.ndarray] = []
    for path in inputs.videos:
        out.extend(read_video_frames(Path(path), fps, width, height, max_frames=limit - len(out)))
        if len(out) >= limit:
            break
    return out


def reference_audio(inputs: Inputs, job: Job) -> Audio | None:
    """Reference audios mixed, trimmed or looped to the output duration (no open pipeline takes
    audio as input, so it goes straight to the sound track)."""
    if not inputs.audios:
        return None
    from ..media.audio import mix_reference_audio

    return mix_reference_audio([Path(p) for p in inputs.audios], float(job.duration))


def with_camera(prompt: str, options: dict[str, Any]) -> str:
    """``camera_fixed``: open models take no camera flag, so it is said in the prompt."""
    if options.get("camera_fixed"):
        return f"{prompt.rstrip()}{'. ' if prompt.strip() else ''}Static shot, fixed camera, no camera movement."
    return prompt
