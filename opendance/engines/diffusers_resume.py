"""Resume a chunked diffusers job from its checkpoint: finished chunks and, inside the chunk
being denoised, the latents and the scheduler's state after the last saved step.

The state (``torch.save`` bytes) is ``{"chunk", "step", "latents", "scheduler", "parts"}``:
chunks before ``chunk`` are done and their decoded frames are the parts ``chunk-NNN``;
``step`` denoising steps of ``chunk`` are done and ``latents`` is where they left off. Every
``ctx.checkpoint_every`` steps (``StepReporter`` calls ``on_step``) and after every chunk the
state is saved again.

To resume inside a chunk, the pipeline is called with ``latents=`` the saved latents and its
scheduler cut to the remaining steps: ``set_timesteps`` is wrapped for that one call so that
``timesteps`` and ``sigmas`` start at the saved step, and a multistep scheduler's history
(UniPC's model outputs, ...) is put back. Flow-matching Euler (the tiny test pipelines) then
gives the same video as a run that was never interrupted; for a multistep scheduler the result
is the same up to float rounding.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .base import StepContext

# Scheduler attributes that carry history from one step to the next (diffusers' multistep
# solvers); the rest is rebuilt by ``set_timesteps``.
HISTORY = ("model_outputs", "timestep_list", "lower_order_nums", "last_sample", "this_order", "prev_derivative", "dt", "sample")


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


class DenoiseCheckpoints:
    """One job's resume state. ``steps``: denoising steps per chunk."""

    def __init__(self, ctx: StepContext, steps: int) -> None:
        self.ctx, self.steps = ctx, steps
        self.chunk, self.step, self.latents, self.scheduler = 0, 0, None, {}
        self.parts: list[str] = []
        self.current = 0
        self.generator: torch.Generator | None = None
        self._generator_state = None
        saved = ctx.load_checkpoint()
        if saved is not None and isinstance(saved[0], bytes):
            state = torch.load(io.BytesIO(saved[0]), weights_only=True)
            self.chunk, self.step, self.parts = int(state["chunk"]), int(state["step"]), list(state["parts"])
            self.latents, self.scheduler = state["latents"], state["scheduler"]
            self._generator_state = state.get("generator")

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

    def finished_frames(self, chunk: int) -> list[np.ndarray] | None:
        """The decoded frames of a chunk an earlier run finished, or None: make it now."""
        self.current = chunk
        if chunk >= self.chunk:
            return None
        with np.load(io.BytesIO(self.ctx.load_checkpoint_part(f"chunk-{chunk:03d}"))) as npz:
            return list(npz["frames"])

    @contextlib.contextmanager
    def into(self, pipe, kwargs: dict[str, Any]) -> Iterator[None]:
        """Around one pipeline call: continue the current chunk where the checkpoint left it."""
        if self.current != self.chunk or self.step == 0 or self.latents is None:
            yield
            return
        scheduler, skip = pipe.scheduler, self.step
        device = getattr(pipe, "_execution_device", None) or pipe.device
        history = {k: _to(v, device) for k, v in self.scheduler.items()}
        original = scheduler.set_timesteps

        def set_timesteps(*args, **kw):
            original(*args, **kw)
            scheduler.timesteps = scheduler.timesteps[skip:]
            if getattr(scheduler, "sigmas", None) is not None:
                scheduler.sigmas = scheduler.sigmas[skip:]
            for name, value in history.items():
                setattr(scheduler, name, value)

        scheduler.set_timesteps = set_timesteps  # this instance, this call only
        kwargs["latents"] = self.latents.to(device)
        try:
            yield
        finally:
            del scheduler.set_timesteps

    def on_step(self, pipe, done: int, latents) -> None:
        """After step ``done`` of the job (1-based, across chunks)."""
        chunk, step = divmod(done - 1, self.steps)
        step += 1
        every = self.ctx.checkpoint_every
        if every <= 0 or step % every or step == self.steps:  # the last step: the chunk's frames are saved instead
            return
        self._save(chunk, step, latents.detach().cpu(), _history(pipe.scheduler), done)

    def chunk_done(self, chunk: int, frames: list[np.ndarray]) -> None:
        if self.ctx.checkpoint_every <= 0:
            return
        name = f"chunk-{chunk:03d}"
        buf = io.BytesIO()
        np.savez_compressed(buf, frames=np.stack(frames))
        self.parts.append(name)
        self._save(chunk + 1, 0, None, {}, (chunk + 1) * self.steps, {name: buf.getvalue()})

    def _save(self, chunk: int, step: int, latents, history: dict, done: int, parts: dict[str, bytes] | None = None) -> None:
        buf = io.BytesIO()
        generator = self.generator.get_state() if self.generator is not None else None
        torch.save({"chunk": chunk, "step": step, "latents": latents, "scheduler": history, "parts": list(self.parts),
                    "generator": generator}, buf)
        self.ctx.save_checkpoint(buf.getvalue(), done, parts=parts)
