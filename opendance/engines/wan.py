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
  That needs a VACE checkpoint: the mode's own (omni-reference) or ``extend_checkpoint``.

Which class a folder holds is read from its ``model_index.json`` (``pipeline`` overrides it).
The load / plan / chunk loop / resume skeleton is ``diffusers_base.DiffusersEngine``.

TOML options: everything in ``DiffusersOptions`` (checkpoint, pipeline, steps, guidance,
native_fps, frames, overlap, max_area, dtype, device, cache, cpu_offload, vae_tiling,
negative_prompt, call_kwargs) plus ``extend_checkpoint`` and ``guidance_2``.
"""

from __future__ import annotations

import json
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

WAN_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline", "WanVACEPipeline")


def _class_name(folder: Path) -> str:
    try:
        return json.loads((Path(folder) / "model_index.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{folder}: not a diffusers folder ({exc}); see docs/models.md") from exc


class WanEngine(DiffusersEngine):
    name = "wan"
    options = WanOptions
    # TaylorSeer's default module patterns match nothing in a Wan transformer: cache whole blocks.
    cache_defaults = {"TaylorSeer": {"cache_identifiers": [r"^blocks\.\d+$"]}}

    def load(self) -> None:
        import diffusers

        opts = self.opts
        cls_name = opts.pipeline or _class_name(opts.checkpoint)
        if cls_name not in WAN_PIPELINES:
            raise ValueError(f"{opts.checkpoint} holds a {cls_name}; the wan engine runs {', '.join(WAN_PIPELINES)}")
        self.vace = None
        self.pipe = self.load_pipeline(getattr(diffusers, cls_name), opts.checkpoint)
        # The VACE pipeline that makes omni-reference videos and every chunk after the first.
        self.vace = self.pipe if cls_name == "WanVACEPipeline" else None
        if self.vace is None and opts.extend_checkpoint is not None:
            # Its own fused LoRAs when given (an image-to-video LoRA does not fit a VACE).
            extend = opts.model_copy(update={"loras": opts.extend_loras}) if opts.extend_loras is not None else None
            self.vace = self.load_pipeline(
                diffusers.WanVACEPipeline, opts.extend_checkpoint, opts=extend, **self._shared_components(opts.extend_checkpoint)
            )
        self.temporal = self.pipe.vae_scale_factor_temporal
        transformer = self.pipe.transformer or self.pipe.transformer_2
        self.multiple = self.pipe.vae_scale_factor_spatial * transformer.config.patch_size[1]

    def _shared_components(self, folder: Path) -> dict[str, Any]:
        """Reuse the text encoder, tokenizer and VAE when the VACE checkpoint has the same VAE
        (every Wan 2.1/2.2 14B model does): saves ~11 GB of UMT5 on the GPU. Not with CPU offload,
        whose hooks belong to one pipeline."""
        try:
            vae = json.loads((Path(folder) / "vae" / "config.json").read_text())
        except (OSError, ValueError):
            return {}
        if self.opts.cpu_offload or vae.get("z_dim") != self.pipe.vae.config.z_dim:
            return {}
        return dict(text_encoder=self.pipe.text_encoder, tokenizer=self.pipe.tokenizer, vae=self.pipe.vae)

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
            if mode == Mode.FIRST_AND_LAST_FRAME and not takes_last and len(chunks) == 1:
                raise EngineError(f"{self.opts.checkpoint} cannot take a last image")
        if mode == Mode.OMNI_REFERENCE and self.vace is None:
            raise EngineError("omni-reference on Wan needs a VACE checkpoint (WanVACEPipeline)")
        if len(chunks) > 1 and self.vace is None:
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
        if first and self.pipe is not self.vace:
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
        return {"frames": np.stack(to_uint8_frames(self.run_pipeline(pipe, plan, **kwargs).frames))}

    def close(self) -> None:
        super().close()
        self.vace = None
