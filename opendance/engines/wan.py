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

TOML options: everything in ``DiffusersOptions`` (checkpoint, pipeline, steps, guidance,
native_fps, frames, overlap, max_area, dtype, device, cache, cpu_offload, vae_tiling,
negative_prompt, call_kwargs) plus ``extend_checkpoint`` and ``guidance_2``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
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
from .options import WanOptions

log = logging.getLogger("opendance.engines.wan")

WAN_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline", "WanVACEPipeline")
# TaylorSeer's default module patterns match nothing in a Wan transformer: cache whole blocks.
CACHE_DEFAULTS = {"TaylorSeer": {"cache_identifiers": [r"^blocks\.\d+$"]}}


def _class_name(folder: Path) -> str:
    try:
        return json.loads((Path(folder) / "model_index.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{folder}: not a diffusers folder ({exc}); see docs/models.md") from exc


class WanEngine(Engine):
    name = "wan"

    def __init__(self, spec: dict[str, Any], device: str = "cpu") -> None:
        import diffusers

        super().__init__(spec, device)
        t0 = time.perf_counter()
        self.opts = opts = WanOptions(**spec)
        self.device = opts.device or device
        cls_name = opts.pipeline or _class_name(opts.checkpoint)
        if cls_name not in WAN_PIPELINES:
            raise ValueError(f"{opts.checkpoint} holds a {cls_name}; the wan engine runs {', '.join(WAN_PIPELINES)}")
        self.pipe = self.vace = None
        try:
            self.pipe = load_pipeline(getattr(diffusers, cls_name), opts.checkpoint, opts, self.device)
            # The VACE pipeline that makes omni-reference videos and every chunk after the first.
            self.vace = self.pipe if cls_name == "WanVACEPipeline" else None
            if self.vace is None and opts.extend_checkpoint is not None:
                self.vace = load_pipeline(diffusers.WanVACEPipeline, opts.extend_checkpoint, opts, self.device,
                                          **self._shared_components(opts.extend_checkpoint))
            for pipe in {id(p): p for p in (self.pipe, self.vace) if p is not None}.values():
                enable_cache(pipe, opts, CACHE_DEFAULTS.get(opts.cache.type) if opts.cache else None)
                check_call_kwargs(pipe, opts.call_kwargs)
            check_window(opts, self.pipe.vae_scale_factor_temporal)
            transformer = self.pipe.transformer or self.pipe.transformer_2
            self.multiple = self.pipe.vae_scale_factor_spatial * transformer.config.patch_size[1]
        except BaseException:
            self.close()  # nothing half-loaded stays in the process's pipeline cache
            raise
        self.load_seconds = time.perf_counter() - t0
        log.info("wan engine (%s) ready in %.2fs", cls_name, self.load_seconds)

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
        mode, kind = job.mode, type(self.pipe).__name__
        if mode in (Mode.IMAGE_TO_VIDEO, Mode.FIRST_AND_LAST_FRAME) and inputs.image is None:
            raise EngineError(f"{mode.value} needs a first image")
        if mode == Mode.FIRST_AND_LAST_FRAME and inputs.last_image is None:
            raise EngineError("first-and-last-frame needs a last image")
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

    def generate(self, job: Job, inputs: Inputs, ctx: StepContext) -> Output:
        opts = self.opts
        temporal = self.pipe.vae_scale_factor_temporal
        # 1. Plan: the native grid, how many native frames, in which chunks.
        width, height = grid_size(job.width, job.height, opts.max_area, self.multiple)
        total = round_frames(job.duration * opts.native_fps, temporal)
        chunks = plan_chunks(total, opts.frames, opts.overlap, temporal)
        self.check_inputs(job, inputs, chunks)

        # 2. Inputs on the grid: images cover-cropped, reference videos at the native fps.
        image = fit_cover(inputs.image, width, height) if inputs.image is not None else None
        last_image = fit_cover(inputs.last_image, width, height) if inputs.last_image is not None else None
        control: list[np.ndarray] = []
        references = None
        if job.mode == Mode.OMNI_REFERENCE:
            control = reference_video_frames(inputs, opts.native_fps, width, height, total)
            references = [im.convert("RGB") for im in inputs.images] or None

        # 3. Arguments every call shares; progress counts steps across all chunks, which a run
        #    that starts again continues from its checkpoint.
        resume = self._resume = DenoiseCheckpoints(ctx, opts.steps)
        call = dict(
            prompt=with_camera(job.prompt, job.options),
            negative_prompt=job.negative_prompt or opts.negative_prompt,
            height=height,
            width=width,
            num_inference_steps=opts.steps,
            guidance_scale=opts.guidance,
            generator=make_generator(self.device, job.seed),
            output_type="np",
            callback_on_step_end=StepReporter(ctx, opts.steps * len(chunks), self.device, resume),
            **opts.call_kwargs,
        )

        # 4. Denoise chunk by chunk; each one after the first continues the tail of the last.
        resume.bind(call["generator"])
        timeline = Timeline()
        for chunk in chunks:
            ctx.check_cancelled()
            saved = resume.finished_chunk(chunk.index)
            if saved is not None:
                frames = list(saved["frames"])
            else:
                frames = self._chunk(job.mode, chunk, len(chunks), timeline, image, last_image, control, references, call)
                resume.chunk_done(chunk.index, frames=np.stack(frames))
            timeline.add(chunk, frames)

        # 5. Exactly the requested frames and size; reference audio as the sound track.
        return Output(
            frames=output_frames(timeline.frames, job.num_frames, job.width, job.height),
            fps=job.fps,
            audio=reference_audio(inputs, job),
        )

    def _chunk(self, mode, chunk, n_chunks, timeline, image, last_image, control, references, call) -> list[np.ndarray]:
        first, last = chunk.index == 0, chunk.index == n_chunks - 1
        if first and self.pipe is not self.vace:
            if mode == Mode.TEXT_TO_VIDEO:
                return self._call(self.pipe, call, num_frames=chunk.length)
            if mode == Mode.IMAGE_TO_VIDEO:
                return self._call(self.pipe, call, num_frames=chunk.length, image=image)
            if mode == Mode.FIRST_AND_LAST_FRAME and last:
                return self._call(self.pipe, call, num_frames=chunk.length, image=image, last_image=last_image)
        # VACE: frames known in advance are kept (black mask), the rest generated (white mask),
        # following the reference video where there is one.
        known: dict[int, Any] = dict(enumerate(timeline.tail(chunk)))
        if first and image is not None:
            known[0] = image
        if last and mode == Mode.FIRST_AND_LAST_FRAME:
            known[chunk.length - 1] = last_image
        window = control[chunk.start : chunk.start + chunk.length]
        video = mask = None
        if known or window:
            width, height = call["width"], call["height"]
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
        return self._call(self.vace, call, num_frames=chunk.length, video=video, mask=mask,
                          reference_images=references)

    def _call(self, pipe, call: dict[str, Any], **kwargs: Any) -> list[np.ndarray]:
        import torch

        if self.opts.guidance_2 is not None and pipe.config.get("boundary_ratio") is not None:
            kwargs["guidance_scale_2"] = self.opts.guidance_2  # only two-expert (Wan 2.2 A14B) pipelines take it
        reset_cache(pipe)
        with torch.inference_mode(), self._resume.into(pipe):
            return to_uint8_frames(pipe(**call, **kwargs).frames)

    def close(self) -> None:
        for pipe in {id(p): p for p in (self.pipe, self.vace) if p is not None}.values():
            release_pipeline(pipe)
        self.pipe = self.vace = None
