"""LTX-Video (0.9.5 and later) through diffusers' ``LTXConditionPipeline``, for every mode.

- text-to-video: no condition.
- image-to-video: the image as a condition at frame 0.
- first-and-last-frame: the first image at frame 0 and the last image at the last frame (of the
  last chunk, when there are several).
- omni-reference: LTX has no reference encoder, so references become soft conditions of the
  first chunk (strength ``reference_strength``): the reference videos' frames from frame 0, the
  reference images as keyframes spread evenly over the chunk.
- Durations past the native window: every chunk after the first is conditioned on the previous
  chunk's tail frames (a video condition at frame 0, strength 1); the seam is cross-faded.

Distilled checkpoints (LTX-Video 0.9.7/0.9.8 distilled) take ``timesteps`` (their schedule, whose
length is the step count) and ``guidance = 1``.

TOML options: everything in ``DiffusersOptions`` plus ``timesteps``, ``decode_timestep``,
``image_cond_noise_scale`` and ``reference_strength``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from PIL import Image

from ..domain import Mode
from ..errors import EngineError
from ..media.frames import fit_cover
from ._torch_utils import (
    Chunk,
    StepReporter,
    Timeline,
    check_call_kwargs,
    check_window,
    enable_cache,
    grid_size,
    load_pipeline,
    make_generator,
    output_frames,
    plan_chunks,
    reference_audio,
    reference_video_frames,
    release_pipeline,
    reset_cache,
    round_frames,
    to_uint8_frames,
    with_camera,
)
from .base import Engine, Inputs, Job, Output, StepContext
from .diffusers_resume import DenoiseCheckpoints
from .options import LTXOptions

log = logging.getLogger("opendance.engines.ltx")


class LTXEngine(Engine):
    name = "ltx"

    def __init__(self, spec: dict[str, Any], device: str = "cpu") -> None:
        import diffusers

        super().__init__(spec, device)
        t0 = time.perf_counter()
        self.opts = opts = LTXOptions(**spec)
        self.device = opts.device or device
        if opts.pipeline not in (None, "LTXConditionPipeline"):
            raise ValueError(f"the ltx engine runs LTXConditionPipeline, not {opts.pipeline}")
        self.pipe = None
        try:
            self.pipe = load_pipeline(diffusers.LTXConditionPipeline, opts.checkpoint, opts, self.device)
            enable_cache(self.pipe, opts)
            check_call_kwargs(self.pipe, opts.call_kwargs)
            self.temporal = self.pipe.vae_temporal_compression_ratio
            check_window(opts, self.temporal)
        except BaseException:
            self.close()  # nothing half-loaded stays in the process's pipeline cache
            raise
        self.load_seconds = time.perf_counter() - t0
        log.info("ltx engine ready in %.2fs", self.load_seconds)

    def check_inputs(self, job: Job, inputs: Inputs) -> None:
        if job.mode in (Mode.IMAGE_TO_VIDEO, Mode.FIRST_AND_LAST_FRAME) and inputs.image is None:
            raise EngineError(f"{job.mode.value} needs a first image")
        if job.mode == Mode.FIRST_AND_LAST_FRAME and inputs.last_image is None:
            raise EngineError("first-and-last-frame needs a last image")

    def generate(self, job: Job, inputs: Inputs, ctx: StepContext) -> Output:
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

        opts = self.opts
        self.check_inputs(job, inputs)
        # 1. Plan: the native grid (multiples of 32), native frames, chunks.
        width, height = grid_size(job.width, job.height, opts.max_area, 32)
        total = round_frames(job.duration * opts.native_fps, self.temporal)
        chunks = plan_chunks(total, opts.frames, opts.overlap, self.temporal)

        # 2. Inputs on the grid.
        image = fit_cover(inputs.image, width, height) if inputs.image is not None else None
        last_image = fit_cover(inputs.last_image, width, height) if inputs.last_image is not None else None
        control: list[np.ndarray] = []
        references: list[Image.Image] = []
        if job.mode == Mode.OMNI_REFERENCE:
            control = reference_video_frames(inputs, opts.native_fps, width, height, opts.frames)
            references = [fit_cover(im, width, height) for im in inputs.images]

        # 3. Arguments every call shares; progress counts steps across all chunks, which a run
        #    that starts again continues from its checkpoint.
        resume = self._resume = DenoiseCheckpoints(ctx, opts.steps)
        call = dict(
            prompt=with_camera(job.prompt, job.options),
            negative_prompt=job.negative_prompt or opts.negative_prompt,
            height=height,
            width=width,
            frame_rate=opts.native_fps,
            num_inference_steps=opts.steps,
            timesteps=opts.timesteps,
            guidance_scale=opts.guidance,
            decode_timestep=opts.decode_timestep,
            image_cond_noise_scale=opts.image_cond_noise_scale,
            generator=make_generator(self.device, job.seed),
            output_type="np",
            callback_on_step_end=StepReporter(ctx, opts.steps * len(chunks), self.device, resume),
            **opts.call_kwargs,
        )

        # 4. Denoise chunk by chunk, each conditioned on what is known of it.
        resume.bind(call["generator"])
        timeline = Timeline()
        for chunk in chunks:
            ctx.check_cancelled()
            saved = resume.finished_chunk(chunk.index)
            if saved is not None:
                frames = list(saved["frames"])
            else:
                conditions = self._conditions(job.mode, chunk, len(chunks), timeline, image, last_image, control, references)
                conditions = [LTXVideoCondition(**c) for c in conditions]
                frames = self._call(call, num_frames=chunk.length, conditions=conditions or None)
                resume.chunk_done(chunk.index, frames=np.stack(frames))
            timeline.add(chunk, frames)

        # 5. Exactly the requested frames and size; reference audio as the sound track.
        return Output(
            frames=output_frames(timeline.frames, job.num_frames, job.width, job.height),
            fps=job.fps,
            audio=reference_audio(inputs, job),
        )

    def _conditions(self, mode, chunk: Chunk, n_chunks, timeline, image, last_image, control, references) -> list[dict]:
        t = self.temporal
        out: list[dict] = []
        if chunk.cond:
            tail = timeline.tail(chunk)[: (chunk.cond - 1) // t * t + 1]  # a video condition is k * t + 1 frames
            out.append(dict(video=[Image.fromarray(f) for f in tail], frame_index=0, strength=1.0))
        if chunk.index == 0 and image is not None:
            out.append(dict(image=image, frame_index=0, strength=1.0))
        if chunk.index == n_chunks - 1 and mode == Mode.FIRST_AND_LAST_FRAME:
            out.append(dict(image=last_image, frame_index=chunk.length - 1, strength=1.0))
        if chunk.index == 0 and mode == Mode.OMNI_REFERENCE:
            strength = self.opts.reference_strength
            window = control[: (min(len(control), chunk.length) - 1) // t * t + 1] if control else []
            if window:
                out.append(dict(video=[Image.fromarray(f) for f in window], frame_index=0, strength=strength))
            slots = len(references) + (1 if window else 0)
            for j, ref in enumerate(references):
                index = round((j + slots - len(references)) * (chunk.length - 1) / slots / t) * t
                out.append(dict(image=ref, frame_index=index, strength=strength))
        return out

    def _call(self, call: dict[str, Any], **kwargs: Any) -> list[np.ndarray]:
        import torch

        reset_cache(self.pipe)
        with torch.inference_mode(), self._resume.into(self.pipe, merge={"latents": _keep_hard_conditions},
                                                                   whole_sigmas=True):
            return to_uint8_frames(self.pipe(**call, **kwargs).frames)

    def close(self) -> None:
        if self.pipe is not None:
            release_pipeline(self.pipe)
        self.pipe = None


def _keep_hard_conditions(prepared, saved):
    """Resuming inside an ``LTXConditionPipeline`` call: start from the saved latents, except on
    the tokens of hard (strength 1) conditions. The pipeline keeps a copy of what it starts from
    as those tokens' clean value and re-noises them from it at every step; the saved tokens hold
    the last step's noise, the fresh ones the clean condition, as in the uninterrupted run."""
    import torch

    latents, mask = prepared[0], prepared[1]
    if mask is None:
        return saved
    return torch.where((mask > 1.0 - 1e-6).unsqueeze(-1), latents, saved)
