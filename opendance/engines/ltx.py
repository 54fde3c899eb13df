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

The conditions are planned as LTX-2's are (``ltx_conditions``); the load / plan / chunk loop /
resume skeleton is ``diffusers_base.DiffusersEngine``.

Distilled checkpoints (LTX-Video 0.9.7/0.9.8 distilled) take ``timesteps`` (their schedule, whose
length is the step count) and ``guidance = 1``.

Two stages (``upsampler`` set, ``ltx_two_stage``): each chunk is made at ``downscale_factor`` of
the grid with ``output_type = "latent"``, its latents doubled by ``LTXLatentUpsamplePipeline``,
then refined at twice the stage-1 size with the same conditions: ``latents`` = the upsampled
ones, ``timesteps = refine_timesteps`` (or ``refine_steps`` of the default schedule) and
``denoise_strength`` (below 1: at 1 the pipeline would start from fresh noise and drop the
upsampled latents). Progress counts both stages' steps.

TOML options: everything in ``DiffusersOptions`` plus ``timesteps``, ``decode_timestep``,
``image_cond_noise_scale``, ``reference_strength``, and for two stages ``upsampler``,
``downscale_factor``, ``adain_factor``, ``tone_map_compression_ratio``, ``refine_timesteps``,
``refine_steps`` and ``denoise_strength``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ._torch_utils import Chunk, Timeline, to_uint8_frames
from .base import Job
from .diffusers_base import Plan
from .ltx_two_stage import LTXFamilyEngine
from .options import LTXOptions


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


class LTXEngine(LTXFamilyEngine):
    name = "ltx"
    options = LTXOptions
    opts: LTXOptions
    resume_merge = {"latents": _keep_hard_conditions}
    # Its per-token steps look the next sigma up in the whole schedule, not by the loop's index.
    whole_sigmas = True

    def load(self) -> None:
        import diffusers

        if self.opts.pipeline not in (None, "LTXConditionPipeline"):
            raise ValueError(f"the ltx engine runs LTXConditionPipeline, not {self.opts.pipeline}")
        self.pipe = self.load_pipeline(diffusers.LTXConditionPipeline, self.opts.checkpoint)
        self.temporal = self.pipe.vae_temporal_compression_ratio
        self.multiple = 32
        if self.opts.upsampler is not None:
            from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

            self.start_two_stage(diffusers.LTXLatentUpsamplePipeline, LTXLatentUpsamplerModel)

    def call_arguments(self, job: Job) -> dict[str, Any]:
        opts = self.opts
        return dict(
            frame_rate=opts.native_fps,
            timesteps=opts.timesteps,
            decode_timestep=opts.decode_timestep,
            image_cond_noise_scale=opts.image_cond_noise_scale,
        )

    def conditions(self, plan: Plan, chunk: Chunk, timeline: Timeline) -> list:
        """The chunk's ``LTXVideoCondition``s (frames counted in native frames)."""
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

        planned = self.planned_conditions(plan, chunk, timeline)
        out = []
        for c in planned:
            media = dict(video=[Image.fromarray(f) for f in c.video]) if c.video is not None else dict(image=c.image)
            out.append(LTXVideoCondition(**media, frame_index=c.frame, strength=c.strength))
        return out

    def denoise_chunk(self, plan: Plan, chunk: Chunk, timeline: Timeline) -> dict[str, np.ndarray]:
        conditions = self.conditions(plan, chunk, timeline)
        call: dict[str, Any] = dict(num_frames=chunk.length, conditions=conditions or None)
        if self.two_stage is not None:
            opts = self.opts
            first, width, height = self.first_stage(self.pipe, plan, **call)
            call.update(
                latents=self.two_stage.upsample(first.frames, width, height),
                timesteps=opts.refine_timesteps,
                num_inference_steps=opts.refine_steps,
                denoise_strength=opts.denoise_strength,
            )
        out = self.run_pipeline(self.pipe, plan, **call)
        return {"frames": np.stack(to_uint8_frames(out.frames))}
