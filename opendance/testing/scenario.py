"""A scenario engine: one behaviour per test (sleep, fail, crash, hang, ignore cancel).

Configure it like any engine in a models TOML::

    [models."slow"]
    resolution = "480p"
    fps = 8
    [models."slow".default]
    engine = "scenario"
    behaviour = "sleep"      # sleep | fail | crash | crash_once | hang | slow_cancel
    steps = 20
    step_seconds = 0.2

Every step sleeps ``step_seconds``, reports progress and checks for cancellation (except
``slow_cancel``, which ignores it for ``ignore_cancel_seconds``). The frames are a plain
colour ramp made after the last step: cheap, exact in size and count, deterministic per seed.

Checkpoints: every ``ctx.checkpoint_every`` steps and after the last one the engine saves
``{"step": n}``, and a run that finds a checkpoint starts after that step (as a diffusers
engine resumes its latents; after the last step only the frames are left to make).
``record_dir`` (optional) gets one JSON line per run start, step and end in ``runs.jsonl``
(task, pid, step, time): tests and benchmarks read which process ran which steps when.

In a device group (``torch.distributed`` initialised: ``devices_per_task`` > 1), every step
also all-reduces ``rank + 1`` over the group and records the sum with the rank, and a rank
other than 0 behaves as one whose events would be wrong if they were reported: it reports
progress ``steps - 1`` of ``steps`` from its first step, and makes frames of another colour.
Tests read both to prove that every rank ran the job and that only rank 0 reported it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..engines.base import Engine, Inputs, Job, Output, StepContext
from ..errors import EngineError

BEHAVIOURS = ("sleep", "fail", "crash", "crash_once", "hang", "slow_cancel")


class ScenarioEngine(Engine):
    name = "scenario"

    def __init__(self, spec: dict, device: str = "cpu") -> None:
        super().__init__(spec, device)
        self.behaviour = spec.get("behaviour", "sleep")
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"scenario behaviour must be one of {BEHAVIOURS}; got {self.behaviour!r}")
        self.steps = int(spec.get("steps", 10))
        self.step_seconds = float(spec.get("step_seconds", 0.1))
        self.ignore_cancel_seconds = float(spec.get("ignore_cancel_seconds", 5.0))
        # crash_once: a marker file per task remembers that the first run already crashed.
        self.marker_dir = Path(spec.get("marker_dir", "/tmp"))
        self.record_dir = Path(spec["record_dir"]) if spec.get("record_dir") else None

    def generate(self, job: Job, inputs: Inputs, ctx: StepContext) -> Output:
        if self.behaviour == "fail":
            raise EngineError("the scenario engine was told to fail", code="scenario_failure")
        marker = self.marker_dir / f"{job.task_id}.crashed"
        saved = ctx.load_checkpoint()
        start = min(int(saved[0]["step"]), self.steps) if saved else 0  # type: ignore[call-overload]  # the checkpoint's JSON meta
        self._record(job, "start", start)
        for step in range(start, self.steps):
            if step == self.steps // 2:
                if self.behaviour == "crash" or (self.behaviour == "crash_once" and not marker.exists()):
                    marker.touch()
                    os._exit(17)  # a hard crash: no exception, no cleanup, as an OOM kill would be
            if self.behaviour == "hang" and step == 1:
                while True:
                    time.sleep(1.0)  # never checks for cancellation: only a kill stops it
            time.sleep(self.step_seconds)
            rank, group_sum = _all_reduce_rank()
            self._record(job, "step", step + 1, rank=rank, sum=group_sum)
            if ctx.checkpoint_every and ((step + 1) % ctx.checkpoint_every == 0 or step + 1 == self.steps):
                ctx.save_checkpoint({"step": step + 1}, step + 1)
            ctx.progress(step + 1 if not rank else self.steps - 1, self.steps)
            if self.behaviour != "slow_cancel":
                ctx.check_cancelled()
        if self.behaviour == "slow_cancel":
            time.sleep(self.ignore_cancel_seconds)
            ctx.check_cancelled()
        self._record(job, "end", self.steps)
        return Output(frames=self._frames(job, _rank()), fps=job.fps)

    def _record(self, job: Job, event: str, step: int, **more) -> None:
        if self.record_dir is None:
            return
        line = json.dumps(
            {
                "task": job.task_id,
                "pid": os.getpid(),
                "event": event,
                "step": step,
                "t": time.time(),
                **{k: v for k, v in more.items() if v is not None},
            }
        )
        # One short O_APPEND write per line: lines from several workers never interleave.
        fd = os.open(self.record_dir / "runs.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    @staticmethod
    def _frames(job: Job, rank: int = 0):
        rng = np.random.default_rng(job.seed)
        base = rng.integers(0, 256, size=3, dtype=np.uint8) + np.uint8(rank * 128)
        for i in range(job.num_frames):
            frame = np.empty((job.height, job.width, 3), dtype=np.uint8)
            frame[:] = (base.astype(np.int32) + i * 3) % 256
            yield frame


def _distributed() -> bool:
    dist = sys.modules.get("torch.distributed")  # imported by a device group's ranks only
    return dist is not None and dist.is_initialized()


def _rank() -> int:
    return sys.modules["torch.distributed"].get_rank() if _distributed() else 0


def _all_reduce_rank() -> tuple[int | None, int | None]:
    """(this rank, the sum of rank + 1 over the group) in a device group; (None, None) outside."""
    if not _distributed():
        return None, None
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    t = torch.tensor([rank + 1], dtype=torch.int64)
    dist.all_reduce(t)
    return rank, int(t.item())
