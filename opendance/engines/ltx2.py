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

The conditions are planned as LTX-Video's are (``ltx_conditions``); the load / plan / chunk loop /
resume skeleton is ``diffusers_base.DiffusersEngine``.

Distilled checkpoints (LTX-2.3 distilled) take ``sigmas`` (their schedule; its length is the step
count) and ``guidance = 1``.

With ``sigmas`` the scheduler runs them as given (``use_dynamic_shifting = false``,
``shift_terminal`` off, unless the ``scheduler`` table says otherwise): a folder whose scheduler
shifts dynamically would otherwise re-shift the distilled schedule.

Two stages (``upsampler`` set, ``ltx_two_stage``; the distilled recipe, so ``sigmas`` too): each
chunk's call is made at ``downscale_factor`` of the grid with ``output_type = "latent"`` (video
and audio latents), the video latents doubled by ``LTX2LatentUpsamplePipeline``, then the same
pipeline refines both at twice the stage-1 size: ``latents`` / ``audio_latents`` from stage 1,
``sigmas = refine_sigmas`` (diffusers' ``STAGE_2_DISTILLED_SIGMA_VALUES``), ``noise_scale`` their
first value, ``guidance_scale = refine_guidance``, as diffusers' distilled example does; the
same scheduler settings as stage 1 (no dynamic shift). Progress counts both stages' steps.

TOML options: everything in ``DiffusersOptions`` plus ``sigmas``, ``decode_timestep``,
``reference_strength``, and for two stages ``upsampler``, ``downscale_factor``, ``adain_factor``,
``tone_map_compression_ratio``, ``refine_sigmas``, ``refine_noise_scale`` and
``refine_guidance``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..domain import Mode
from ._torch_utils import Chunk, Timeline, reference_audio, to_uint8_frames
from .base import Audio, Inputs, Job
from .diffusers_base import Plan
from .ltx_two_stage import LTXFamilyEngine
from .options import LTX2Options

AUDIO_RATE = 48000
_HEADROOM = 0.98
PIPELINES = ("LTX2Pipeline", "LTX2ImageToVideoPipeline", "LTX2ConditionPipeline")


class LTX2Engine(LTXFamilyEngine):
    name = "ltx2"
    options = LTX2Options
    opts: LTX2Options
    denoised = ("latents", "audio_latents")  # every LTX-2 call denoises both (a checkpoint saves both)
    # Its guidance steps read ``scheduler.sigmas[i]`` by the loop's index: a resumed call cuts them.
    loop_sigmas = True
    # A distilled schedule is used as given: no dynamic (resolution) shift, no terminal stretch,
    # as diffusers' LTX-2 distilled recipe sets them (the ``scheduler`` option overrides these).
    DISTILLED_SCHEDULER = {"use_dynamic_shifting": False, "shift_terminal": None}

    def scheduler_overrides(self) -> dict[str, Any]:
        if self.opts.sigmas is None:
            return super().scheduler_overrides()
        config = self.pipe.scheduler.config
        defaults = {k: v for k, v in self.DISTILLED_SCHEDULER.items() if k in config and config[k] != v}
        return {**defaults, **self.opts.scheduler}

    def load(self) -> None:
        import diffusers

        cls_name = self.opts.pipeline or "LTX2Pipeline"
        if cls_name not in PIPELINES:
            raise ValueError(f"the ltx2 engine runs LTX2Pipeline / LTX2ImageToVideoPipeline, not {cls_name}")
        self.i2v = self.cond = None
        self.pipe = self.load_pipeline(getattr(diffusers, cls_name), self.opts.checkpoint)
        self.i2v = self.sibling(diffusers.LTX2ImageToVideoPipeline)
        self.cond = self.sibling(diffusers.LTX2ConditionPipeline)
        self.temporal = self.pipe.vae_temporal_compression_ratio
        self.multiple = 32
        self.audio_rate = int(self.pipe.vocoder.config.output_sampling_rate)
        if self.opts.upsampler is not None:
            from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

            self.start_two_stage(diffusers.LTX2LatentUpsamplePipeline, LTX2LatentUpsamplerModel)

    def call_arguments(self, job: Job) -> dict[str, Any]:
        opts = self.opts
        return dict(frame_rate=float(opts.native_fps), sigmas=opts.sigmas, decode_timestep=opts.decode_timestep)

    def conditions(self, plan: Plan, chunk: Chunk, timeline: Timeline) -> list:
        """The chunk's ``LTX2VideoCondition``s (their ``index`` counts latent frames)."""
        from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

        planned = self.planned_conditions(plan, chunk, timeline)
        return [
            LTX2VideoCondition(
                frames=np.stack(c.video) if c.video is not None else c.image, index=c.frame // self.temporal, strength=c.strength
            )
            for c in planned
        ]

    def denoise_chunk(self, plan: Plan, chunk: Chunk, timeline: Timeline) -> dict[str, np.ndarray]:
        mode, first = plan.job.mode, chunk.index == 0
        if first and mode == Mode.TEXT_TO_VIDEO:
            return self._call(self.pipe, plan, num_frames=chunk.length)
        if first and mode == Mode.IMAGE_TO_VIDEO:
            return self._call(self.i2v, plan, num_frames=chunk.length, image=plan.image)
        conditions = self.conditions(plan, chunk, timeline)
        return self._call(self.cond, plan, num_frames=chunk.length, conditions=conditions or None)

    def _call(self, pipe, plan: Plan, **kwargs: Any) -> dict[str, np.ndarray]:
        import torch

        if self.two_stage is not None:
            opts = self.opts
            first, width, height = self.first_stage(pipe, plan, **kwargs)
            sigmas = list(opts.refine_sigmas)
            kwargs.update(
                latents=self.two_stage.upsample(first.frames, width, height, num_frames=kwargs["num_frames"]),
                audio_latents=first.audio,
                sigmas=sigmas,
                num_inference_steps=len(sigmas),
                noise_scale=opts.refine_noise_scale if opts.refine_noise_scale is not None else sigmas[0],
                guidance_scale=opts.refine_guidance,
            )
        out = self.run_pipeline(pipe, plan, **kwargs)
        audio = out.audio[0] if out.audio.ndim == 3 else out.audio
        audio = audio.float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio, np.float32)
        return {"frames": np.stack(to_uint8_frames(out.frames)), "audio": audio}

    def chunk_finished(self, plan: Plan, chunk: Chunk, arrays: dict[str, np.ndarray]) -> None:
        sound = plan.sound if plan.sound is not None else np.zeros((2, 0), np.float32)
        plan.sound = self._add_sound(sound, chunk, arrays["audio"])

    def audio(self, plan: Plan, inputs: Inputs) -> Audio | None:
        sound = plan.sound if plan.sound is not None else np.zeros((2, 0), np.float32)  # no chunk made sound
        return self._sound_track(plan.job, inputs, sound)

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
        super().close()
        self.i2v = self.cond = None


def _stereo(samples: np.ndarray) -> np.ndarray:
    return np.repeat(samples, 2, axis=0) if samples.shape[0] == 1 else samples[:2]


def _pad_or_trim(samples: np.ndarray, n: int) -> np.ndarray:
    if samples.shape[1] >= n:
        return np.ascontiguousarray(samples[:, :n], dtype=np.float32)
    return np.pad(samples, ((0, 0), (0, n - samples.shape[1]))).astype(np.float32)
