"""Resume a chunked diffusers job from its checkpoint: finished chunks and, inside the chunk
being denoised, the latents and the scheduler's state after the last saved step.

The state (``torch.save`` bytes) is ``{"chunk", "step", "latents", "scheduler", "generator",
"call_generator", "parts"}``: chunks before ``chunk`` are done and their arrays (decoded frames, and the sound of
engines that make it) are the parts ``chunk-NNN``; ``step`` denoising steps of ``chunk`` are
done and ``latents`` maps each denoised tensor of the pipeline's loop (``"latents"``, and
``"audio_latents"`` for LTX-2) to where it stood. Every ``ctx.checkpoint_every`` steps
(``StepReporter`` calls ``on_step``) and after every chunk the state is saved again.

To resume inside a chunk, one pipeline call is changed, on that pipeline instance only:

- the noise generator starts where it stood when the interrupted call began, so each
  ``prepare_*`` method named in ``latents`` runs as it did then (the conditions it builds, VAE
  samples included, are the same); then its fresh noise is swapped for the saved tensor and the
  generator put where it stood at the saved step, so noise drawn later in the loop is the same;
- the scheduler's ``set_timesteps`` cuts the ``timesteps`` the pipeline loops over to the
  remaining steps, keeps the whole schedule for the scheduler itself and starts it at the saved
  step (``set_begin_index``), and puts back a multistep scheduler's history (UniPC's model
  outputs, ...): the scheduler's next step is the uninterrupted run's, corrector and order
  included. A pipeline that looks sigmas up by its loop index (LTX-2) gets cut ``sigmas`` too
  (``loop_sigmas``). ``set_timesteps`` is bound to the scheduler instance, so a copy the pipeline
  makes (LTX-2's audio scheduler) is cut the same way.

Flow-matching Euler (LTX, LTX-2, the tiny Wan test pipelines) and UniPC (Wan's checkpoints)
then give the same latents as a run that was never interrupted, up to float rounding (UniPC under
Wan's config: within 1e-5, ``tests/diffusers/test_scheduler_resume.py``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ..errors import EngineError
from .base import StepContext

# Scheduler attributes that carry history from one step to the next (diffusers' multistep
# solvers); the rest is rebuilt by ``set_timesteps``.
HISTORY = ("model_outputs", "timestep_list", "lower_order_nums", "last_sample", "this_order", "prev_derivative", "dt", "sample")

# Which pipeline method makes the first value of each denoised tensor.
PREPARES = {"latents": "prepare_latents", "audio_latents": "prepare_audio_latents"}

# ``merge(prepared, saved)``: the tensor a resumed call starts from, given what ``prepare_*``
# returned (its whole output) and the saved tensor; by default the saved tensor as it is.
Merge = Callable[[Any, torch.Tensor], torch.Tensor]


def _history(scheduler) -> dict[str, Any]:
    state = {}
    for name in HISTORY:
        value = getattr(scheduler, name, None)
        if isinstance(value, list):
            value = [v.detach().cpu() if torch.is_tensor(v) else v for v in value]
        elif torch.is_tensor(value):
            value = value.detach().cpu()
        if value is not None or hasattr(scheduler, name):
            state[name] = value
    return state


def _to(value, device):
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value


def _on_whole_schedule(full: torch.Tensor):
    """A scheduler's ``step`` that sees the whole schedule (``len(timesteps)`` decides UniPC's
    final lower order steps), while the pipeline loops over the cut one."""

    def step(sched, *args, **kw):
        cut, sched.timesteps = sched.timesteps, full
        try:
            return type(sched).step(sched, *args, **kw)
        finally:
            sched.timesteps = cut

    return step


class DenoiseCheckpoints:
    """One job's resume state. ``steps``: denoising steps per chunk; ``tensors``: the loop's
    denoised tensors to save (keys of ``PREPARES``; the pipeline call must list them in
    ``callback_on_step_end_tensor_inputs``)."""

    def __init__(self, ctx: StepContext, steps: int, tensors: tuple[str, ...] = ("latents",)) -> None:
        self.ctx, self.steps, self.tensors = ctx, steps, tensors
        self.chunk, self.step, self.scheduler = 0, 0, {}
        self.latents: dict[str, torch.Tensor] = {}
        self.parts: list[str] = []
        self.current = 0
        self.generator: torch.Generator | None = None
        self._generator_state = None  # where the generator stood at the saved step
        self._call_generator_state = None  # ... and when the call that step belongs to began
        saved = ctx.load_checkpoint()
        if saved is not None and isinstance(saved[0], bytes):
            state = torch.load(io.BytesIO(saved[0]), weights_only=True)
            self.chunk, self.step, self.parts = int(state["chunk"]), int(state["step"]), list(state["parts"])
            latents = state["latents"]
            if torch.is_tensor(latents):  # an earlier format: the video latents alone
                latents = {"latents": latents}
            self.latents, self.scheduler = dict(latents or {}), state["scheduler"]
            self._generator_state, self._call_generator_state = state.get("generator"), state.get("call_generator")

    def bind(self, generator: torch.Generator) -> None:
        """The job's noise generator: its state is saved too, so the chunks after a resumed one
        draw the same noise as in a run that was never interrupted."""
        self.generator = generator
        if self._generator_state is not None:
            generator.set_state(self._generator_state)

    @property
    def done_before(self) -> int:
        """Steps already done across the job (where progress resumes)."""
        return self.chunk * self.steps + self.step

    def finished_chunk(self, chunk: int) -> dict[str, np.ndarray] | None:
        """The arrays (``frames``, ...) an earlier run saved for a finished chunk, or None: make it now."""
        self.current = chunk
        if chunk >= self.chunk:
            return None
        with np.load(io.BytesIO(self.ctx.load_checkpoint_part(f"chunk-{chunk:03d}"))) as npz:
            return {name: npz[name] for name in npz.files}

    @contextlib.contextmanager
    def into(
        self, pipe, merge: Mapping[str, Merge] | None = None, whole_sigmas: bool = False, loop_sigmas: bool = False
    ) -> Iterator[None]:
        """Around one pipeline call: continue the current chunk where the checkpoint left it.

        ``whole_sigmas``: cut only ``timesteps``, for a pipeline whose scheduler steps look the
        next sigma up in the whole schedule (LTX-Video's per-token steps) rather than by index.
        ``loop_sigmas``: cut ``sigmas`` too, for a pipeline that indexes them by its loop index
        (LTX-2). Otherwise the scheduler keeps its whole schedule and starts at the saved step."""
        if self.current != self.chunk or self.step == 0 or not self.latents:
            # Where the noise stands as this call begins: saved with its steps, so a resumed call
            # draws what this one draws before its loop (noise, conditions' VAE samples).
            self._call_generator_state = self.generator.get_state() if self.generator is not None else None
            yield
            return
        if self.generator is not None and self._call_generator_state is not None:
            self.generator.set_state(self._call_generator_state)
        scheduler, skip = pipe.scheduler, self.step
        device = getattr(pipe, "_execution_device", None) or pipe.device
        history = {k: _to(v, device) for k, v in self.scheduler.items()}
        generator_state = self._generator_state

        begin = not whole_sigmas and not loop_sigmas and hasattr(scheduler, "set_begin_index")

        @functools.wraps(type(scheduler).set_timesteps)  # its signature: pipelines inspect it
        def set_timesteps(sched, *args, **kw):
            type(sched).set_timesteps(sched, *args, **kw)
            full = sched.timesteps
            sched.timesteps = full[skip:]  # what the pipeline loops over
            if begin:
                type(sched).set_begin_index(sched, skip)
                sched.step = types.MethodType(_on_whole_schedule(full), sched)
                # A pipeline that starts its scheduler itself (``WanPipeline``: ``set_begin_index(0)``)
                # counts from the cut schedule's start.
                sched.set_begin_index = types.MethodType(lambda s, index=0: type(s).set_begin_index(s, index + skip), sched)
            elif not whole_sigmas and getattr(sched, "sigmas", None) is not None:
                sched.sigmas = sched.sigmas[skip:]
            for name, value in history.items():
                setattr(sched, name, value)

        def swapped(name: str, prepare):
            saved_tensor = self.latents[name]

            def prepare_then_swap(*args, **kw):
                out = prepare(*args, **kw)
                fresh = out[0] if isinstance(out, tuple) else out
                if tuple(saved_tensor.shape) != tuple(fresh.shape):
                    raise EngineError(
                        f"the checkpoint's {name} have the shape {tuple(saved_tensor.shape)}, "
                        f"this call makes {tuple(fresh.shape)}: it belongs to another configuration"
                    )
                saved = saved_tensor.to(fresh.device, fresh.dtype)
                if merge and name in merge:
                    saved = merge[name](out, saved)
                if self.generator is not None and generator_state is not None:
                    self.generator.set_state(generator_state)
                return (saved, *out[1:]) if isinstance(out, tuple) else saved

            return prepare_then_swap

        # This instance, this call only.
        scheduler.set_timesteps = types.MethodType(set_timesteps, scheduler)
        for name in self.latents:
            setattr(pipe, PREPARES[name], swapped(name, getattr(pipe, PREPARES[name])))
        try:
            yield
        finally:
            del scheduler.set_timesteps
            scheduler.__dict__.pop("step", None)
            scheduler.__dict__.pop("set_begin_index", None)
            for name in self.latents:
                delattr(pipe, PREPARES[name])

    def on_step(self, pipe, done: int, callback_kwargs: Mapping[str, Any]) -> None:
        """After step ``done`` of the job (1-based, across chunks)."""
        chunk, step = divmod(done - 1, self.steps)
        step += 1
        every = self.ctx.checkpoint_every
        if every <= 0 or step % every or step == self.steps:  # the last step: the chunk's arrays are saved instead
            return
        tensors = {name: callback_kwargs[name].detach().cpu() for name in self.tensors if name in callback_kwargs}
        self._save(chunk, step, tensors, _history(pipe.scheduler), done)

    def chunk_done(self, chunk: int, **arrays: np.ndarray) -> None:
        """A chunk is finished: save its arrays (``frames=``, and ``audio=`` for engines with sound)."""
        if self.ctx.checkpoint_every <= 0:
            return
        name = f"chunk-{chunk:03d}"
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub takes allow_pickle for the first
        self.parts.append(name)
        self._save(chunk + 1, 0, {}, {}, (chunk + 1) * self.steps, {name: buf.getvalue()})

    def _save(
        self, chunk: int, step: int, latents: dict, history: dict, done: int, parts: dict[str, bytes] | None = None
    ) -> None:
        buf = io.BytesIO()
        generator = self.generator.get_state() if self.generator is not None else None
        torch.save(
            {
                "chunk": chunk,
                "step": step,
                "latents": latents,
                "scheduler": history,
                "parts": list(self.parts),
                "generator": generator,
                "call_generator": self._call_generator_state if step else None,
            },
            buf,
        )
        self.ctx.save_checkpoint(buf.getvalue(), done, parts=parts)
