"""Run one job to a stored MP4: inputs -> engine -> encoder -> storage.

Shared by every runner (the local worker process, a Temporal activity), so a task makes the
same file whoever runs it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..engines.base import Engine, Inputs, Job, StepContext
from ..errors import Cancelled
from ..media.encode import encode_mp4
from ..media.images import load_image
from ..storage import Storage
from .checkpoints import TaskCheckpoints

log = logging.getLogger(__name__)

# Share of the progress bar for generation; encoding and storing take the rest up to 99.
ENGINE_SHARE = 90


@dataclass
class JobResult:
    video_key: str
    last_frame_key: str | None
    engine_seconds: float
    wall_seconds: float


def video_key(task_id: str) -> str:
    return f"tasks/{task_id}/video.mp4"


def last_frame_key(task_id: str) -> str:
    return f"tasks/{task_id}/last_frame.png"


def input_prefix(task_id: str) -> str:
    return f"tasks/{task_id}/inputs/"


def run_job(
    job: Job,
    engine: Engine,
    storage: Storage,
    *,
    progress: Callable[[int], None],
    cancelled: Callable[[], bool],
    tmp_dir: Path | None = None,
    checkpoints: TaskCheckpoints | None = None,
    engine_cancelled: Callable[[], bool] | None = None,
) -> JobResult:
    """``checkpoints``: where the engine keeps resume state (dropped once the video is stored).
    ``engine_cancelled``: what the engine's ``check_cancelled`` asks, when it differs from
    ``cancelled`` (a device group: all ranks decide together; see ``follow_job``)."""
    started = time.perf_counter()
    engine_seconds = 0.0
    last_pct = -1

    def report(pct: float) -> None:
        nonlocal last_pct
        p = min(99, int(pct))
        if p > last_pct:
            last_pct = p
            progress(p)

    def on_step(done: int, total: int) -> None:
        report(ENGINE_SHARE * done / max(total, 1))

    encode_base: int | None = None

    def on_frame(n: int) -> None:
        # Encoding moves the bar from where generation stood when the first frame arrived:
        # from ~90 for engines that finish before encoding (diffusers), from ~0 for engines
        # that make frames as the encoder pulls them (preview), so neither jumps ahead.
        nonlocal encode_base
        if cancelled():
            raise Cancelled()
        if encode_base is None:
            encode_base = max(last_pct, 0)
        report(encode_base + (99 - encode_base) * n / max(job.num_frames, 1) - 1)

    with contextlib.ExitStack() as stack:
        # 1. Inputs: images decoded, videos/audios as local files.
        inputs = open_inputs(job, storage, stack)

        # 2. Generate. Engines may return an iterator, so the time the encoder spends pulling
        #    frames from it counts as engine time too.
        def add_engine_time(dt: float) -> None:
            nonlocal engine_seconds
            engine_seconds += dt

        t0 = time.perf_counter()
        ctx = StepContext(
            progress=on_step, cancelled=engine_cancelled or cancelled, checkpoints=checkpoints, yuv420=True
        )  # frames go to encode_mp4
        output = engine.generate(job, inputs, ctx)
        add_engine_time(time.perf_counter() - t0)
        output.frames = _timed(output.frames, add_engine_time)

        # 3. Encode to a private temp file, then 4. store atomically.
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=tmp_dir, prefix="job-")))
        mp4 = work / "video.mp4"
        info = encode_mp4(output, mp4, width=job.width, height=job.height, num_frames=job.num_frames, on_frame=on_frame)
        if cancelled():
            raise Cancelled()
        lf_key = _store(job, storage, mp4, info.last_frame, checkpoints)
    wall = time.perf_counter() - started
    log.info("task %s: %d frames in %.2fs (engine %.2fs)", job.task_id, job.num_frames, wall, engine_seconds)
    return JobResult(video_key(job.task_id), lf_key, engine_seconds, wall)


def deliver_video(
    job: Job,
    path: Path,
    storage: Storage,
    *,
    cancelled: Callable[[], bool],
    engine_seconds: float,
    tmp_dir: Path | None = None,
    checkpoints: TaskCheckpoints | None = None,
) -> JobResult:
    """An MP4 made elsewhere (a relay's upstream) as the task's video: stored as it is when it
    already is exactly the output (``relay.fit.conforms``), else fitted and encoded."""
    from ..engines.relay.fit import conforms, fit_output, last_frame

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if conforms(job, path):
            mp4, final = path, (last_frame(path) if job.options.get("return_last_frame") else None)
        else:
            output = fit_output(job, path)
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=tmp_dir, prefix="job-")))
            mp4 = work / "video.mp4"

            def on_frame(n: int) -> None:
                if cancelled():
                    raise Cancelled()

            info = encode_mp4(output, mp4, width=job.width, height=job.height, num_frames=job.num_frames, on_frame=on_frame)
            final = info.last_frame
        if cancelled():
            raise Cancelled()
        lf_key = _store(job, storage, mp4, final, checkpoints)
    wall = time.perf_counter() - started + engine_seconds
    log.info(
        "task %s: upstream video stored in %.2fs (%s)",
        job.task_id,
        time.perf_counter() - started,
        "as it came" if mp4 == path else "fitted and encoded",
    )
    return JobResult(video_key(job.task_id), lf_key, engine_seconds, wall)


def _store(job: Job, storage: Storage, mp4: Path, final_frame, checkpoints: TaskCheckpoints | None) -> str | None:
    """Store the video (and its last frame when the task asks for it); drop the checkpoints.
    Returns the last frame's key."""
    lf_key = None
    if job.options.get("return_last_frame") and final_frame is not None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(final_frame).save(buf, format="PNG")
        lf_key = last_frame_key(job.task_id)
        storage.put_bytes(lf_key, buf.getvalue(), "image/png")
    storage.put_file(video_key(job.task_id), mp4, "video/mp4")
    if checkpoints is not None:
        checkpoints.clear()
    return lf_key


def follow_job(
    job: Job, engine: Engine, storage: Storage, *, cancelled: Callable[[], bool], checkpoints: TaskCheckpoints | None = None
) -> None:
    """A device group's rank other than 0: run the engine exactly as rank 0 does (the same
    steps, the same collectives) and drop what it makes. Rank 0 alone encodes, stores and
    reports; ``checkpoints`` here are read-only (``TaskCheckpoints(read_only=True)``)."""
    with contextlib.ExitStack() as stack:
        inputs = open_inputs(job, storage, stack)
        output = engine.generate(job, inputs, StepContext(cancelled=cancelled, checkpoints=checkpoints))
        for _ in output.frames:  # an engine that streams its frames works while they are pulled
            pass


def open_inputs(job: Job, storage: Storage, stack: contextlib.ExitStack) -> Inputs:
    """A job's stored media, ready for an engine: images decoded, videos/audios as local files
    (kept until ``stack`` closes)."""
    return Inputs(
        image=_image(storage, job.image),
        last_image=_image(storage, job.last_image),
        images=[_image(storage, ref) for ref in job.images],
        videos=[stack.enter_context(storage.local_path(ref.key)) for ref in job.videos],
        audios=[stack.enter_context(storage.local_path(ref.key)) for ref in job.audios],
    )


def _image(storage: Storage, ref):
    return None if ref is None else load_image(storage.get_bytes(ref.key))


def _timed(frames, add):
    it = iter(frames)
    while True:
        t0 = time.perf_counter()
        try:
            frame = next(it)
        except StopIteration:
            add(time.perf_counter() - t0)
            return
        add(time.perf_counter() - t0)
        yield frame
