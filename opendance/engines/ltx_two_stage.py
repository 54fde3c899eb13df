"""The LTX families' two-stage recipe, on when a mode sets ``upsampler`` (inert otherwise).

As diffusers documents it for LTX-Video 0.9.7 distilled (``LTXLatentUpsamplePipeline``) and
LTX-2 distilled (``LTX2LatentUpsamplePipeline``), for each chunk:

1. stage 1 at ``downscale_factor`` of the grid, each side rounded down to a multiple of the
   VAE's 32 (``round_to_nearest_resolution_acceptable_by_vae``), ``output_type = "latent"``;
2. the latent upsampler doubles the latents' width and height (``adain_factor``,
   ``tone_map_compression_ratio``), ``output_type = "latent"``;
3. a short refining pass at twice the stage-1 size on the upsampled latents, which the VAE
   decodes (LTX-Video: ``refine_timesteps`` / ``refine_steps`` cut by ``denoise_strength``;
   LTX-2: ``refine_sigmas``, re-noised to ``refine_noise_scale``, at ``refine_guidance``).

The frames are the refining pass's, at twice the stage-1 size (the engine's grid: ``grid``);
they are fitted to the output size afterwards as every engine's are (diffusers' example
resizes them to the expected size too). With ``downscale_factor = 0.5`` the refine is at the
grid itself (for a grid whose sides are multiples of 64), with LTX-Video's documented 2/3 at
4/3 of it.

The upsampler is loaded on its own (``LTXLatentUpsamplerModel`` / ``LTX2LatentUpsamplerModel``
from the folder's ``latent_upsampler``, or from the folder itself when it is the model's) and
runs with the main pipeline's VAE (whose ``latents_mean`` / ``latents_std`` it needs): the
published folders' own VAE copy is not loaded. Its weights go through the process-wide component
cache (``components``), so the modes of a model hold one upsampler; the memory plan counts it
(``memory_plan.upsampler_component``). It is placed on the device also under ``cpu_offload``.

Checkpoints: a two-stage chunk is saved when it is finished, not inside it (the denoised
tensors change size between the stages); a resumed job remakes the chunk it was in from its
start, and the video is the same.

Only engine modules import this (it imports torch); `LTXFamilyEngine` is the base of both LTX engines.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

from . import components
from ._torch_utils import DTYPES, Chunk, Timeline
from .base import Job
from .diffusers_base import DiffusersEngine, Plan
from .ltx_conditions import Condition, plan_conditions
from .memory_plan import upsampler_dtype, upsampler_folder
from .options import LTX2Options, LTXOptions

VAE_MULTIPLE = 32  # what the LTX VAEs' input sides are multiples of


def stage_grids(width: int, height: int, factor: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """(stage 1, refine) sizes for a grid of ``width`` x ``height``."""
    w1, h1 = (max(VAE_MULTIPLE, int(round(side * factor, 6)) // VAE_MULTIPLE * VAE_MULTIPLE) for side in (width, height))
    return (w1, h1), (2 * w1, 2 * h1)


class TwoStage:
    """One engine's upsampler: ``upsample(latents, width, height, num_frames)`` is step 2."""

    def __init__(self, engine: Any, pipeline_cls: Any, model_cls: Any) -> None:
        opts = engine.opts
        self.opts = opts
        folder = upsampler_folder(opts.upsampler)
        dtype = upsampler_dtype(opts.dtype)
        # Keyed as the memory plan keys it: (the folder above, the model folder's name).
        where, name = folder.parent, folder.name
        dtypes = {name: dtype}
        config = json.loads((folder / "config.json").read_text())
        _check_upsampler(config, model_cls.__name__, engine.pipe.vae.config.latent_channels, opts.upsampler)
        found = components.lookup(where, dtypes, engine.device)
        model = found.get(name)
        if model is None:
            model = model_cls.from_pretrained(str(folder), torch_dtype=DTYPES[dtype], local_files_only=True)
            model.to(engine.device).eval()
        self._held = components.adopt(types.SimpleNamespace(**{name: model}), where, dtypes, engine.device)
        self.pipe = pipeline_cls(vae=engine.pipe.vae, latent_upsampler=model)
        self.pipe.set_progress_bar_config(disable=True)

    def grids(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        return stage_grids(width, height, self.opts.downscale_factor)

    def upsample(self, latents, width: int, height: int, **kwargs: Any):
        """The stage-1 ``latents`` (of a ``width`` x ``height`` call) at twice the size."""
        import torch

        with torch.inference_mode():
            out = self.pipe(
                latents=latents,
                width=width,
                height=height,
                adain_factor=self.opts.adain_factor,
                tone_map_compression_ratio=self.opts.tone_map_compression_ratio,
                output_type="latent",
                **kwargs,
            )
        return out.frames

    def close(self) -> None:
        components.release(self._held)
        self._held = []
        self.pipe = None


def _check_upsampler(config: dict[str, Any], cls_name: str, latent_channels: int, path: Path) -> None:
    """The family's upsampler class, for the VAE's latent channels, spatial x2 (what the refine
    grid assumes), from its ``config.json``; ``ValueError`` naming the option otherwise."""
    where = f"upsampler = {str(path)!r}"
    if config.get("_class_name", cls_name) != cls_name:
        raise ValueError(f"{where}: a {config.get('_class_name')}, where this engine runs a {cls_name}")
    if config.get("in_channels", latent_channels) != latent_channels:
        raise ValueError(
            f"{where}: made for {config.get('in_channels')} latent channels, this checkpoint's VAE has {latent_channels}"
        )
    scale = float(config.get("rational_spatial_scale", config.get("spatial_scale", 2.0)))  # (older conversions: spatial_scale)
    if not config.get("spatial_upsample", True) or config.get("temporal_upsample", False) or scale != 2.0:
        raise ValueError(
            f"{where}: the engine runs a spatial x2 latent upsampler; this one is "
            f"spatial_upsample={config.get('spatial_upsample')}, temporal_upsample={config.get('temporal_upsample')}, "
            f"scale {scale}"
        )


class LTXFamilyEngine(DiffusersEngine):
    """What the ``ltx`` and ``ltx2`` engines share: the conditions a chunk plans, and the
    two-stage recipe when a mode sets ``upsampler`` (``start_two_stage`` in ``load``)."""

    opts: LTXOptions | LTX2Options
    two_stage: TwoStage | None = None

    def start_two_stage(self, pipeline_cls: Any, model_cls: Any) -> None:
        """From ``load``, when the mode sets ``upsampler``."""
        self.two_stage = TwoStage(self, pipeline_cls, model_cls)
        self.mid_chunk_checkpoints = False  # the denoised latents change size between the stages

    def first_stage(self, pipe: Any, plan: Plan, **kwargs: Any) -> tuple[Any, int, int]:
        """Step 1 of a two-stage chunk: the call at the stage-1 size (half the grid, which is the
        refine size) with latents out, then a cancel check; its output and that size."""
        width, height = plan.width // 2, plan.height // 2
        out = self.run_pipeline(pipe, plan, **kwargs, width=width, height=height, output_type="latent")
        plan.resume.ctx.check_cancelled()
        return out, width, height

    def grid(self, job: Job) -> tuple[int, int]:
        width, height = super().grid(job)
        return self.two_stage.grids(width, height)[1] if self.two_stage is not None else (width, height)

    def steps_per_chunk(self) -> int:
        return self.opts.steps + (self.opts.refined_steps if self.two_stage is not None else 0)

    def planned_conditions(self, plan: Plan, chunk: Chunk, timeline: Timeline) -> list[Condition]:
        """The chunk's conditions (frames counted in native frames), for the family to wrap."""
        return plan_conditions(
            plan.job.mode,
            chunk,
            chunk.index == plan.last,
            timeline,
            temporal=self.temporal,
            image=plan.image,
            last_image=plan.last_image,
            control=plan.control,
            references=plan.references or [],
            strength=self.opts.reference_strength,
        )

    def close(self) -> None:
        two_stage, self.two_stage = self.two_stage, None
        if two_stage is not None:
            two_stage.close()
        super().close()
