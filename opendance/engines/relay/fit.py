"""An upstream's MP4 made into the task's output.

``conforms``: the file already is exactly what the spec's output table asks for (H.264 yuv420p
at the task's size, fps and frame count, ``+faststart``, no sound or AAC 48 kHz stereo of the
video's length), so it is stored as it is: no decode, no encode, which is what lets one server
relay hundreds of tasks at once. Otherwise ``fit_output`` resamples it to the task's fps,
cover-fits it to its size and cuts it to its exact length (a clip up to ``SHORTFALL`` seconds
short holds its last frame; shorter is an error), keeping its sound, for the encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...errors import EngineError
from ...media.audio import decode_audio, fit_audio
from ...media.frames import read_video_frames
from ..base import Audio, Job, Output

log = logging.getLogger("opendance.engines.relay")

SHORTFALL = 1.0  # seconds an upstream clip may be short (its last frame is held)


def conforms(job: Job, path: Path) -> bool:
    from ...media.encode import probe_mp4

    try:
        info = probe_mp4(path)
    except Exception as exc:
        log.info("task %s: the upstream video could not be probed (%s); decoding it", job.task_id, exc)
        return False
    video = (
        info["video_codec"] == "h264"
        and info["pix_fmt"] == "yuv420p"
        and info["faststart"]
        and (info["width"], info["height"]) == (job.width, job.height)
        and info["num_frames"] == job.num_frames
        and info["fps"] is not None
        and abs(info["fps"] - job.fps) < 1e-3
    )
    sound = info["audio_codec"] is None or (
        info["audio_codec"] == "aac"
        and info["audio_sample_rate"] == 48000
        and info["audio_channels"] == 2
        and info["audio_duration"] is not None
        and abs(info["audio_duration"] - job.duration) <= 1 / job.fps
    )
    return bool(video and sound)


def last_frame(path: Path) -> np.ndarray:
    import av

    frame = None
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):  # noqa: B007 (the loop keeps the last one)
            pass
    if frame is None:
        raise EngineError("the upstream video has no frames")
    return frame.to_ndarray(format="rgb24")


def fit_output(job: Job, path: Path) -> Output:
    """The upstream clip at the task's fps, size and exact length, with its sound."""
    import av

    n = job.num_frames
    try:
        frames = list(read_video_frames(path, job.fps, job.width, job.height, max_frames=n))
        with av.open(str(path)) as container:
            has_sound = bool(container.streams.audio)
    except (av.error.FFmpegError, IndexError) as exc:
        raise EngineError(f"the upstream video cannot be decoded: {exc}") from None
    if not frames:
        raise EngineError("the upstream video has no frames")
    short = (n - len(frames)) / job.fps
    if short > SHORTFALL:
        raise EngineError(f"the upstream video is {len(frames) / job.fps:.1f} s long; {job.duration} s were asked for")
    frames += [frames[-1]] * (n - len(frames))
    audio = None
    if has_sound:
        samples = fit_audio(decode_audio(path, 48000, 2), job.duration * 48000)
        audio = Audio(samples=samples, sample_rate=48000)
    return Output(frames=frames, fps=job.fps, audio=audio)
