"""LTX-2 through diffusers: video with its own sound track.

- text-to-video: ``LTX2Pipeline``; image-to-video: ``LTX2ImageToVideoPipeline``;
  first-and-last-frame, omni-reference and every chunk after the first:
  ``LTX2ConditionPipeline``. The three share one set of modules (loaded once).
- first-and-last-frame: image conditions at the first and the last latent frame.
- omni-reference: soft conditions (``reference_strength``) on the first chunk: the reference
  videos' frames from frame 0, the reference images as keyframes spread over the chunk.
- Durations past the native window: each chunk after the first is conditioned on the previous
  chunk's tail (a video condition at latent 0); video and sound are cross-faded at the seams.
- Sound: LTX-2 always denoises an audio track with the video. It becomes the output's sound when
  the request sets ``extra_body.generate_audio``; reference audios are mixed into it (or are the
  sound track on their own when ``generate_audio`` is off).

Distilled checkpoints (LTX-2.3 distilled) take ``sigmas`` (their schedule; its length is the step
count) and ``guidance = 1``.

TOML options: everything in ``DiffusersOptions`` plus ``sigmas``, ``decode_timestep`` and
``reference_strength``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

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
from .base import Audio, Engine, Inputs, Job, Output, StepContext
from .diffusers_resume import DenoiseCheckpoints
from .options import LTX2Options

log = logging.getLogger("opendance.engines.ltx2")

AUDIO_RATE = 48000
_DENOISED = ("latents", "audio_latents")  # what every LTX-2 call denoises (and a checkpoint saves)
_HEADROOM = 0.98


class LTX2Engine(Engine):
    name = "ltx2"

    def __init__(self, spec: dict[str, Any], device: str = "cpu") -> None:
        import diffusers

        super().__init__(spec, device)
        t0 = time.perf_counter()
        self.opts = opts = LTX2Options(**spec)
        self.device = opts.device or device
        cls_name = opts.pipeline or "LTX2Pipeline"
        if cls_name not in ("LTX2Pipeline", "LTX2ImageToVideoPipeline", "LTX2ConditionPipeline"):
            raise ValueError(f"the ltx2 engine runs LTX2Pipeline / LTX2ImageToVideoPipeline, not {cls_name}")
        self.pipe = self.i2v = self.cond = None
        try:
            self.pipe = load_pipeline(getattr(diffusers, cls_name), opts.checkpoint, opts, self.device)
            enable_cache(self.pipe, opts)
            self.i2v = self._sibling(diffusers.LTX2ImageToVideoPipeline)
            self.cond = self._sibling(diffusers.LTX2ConditionPipeline)
            for pipe in (self.pipe, self.i2v, self.cond):
                pipe.set_progress_bar_config(disable=True)
                check_call_kwargs(pipe, opts.call_kwargs)
                # The step callback also sees the sound's latents (checkpoints save both).
                pipe._callback_tensor_inputs = [*type(pipe)._callback_tensor_inputs, *_DENOISED[1:]]
            self.temporal = self.pipe.vae_temporal_compression_ratio
            check_window(opts, self.temporal)
            self.audio_rate = int(self.pipe.vocoder.config.output_sampling_rate)
        except BaseException:
            self.close()  # nothing half-loaded stays in the process's pipeline cache
            raise
        self.load_seconds = time.perf_counter() - t0
        log.info("ltx2 engine ready in %.2fs", self.load_seconds)

    def _sibling(self, cls):
        """Another LTX-2 pipeline class over the same modules: no new weights, nothing moved or
        cast (``from_pipe`` would cast every module to one dtype, fp32-kept ones included)."""
        import inspect

        if isinstance(self.pipe, cls):
            return self.pipe
        accepted = inspect.signature(cls.__init__).parameters
        return cls(**{k: v for k, v in self.pipe.components.items() if k in accepted})

    def check_inputs(self, job: Job, inputs: Inputs) -> None:
        if job.mode in (Mode.IMAGE_TO_VIDEO, Mode.FIRST_AND_LAST_FRAME) and inputs.image is None:
            raise EngineError(f"{job.mode.value} needs a first image")
        if job.mode == Mode.FIRST_AND_LAST_FRAME and inputs.last_image is None:
            raise EngineError("first-and-last-frame needs a last image")

    def generate(self, job: Job, inputs: Inputs, ctx: StepContext) -> Output:
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
        references = []
        if job.mode == Mode.OMNI_REFERENCE:
            control = reference_video_frames(inputs, opts.native_fps, width, height, opts.frames)
            references = [fit_cover(im, width, height) for im in inputs.images]

        # 3. Arguments every call shares; progress counts steps across all chunks, which a run
        #    that starts again continues from its checkpoint.
        resume = self._resume = DenoiseCheckpoints(ctx, opts.steps, _DENOISED)
        call = dict(
            prompt=with_camera(job.prompt, job.options),
            negative_prompt=job.negative_prompt or opts.negative_prompt,
            height=height,
            width=width,
            frame_rate=float(opts.native_fps),
            num_inference_steps=opts.steps,
            sigmas=opts.sigmas,
            guidance_scale=opts.guidance,
            decode_timestep=opts.decode_timestep,
            generator=make_generator(self.device, job.seed),
            output_type="np",
            callback_on_step_end=StepReporter(ctx, opts.steps * len(chunks), self.device, resume),
            callback_on_step_end_tensor_inputs=list(_DENOISED),
            **opts.call_kwargs,
        )

        # 4. Denoise chunk by chunk: video frames and their sound, cross-faded at the seams.
        resume.bind(call["generator"])
        timeline, sound = Timeline(), np.zeros((2, 0), np.float32)
        for chunk in chunks:
            ctx.check_cancelled()
            saved = resume.finished_chunk(chunk.index)
            if saved is not None:
                frames, audio = list(saved["frames"]), saved["audio"]
            else:
                frames, audio = self._chunk(job.mode, chunk, len(chunks), timeline, image, last_image, control,
                                            references, call)
                resume.chunk_done(chunk.index, frames=np.stack(frames), audio=audio)
            timeline.add(chunk, frames)
            sound = self._add_sound(sound, chunk, audio)

        # 5. Exactly the requested frames and size; the sound track.
        return Output(
            frames=output_frames(timeline.frames, job.num_frames, job.width, job.height),
            fps=job.fps,
            audio=self._sound_track(job, inputs, sound),
        )

    def _chunk(self, mode, chunk: Chunk, n_chunks, timeline, image, last_image, control, references, call):
        from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

        first, last, t = chunk.index == 0, chunk.index == n_chunks - 1, self.temporal
        if first and mode == Mode.TEXT_TO_VIDEO:
            return self._call(self.pipe, call, num_frames=chunk.length)
        if first and mode == Mode.IMAGE_TO_VIDEO:
            return self._call(self.i2v, call, num_frames=chunk.length, image=image)
        conditions = []
        if chunk.cond:
            tail = timeline.tail(chunk)[: (chunk.cond - 1) // t * t + 1]  # a video condition is k * t + 1 frames
            conditions.append(LTX2VideoCondition(frames=np.stack(tail), index=0, strength=1.0))
        if first and image is not None:
            conditions.append(LTX2VideoCondition(frames=image, index=0, strength=1.0))
        if last and mode == Mode.FIRST_AND_LAST_FRAME:
            conditions.append(LTX2VideoCondition(frames=last_image, index=-1, strength=1.0))
        if first and mode == Mode.OMNI_REFERENCE:
            strength = self.opts.reference_strength
            window = control[: (min(len(control), chunk.length) - 1) // t * t + 1] if control else []
            if window:
                conditions.append(LTX2VideoCondition(frames=np.stack(window), index=0, strength=strength))
            latents = (chunk.length - 1) // t + 1
            slots = len(references) + (1 if window else 0)
            for j, ref in enumerate(references):
                index = round((j + slots - len(references)) * (latents - 1) / slots)
                conditions.append(LTX2VideoCondition(frames=ref, index=index, strength=strength))
        return self._call(self.cond, call, num_frames=chunk.length, conditions=conditions or None)

    def _call(self, pipe, call: dict[str, Any], **kwargs: Any) -> tuple[list[np.ndarray], np.ndarray]:
        import torch

        reset_cache(pipe)
        with torch.inference_mode(), self._resume.into(pipe):
            out = pipe(**call, **kwargs)
        audio = out.audio[0] if out.audio.ndim == 3 else out.audio
        audio = audio.float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio, np.float32)
        return to_uint8_frames(out.frames), audio

    def _add_sound(self, sound: np.ndarray, chunk: Chunk, audio: np.ndarray) -> np.ndarray:
        """Place a chunk's audio at its start time, cross-fading where it overlaps the previous one.
        Each chunk's audio is first trimmed or zero-padded to its frames' duration."""
        fps, rate = self.opts.native_fps, self.audio_rate
        audio = _pad_or_trim(_stereo(audio), round(chunk.length / fps * rate))
        start = round(chunk.start / fps * rate)
        overlap = sound.shape[1] - start
        if overlap > 0:
            w = np.linspace(0, 1, overlap, endpoint=False, dtype=np.float32)[None, :]
            sound[:, start:] = sound[:, start:] * (1 - w) + audio[:, :overlap] * w
            audio = audio[:, overlap:]
        return np.concatenate([sound, audio], axis=1)

    def _sound_track(self, job: Job, inputs: Inputs, sound: np.ndarray) -> Audio | None:
        """The generated track (when asked for) at 48 kHz, mixed with the reference audios."""
        from ..media.audio import resample

        reference = reference_audio(inputs, job)
        if not job.options.get("generate_audio"):
            return reference
        n = job.duration * AUDIO_RATE
        mix = _pad_or_trim(resample(sound, self.audio_rate, AUDIO_RATE, 2), n)
        if reference is not None:
            mix = mix + _pad_or_trim(reference.samples, n)
        peak = float(np.abs(mix).max(initial=0.0))
        if peak > _HEADROOM:
            mix *= _HEADROOM / peak
        return Audio(samples=mix.astype(np.float32), sample_rate=AUDIO_RATE)

    def close(self) -> None:
        if self.pipe is not None:
            release_pipeline(self.pipe)
        self.pipe = self.i2v = self.cond = None


def _stereo(samples: np.ndarray) -> np.ndarray:
    return np.repeat(samples, 2, axis=0) if samples.shape[0] == 1 else samples[:2]


def _pad_or_trim(samples: np.ndarray, n: int) -> np.ndarray:
    if samples.shape[1] >= n:
        return np.ascontiguousarray(samples[:, :n], dtype=np.float32)
    return np.pad(samples, ((0, 0), (0, n - samples.shape[1]))).astype(np.float32)
