"""The skeleton every diffusers engine (``wan``, ``ltx``, ``ltx2``) shares, written once, so that
what acts on every pipeline (loading, the cache hook, checkpoints and resume, progress and
cancel, and each lever added later) has one place.

How an engine family plugs in: subclass ``DiffusersEngine``, set ``name`` and ``options`` (its
``DiffusersOptions`` subclass), and write what is really the family's:

- ``load()``: load its pipelines with ``self.load_pipeline(cls, folder, **components)`` (or make
  one over the same modules with ``self.sibling(cls)``), set ``self.pipe`` (the main one),
  ``self.temporal`` (the VAE's frames per latent frame) and ``self.multiple`` (what both sides of
  the native grid are a multiple of). Raise ``ValueError`` for a folder or class it cannot run.
- ``check_inputs(job, inputs, chunks)``: refuse what the loaded pipelines cannot make, with a
  concise ``EngineError`` (call ``super()`` for the checks every family shares).
- ``denoise_chunk(plan, chunk, timeline)``: make one chunk with ``self.run_pipeline(pipe, plan,
  **kwargs)`` and return its arrays: ``frames`` (F x H x W x 3, uint8) and whatever else it makes
  (``audio``); they are what a checkpoint keeps of a finished chunk.
- As needed: ``grid(job)`` (the size the chunks are made at: by default the native grid at
  ``max_area``), ``steps_per_chunk()`` (all of a chunk's denoising steps, when it makes more than
  one call: the LTX families' two stages), ``mid_chunk_checkpoints = False`` (checkpoints per
  finished chunk only), ``call_arguments(job)`` (the family's own ``__call__`` arguments), ``references``
  (omni-reference inputs on the grid), ``chunk_finished`` and ``audio`` (a sound track),
  ``close`` (drop its extra pipeline attributes, then ``super().close()``).
- Class settings: ``denoised`` (the loop's tensors a checkpoint saves, keys of
  ``diffusers_resume.PREPARES``), ``cache_defaults`` (per cache hook type), ``resume_merge``, ``whole_sigmas`` and
  ``loop_sigmas`` (how ``DenoiseCheckpoints.into`` resumes inside one of its calls), and
  ``scheduler_overrides()`` (the ``scheduler`` option, with the family's defaults).

The base does the rest, the same way for every family:

- ``__init__``: options parsed, device chosen, ``load()``, then every pipeline's
  ``call_kwargs`` and the frame window checked; on any failure nothing stays loaded.
- ``generate``: 1. plan the grid, the native frames and the chunks; 2. the inputs on the grid;
  3. the arguments every call shares (seeded generator, the step callback that reports progress,
  cancels and checkpoints); 4. chunk by chunk, each finished one from the checkpoint if an
  earlier run made it, seams cross-faded; 5. exactly the requested frames, size and sound.
- ``run_pipeline``: every pipeline call goes through it (cache hook reset, inference mode,
  resume inside the chunk). A per-call lever (a request's LoRA, a scheduler shift, freeing
  offload hooks) goes there; a load-time one (attention backend, compile, quantization,
  offload) in ``load_pipeline`` and ``_torch_utils.load_pipeline``.

Only engine modules import this (it imports torch).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..domain import Mode
from ..errors import EngineError
from ..media.frames import fit_cover
from . import _torch_utils as tu
from . import decode_stream, levers, lora
from ._torch_utils import Chunk, Timeline
from .base import Audio, Engine, Inputs, Job, Output, StepContext
from .diffusers_resume import DenoiseCheckpoints, Merge
from .options import DiffusersOptions
from .schedulers import EngineSchedulers

log = logging.getLogger("opendance.engines")


@dataclass
class Plan:
    """One job as its pipeline calls see it: the native grid, the chunks, the inputs fitted to
    the grid, the arguments every call shares, and the job's resume state."""

    job: Job
    width: int  # native grid
    height: int
    chunks: list[Chunk]
    call: dict[str, Any]  # arguments every pipeline call of the job shares
    resume: DenoiseCheckpoints
    image: Any = None  # PIL images on the grid
    last_image: Any = None
    control: list[np.ndarray] = field(default_factory=list)  # reference video frames, native fps, on the grid
    references: Any = None  # reference images (the family's form)
    sound: np.ndarray | None = None  # the generated sound so far, for families that make one

    @property
    def last(self) -> int:
        return len(self.chunks) - 1


class DiffusersEngine(Engine):
    options: ClassVar[type[DiffusersOptions]]
    denoised: ClassVar[tuple[str, ...]] = ("latents",)
    cache_defaults: ClassVar[dict[str, dict[str, Any]]] = {}  # cache type -> config defaults
    resume_merge: ClassVar[Mapping[str, Merge]] = {}
    whole_sigmas: ClassVar[bool] = False
    loop_sigmas: ClassVar[bool] = False
    stream_frames: ClassVar[bool] = True  # frames to the encoder as they are decoded (decode_stream)
    # Checkpoints inside a chunk (every ``checkpoint_every`` steps); off: when a chunk is finished only.
    mid_chunk_checkpoints: bool = True

    pipe: Any  # the main pipeline (set by ``load``)
    temporal: int  # native frames per latent frame
    multiple: int  # both sides of the native grid are multiples of this

    def __init__(self, spec: dict[str, Any], device: str = "cpu") -> None:
        super().__init__(spec, device)
        t0 = time.perf_counter()
        self.opts = self.options(**spec)
        self.device = self.opts.device or device
        self.pipe = None
        self._loaded: list[Any] = []  # through load_pipeline: released on close
        self._pipelines: list[Any] = []  # every pipeline the engine calls (loaded and siblings)
        self.schedulers = EngineSchedulers({})
        try:
            self.load()
            self.schedulers = EngineSchedulers(self.scheduler_overrides())
            for pipe in self._pipelines:
                tu.check_call_kwargs(pipe, self.opts.call_kwargs)
                self.schedulers.own(pipe)  # made now: a key the scheduler does not have fails the load
            tu.check_window(self.opts, self.temporal)
            if self.opts.compile:
                levers.warm_up(self)  # compiled now: the first task pays nothing
        except BaseException:
            self.close()  # nothing half-loaded stays in the process's pipeline cache
            raise
        self.load_seconds = time.perf_counter() - t0
        log.info("%s engine (%s) ready in %.2fs", self.name, type(self.pipe).__name__, self.load_seconds)

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the family's pipelines; set ``pipe``, ``temporal`` and ``multiple``."""
        raise NotImplementedError

    def load_pipeline(self, cls, folder, *, opts: DiffusersOptions | None = None, **components):
        """``cls`` from ``folder``, shared with every engine of the process that loads the same
        (see ``_torch_utils.load_pipeline``), with the configured cache hook on. ``opts``: other
        load options than the engine's (a pipeline with other fused LoRAs)."""
        opts = opts or self.opts
        pipe = tu.load_pipeline(cls, folder, opts, self.device, opts.dtype_defaults, **components)
        self._loaded.append(pipe)
        defaults = self.cache_defaults.get(opts.cache.type) if opts.cache else None
        tu.enable_cache(pipe, opts, defaults)
        return self._adopt(pipe)

    def sibling(self, cls):
        """Another pipeline class over the main pipeline's modules: no new weights, nothing moved
        or cast (``from_pipe`` would cast every module to one dtype, fp32-kept ones included)."""
        if isinstance(self.pipe, cls):
            return self.pipe
        accepted = inspect.signature(cls.__init__).parameters
        pipe = cls(**{k: v for k, v in self.pipe.components.items() if k in accepted})
        pipe.set_progress_bar_config(disable=True)
        return self._adopt(pipe)

    def _adopt(self, pipe):
        if all(p is not pipe for p in self._pipelines):
            # The step callback sees every denoised tensor (checkpoints save them all).
            extra = [name for name in self.denoised if name not in type(pipe)._callback_tensor_inputs]
            if extra:
                pipe._callback_tensor_inputs = [*type(pipe)._callback_tensor_inputs, *extra]
            self._pipelines.append(pipe)
        return pipe

    def close(self) -> None:
        decode_stream.settle(self)
        for pipe in self._loaded:
            tu.release_pipeline(pipe)
        self._loaded, self._pipelines = [], []
        self.schedulers.clear()
        self.pipe = None

    def scheduler_overrides(self) -> dict[str, Any]:
        """The scheduler settings of this engine's calls (the ``scheduler`` option)."""
        return dict(self.opts.scheduler)

    def schedulers_for(self, pipe) -> EngineSchedulers:
        """Whose scheduler settings a call of ``pipe`` runs with (by default the engine's)."""
        return self.schedulers

    # -- one job -------------------------------------------------------------------------------

    def check_inputs(self, job: Job, inputs: Inputs, chunks: list[Chunk]) -> None:
        if job.mode in (Mode.IMAGE_TO_VIDEO, Mode.FIRST_AND_LAST_FRAME) and inputs.image is None:
            raise EngineError(f"{job.mode.value} needs a first image")
        if job.mode == Mode.FIRST_AND_LAST_FRAME and inputs.last_image is None:
            raise EngineError("first-and-last-frame needs a last image")

    def generate(self, job: Job, inputs: Inputs, ctx: StepContext) -> Output:
        decode_stream.settle(self)  # the last job's frames are all made (one job at a time)
        opts = self.opts
        # 1. Plan: the native grid, how many native frames, in which chunks.
        width, height = self.grid(job)
        total = tu.round_frames(job.duration * opts.native_fps, self.temporal)
        chunks = tu.plan_chunks(total, opts.frames, opts.overlap, self.temporal)
        self.check_inputs(job, inputs, chunks)

        # 2. Inputs on the grid: images cover-cropped, references in the family's form.
        image = fit_cover(inputs.image, width, height) if inputs.image is not None else None
        last_image = fit_cover(inputs.last_image, width, height) if inputs.last_image is not None else None
        control: list[np.ndarray] = []
        references: Any = None
        if job.mode == Mode.OMNI_REFERENCE:
            control, references = self.references(job, inputs, width, height, total)

        # 3. Arguments every call shares; progress counts steps across all chunks, which a run
        #    that starts again continues from its checkpoint.
        steps = self.steps_per_chunk()
        resume = DenoiseCheckpoints(ctx, steps, self.denoised)
        reporter = tu.StepReporter(ctx, steps * len(chunks), self.device, resume if self.mid_chunk_checkpoints else None)
        reporter.done = resume.done_before
        call = dict(
            prompt=tu.with_camera(job.prompt, job.options),
            negative_prompt=job.negative_prompt or opts.negative_prompt,
            height=height,
            width=width,
            num_inference_steps=opts.steps,
            guidance_scale=opts.guidance,
            generator=tu.make_generator(self.device, job.seed),
            output_type="np",
            callback_on_step_end=reporter,
            callback_on_step_end_tensor_inputs=list(self.denoised),
            **self.call_arguments(job),
            **opts.call_kwargs,
        )
        plan = Plan(job, width, height, chunks, call, resume, image, last_image, control, references)

        # 4. Denoise chunk by chunk; each one after the first continues the tail of the last.
        resume.bind(call["generator"])
        timeline = Timeline()

        def make(feed: decode_stream.FrameFeed | None = None) -> list[np.ndarray]:
            for chunk in chunks:
                ctx.check_cancelled()
                arrays = resume.finished_chunk(chunk.index)
                if arrays is None:
                    arrays = self.denoise_chunk(plan, chunk, timeline)
                    resume.chunk_done(chunk.index, **arrays)
                timeline.add(chunk, list(arrays["frames"]))
                self.chunk_finished(plan, chunk, arrays)
                if feed is not None and chunk.index < plan.last:  # final up to the next chunk's seam
                    feed.final(timeline.frames, chunks[chunk.index + 1].start)
            return timeline.frames

        # 5. Exactly the requested frames and size, and the sound track. Where the sound does not
        #    come from the chunks, the frames stream to the encoder as they are decoded
        #    (decode_stream: the chunk loop in a thread, the same frames).
        if self.stream_frames and type(self).audio is DiffusersEngine.audio:
            taps = self._loaded if len(chunks) == 1 else []  # the pipelines whose VAE may stream a chunk's decode
            frames = decode_stream.Streamed(
                self, make, chunks[-1].start + chunks[-1].length, job.num_frames, job.width, job.height, taps
            )
            return Output(frames=frames, fps=job.fps, audio=self.audio(plan, inputs))
        make()
        return Output(
            frames=tu.output_frames(timeline.frames, job.num_frames, job.width, job.height),
            fps=job.fps,
            audio=self.audio(plan, inputs),
        )

    def grid(self, job: Job) -> tuple[int, int]:
        """The size of the frames the chunks are made at (width, height)."""
        return tu.grid_size(job.width, job.height, self.opts.max_area, self.multiple)

    def steps_per_chunk(self) -> int:
        """Denoising steps of one chunk, all its pipeline calls together (progress counts them)."""
        return self.opts.steps

    def call_arguments(self, job: Job) -> dict[str, Any]:
        """The family's own ``__call__`` arguments, shared by every call of the job."""
        return {}

    def references(self, job: Job, inputs: Inputs, width: int, height: int, total: int) -> tuple[list[np.ndarray], Any]:
        """Omni-reference inputs on the grid: the reference videos' frames (one window of them:
        soft conditions of the first chunk) and the reference images, cover-cropped."""
        control = tu.reference_video_frames(inputs, self.opts.native_fps, width, height, self.opts.frames)
        return control, [fit_cover(im, width, height) for im in inputs.images]

    def denoise_chunk(self, plan: Plan, chunk: Chunk, timeline: Timeline) -> dict[str, np.ndarray]:
        """Make one chunk: ``{"frames": F x H x W x 3 uint8, ...}``."""
        raise NotImplementedError

    def chunk_finished(self, plan: Plan, chunk: Chunk, arrays: dict[str, np.ndarray]) -> None:
        """A chunk's arrays are in (made now or read from the checkpoint); its frames are on the timeline."""

    def audio(self, plan: Plan, inputs: Inputs) -> Audio | None:
        """The output's sound track: by default the reference audios, mixed to the duration."""
        return tu.reference_audio(inputs, plan.job)

    def run_pipeline(self, pipe, plan: Plan, **kwargs: Any):
        """One pipeline call of the job: the shared arguments and ``kwargs`` (which win over them:
        a stage at another size); a resumed job continues inside its chunk from the checkpoint."""
        import torch

        tu.reset_cache(pipe)
        resume = plan.resume.into(
            pipe, merge=self.resume_merge or None, whole_sigmas=self.whole_sigmas, loop_sigmas=self.loop_sigmas
        )
        try:
            with lora.applied(pipe, plan.job.loras), self.schedulers_for(pipe).on(pipe), torch.inference_mode(), resume:
                return pipe(**{**plan.call, **kwargs})
        finally:
            # A cancelled or failed call never reaches the end of ``__call__``, where the offload
            # hooks are freed: free them here, on the pipeline that holds them (a sibling shares
            # the main pipeline's modules and hooks).
            owner = pipe if getattr(pipe, "_all_hooks", None) else self.pipe
            if owner is not None and getattr(owner, "_all_hooks", None):
                owner.maybe_free_model_hooks()
