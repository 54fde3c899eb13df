"""Wan 2.1 / 2.2 through diffusers.

- text-to-video: ``WanPipeline`` (Wan 2.2 A14B's two experts work as they are: ``transformer_2``
  and ``boundary_ratio`` come with the checkpoint; ``guidance_2`` sets ``guidance_scale_2``).
- image-to-video, first-and-last-frame: ``WanImageToVideoPipeline`` with ``image`` (and
  ``last_image``).
- omni-reference: ``WanVACEPipeline``: reference images as ``reference_images``, reference videos
  (one after another, at the native fps) as the conditioning ``video`` with an all-white ``mask``
  (re-render everything, following the video).
- Durations past the native window: chunks; every chunk after the first is a VACE call whose
  first frames are the previous chunk's tail, kept (black mask), and the seam is cross-faded.
  Every latent frame whose native frames are all kept is kept (``latent_mask``).
  That needs a VACE checkpoint: the mode's own (omni-reference) or ``extend_checkpoint``,
  loaded on the first job longer than the window (a 5 s job never loads it).

Which class a folder holds is read from its ``model_index.json`` (``pipeline`` overrides it).
The load / plan / chunk loop / resume skeleton is ``diffusers_base.DiffusersEngine``.

TOML options: everything in ``DiffusersOptions`` (checkpoint, pipeline, steps, guidance,
native_fps, frames, overlap, max_area, dtype, device, cache, cpu_offload, vae_tiling,
negative_prompt, call_kwargs, scheduler) plus ``extend_checkpoint``, ``extend_scheduler`` (the
extend pipeline's scheduler settings; default ``scheduler``) and ``guidance_2``. The VAE and
the CLIP image encoder load in float32 unless the ``dtype`` table names them.
"""

from __future__ import annotations

import contextlib
import json
import types
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..domain import Mode
from ..errors import EngineError
from ._torch_utils import Chunk, Timeline, reference_video_frames, to_uint8_frames
from .base import Inputs, Job
from .diffusers_base import DiffusersEngine, Plan
from .options import WanOptions
from .schedulers import EngineSchedulers

WAN_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline", "WanVACEPipeline")


def _class_name(folder: Path) -> str:
    try:
        return json.loads((Path(folder) / "model_index.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{folder}: not a diffusers folder ({exc}); see docs/models.md") from exc


def latent_mask(mask, temporal: int):
    """A VACE mask (B, C, F, H, W; 1 = generate, 0 = keep) per latent frame: latent 0 is native
    frame 0, latent j frames ``temporal * (j - 1) + 1 .. temporal * j``; a latent frame is kept
    only when all its frames are, and every fully kept one is (nearest-exact resampling, which
    the pipeline uses, samples one frame each and drops some: 9 kept frames kept 2 latents, not 3)."""
    import torch

    first, rest = mask[:, :, :1], mask[:, :, 1:]
    b, c, f, h, w = rest.shape
    groups = rest.reshape(b, c, f // temporal, temporal, h, w).amax(dim=3) if f else rest
    return torch.cat([first, groups], dim=2)


@contextlib.contextmanager
def whole_latent_masks(pipe):
    """Around one VACE call: its ``prepare_masks`` downsamples time with ``latent_mask`` (the
    spatial layout is the pipeline's own: 8 x 8 pixels to 64 channels)."""
    if pipe is None:
        yield
        return
    import torch

    def prepare_masks(self, mask, reference_images=None, generator=None):
        t, s = self.vae_scale_factor_temporal, self.vae_scale_factor_spatial
        patch = (self.transformer or self.transformer_2).config.patch_size[1]
        out = []
        for i, mask_ in enumerate(mask):
            _, frames, height, width = mask_.shape
            nh, nw = height // (s * patch) * patch, width // (s * patch) * patch
            m = mask_[0].view(frames, nh, s, nw, s).permute(2, 4, 0, 1, 3).flatten(0, 1)  # [s*s, F, h, w]
            m = latent_mask(m.unsqueeze(0), t).squeeze(0)
            refs = reference_images[i] if reference_images is not None else [None]
            if len(refs) > 0:
                m = torch.cat([torch.zeros_like(m[:, : len(refs)]), m], dim=1)
            out.append(m)
        return torch.stack(out)

    pipe.prepare_masks = types.MethodType(prepare_masks, pipe)
    try:
        yield
    finally:
        del pipe.prepare_masks


class WanEngine(DiffusersEngine):
    name = "wan"
    options = WanOptions
    opts: WanOptions
    # TaylorSeer's default module patterns match nothing in a Wan transformer: cache whole blocks.
    cache_defaults = {"TaylorSeer": {"cache_identifiers": [r"^blocks\.\d+$"]}}

    def load(self) -> None:
        import diffusers

        opts = self.opts
        cls_name = opts.pipeline or _class_name(opts.checkpoint)
        if cls_name not in WAN_PIPELINES:
            raise ValueError(f"{opts.checkpoint} holds a {cls_name}; the wan engine runs {', '.join(WAN_PIPELINES)}")
        self._vace = None
        self._extend_schedulers: EngineSchedulers | None = None
        self.pipe = self.load_pipeline(getattr(diffusers, cls_name), opts.checkpoint)
        # The VACE pipeline that makes omni-reference videos and every chunk after the first:
        # the mode's own, or extend_checkpoint's, loaded on the first job that needs it.
        self.main_is_vace = cls_name == "WanVACEPipeline"
        self._vace = self.pipe if self.main_is_vace else None
        self.temporal = self.pipe.vae_scale_factor_temporal
        transformer = self.pipe.transformer or self.pipe.transformer_2
        self.multiple = self.pipe.vae_scale_factor_spatial * transformer.config.patch_size[1]

    @property
    def has_vace(self) -> bool:
        return self.main_is_vace or self.opts.extend_checkpoint is not None

    @property
    def vace(self):
        """The VACE pipeline (None without one), loaded now if it is not yet. Its text encoder,
        tokenizer and VAE are the main pipeline's when their weights are the same (every Wan
        2.1/2.2 14B model's are): the process-wide component cache (``components``) passes them in."""
        if self._vace is None and self.opts.extend_checkpoint is not None:
            import diffusers

            from ._torch_utils import check_call_kwargs

            # Its own fused LoRAs when given (an image-to-video LoRA does not fit a VACE).
            opts = self.opts
            extend = opts.model_copy(update={"loras": opts.extend_loras}) if opts.extend_loras is not None else None
            vace = self.load_pipeline(diffusers.WanVACEPipeline, opts.extend_checkpoint, opts=extend)
            check_call_kwargs(vace, self.opts.call_kwargs)
            self.schedulers_for(vace).own(vace)
            self._vace = vace
        return self._vace

    def schedulers_for(self, pipe):
        """The extend pipeline's calls run with ``extend_scheduler`` when it is set (the VACE 2.1
        model at 720p samples at 5.0 while a Wan 2.2 text model samples at 12.0)."""
        if self.opts.extend_scheduler is None or self.main_is_vace or pipe is self.pipe:
            return self.schedulers
        if self._extend_schedulers is None:
            self._extend_schedulers = EngineSchedulers(self.opts.extend_scheduler)
        return self._extend_schedulers

    def check_inputs(self, job: Job, inputs: Inputs, chunks: list[Chunk]) -> None:
        super().check_inputs(job, inputs, chunks)
        mode, kind = job.mode, type(self.pipe).__name__
        if mode == Mode.TEXT_TO_VIDEO and kind == "WanImageToVideoPipeline":
            raise EngineError(f"{self.opts.checkpoint} is an image-to-video model; it cannot do text-to-video")
        if mode in (Mode.IMAGE_TO_VIDEO, Mode.FIRST_AND_LAST_FRAME) and kind == "WanPipeline":
            raise EngineError(f"{self.opts.checkpoint} is a text-to-video model; it cannot start from an image")
        if kind == "WanImageToVideoPipeline":
            config = (self.pipe.transformer or self.pipe.transformer_2).config
            needs_last = config.pos_embed_seq_len is not None  # a first+last-frame (FLF2V) transformer
            takes_last = needs_last or config.image_dim is None  # CLIP-free (Wan 2.2) models take one too
            if mode == Mode.IMAGE_TO_VIDEO and needs_last:
                raise EngineError(f"{self.opts.checkpoint} is a first+last-frame model; it needs a last image")
            if mode == Mode.FIRST_AND_LAST_FRAME and len(chunks) == 1 and self.pipe.config.get("expand_timesteps"):
                # Wan2.2-TI2V-5B: the pipeline conditions on the first frame only and ignores last_image.
                raise EngineError(
                    f"{self.opts.checkpoint} (expand_timesteps, e.g. Wan2.2-TI2V-5B) conditions on the first frame only "
                    "and would drop the last image: give first-and-last-frame a first+last-frame checkpoint "
                    "(Wan2.1-FLF2V-14B-720P, Wan2.2-I2V-A14B) or a VACE one"
                )
            if mode == Mode.FIRST_AND_LAST_FRAME and not takes_last and len(chunks) == 1:
                raise EngineError(f"{self.opts.checkpoint} cannot take a last image")
        if mode == Mode.OMNI_REFERENCE and not self.has_vace:
            raise EngineError("omni-reference on Wan needs a VACE checkpoint (WanVACEPipeline)")
        if len(chunks) > 1 and not self.has_vace:
            raise EngineError(
                f"{job.duration} s needs {len(chunks)} chunks of at most {self.opts.frames} frames, and this model "
                "has no VACE checkpoint to extend with (set extend_checkpoint)"
            )

    def references(self, job: Job, inputs: Inputs, width: int, height: int, total: int):
        """VACE follows the reference videos over every chunk (all ``total`` frames) and takes
        the reference images as they are."""
        control = reference_video_frames(inputs, self.opts.native_fps, width, height, total)
        return control, [im.convert("RGB") for im in inputs.images] or None

    def denoise_chunk(self, plan: Plan, chunk: Chunk, timeline: Timeline) -> dict[str, np.ndarray]:
        mode, first, last = plan.job.mode, chunk.index == 0, chunk.index == plan.last
        image, last_image = plan.image, plan.last_image
        if first and not self.main_is_vace:
            if mode == Mode.TEXT_TO_VIDEO:
                return self._call(self.pipe, plan, num_frames=chunk.length)
            if mode == Mode.IMAGE_TO_VIDEO:
                return self._call(self.pipe, plan, num_frames=chunk.length, image=image)
            if mode == Mode.FIRST_AND_LAST_FRAME and last:
                return self._call(self.pipe, plan, num_frames=chunk.length, image=image, last_image=last_image)
        # VACE: frames known in advance are kept (black mask), the rest generated (white mask),
        # following the reference video where there is one.
        known: dict[int, Any] = dict(enumerate(timeline.tail(chunk)))
        if first and image is not None:
            known[0] = image
        if last and mode == Mode.FIRST_AND_LAST_FRAME:
            known[chunk.length - 1] = last_image
        window = plan.control[chunk.start : chunk.start + chunk.length]
        video = mask = None
        if known or window:
            width, height = plan.width, plan.height
            gray = Image.new("RGB", (width, height), (127, 127, 127))
            keep, make = Image.new("RGB", (width, height), (0, 0, 0)), Image.new("RGB", (width, height), (255, 255, 255))
            video, mask = [], []
            for i in range(chunk.length):
                if i in known:
                    frame = known[i]
                    video.append(frame if isinstance(frame, Image.Image) else Image.fromarray(frame))
                    mask.append(keep)
                else:
                    video.append(Image.fromarray(window[i]) if i < len(window) else gray)
                    mask.append(make)
        return self._call(self.vace, plan, num_frames=chunk.length, video=video, mask=mask, reference_images=plan.references)

    def _call(self, pipe, plan: Plan, **kwargs: Any) -> dict[str, np.ndarray]:
        if self.opts.guidance_2 is not None and pipe.config.get("boundary_ratio") is not None:
            kwargs["guidance_scale_2"] = self.opts.guidance_2  # only two-expert (Wan 2.2 A14B) pipelines take it
        with whole_latent_masks(pipe if kwargs.get("mask") is not None else None):
            return {"frames": np.stack(to_uint8_frames(self.run_pipeline(pipe, plan, **kwargs).frames))}

    def close(self) -> None:
        super().close()
        self._vace = self._extend_schedulers = None
