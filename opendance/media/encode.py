"""Write an engine's ``Output`` as the MP4 of the spec, and probe MP4s to check them.

``encode_mp4`` streams: it pulls one frame at a time from the engine's iterator, checks it
against the engine contract (size, dtype, count), converts it to BT.709 yuv420p (an RGB frame;
a ``Yuv420`` frame already is) and hands it to libx264, so memory stays flat however long the
video is. Video timestamps are frame indices in
a ``1/fps`` time base, so the container's duration is exactly ``num_frames / fps``. Audio is
resampled to 48 kHz stereo, trimmed or zero-padded to the video's length and interleaved with
the video as it goes (players can start before the whole file has arrived; ``+faststart``
puts the index first for the same reason).
"""

from __future__ import annotations

import functools
import platform
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..engines.base import Audio, Output
from ..errors import EngineError
from .audio import resample
from .yuv import RgbToYuv420, Yuv420

AUDIO_RATE = 48000
_AAC_FRAME = 1024  # samples per AAC frame
# crf 18 keeps smooth frames above ~40 dB PSNR (frame 0 of an image task must match its input);
# veryfast is the knee of libx264's speed/size curve for this kind of content.
VIDEO_OPTIONS = {"crf": "18", "preset": "veryfast", "profile": "high"}
# For ``Output.graphics``: no sub-8x8 inter partitions (flat fields and text gain nothing from
# them) and 2 B-frames instead of 3. On the preview's text-to-video, measured against
# VIDEO_OPTIONS: the same PSNR, files 2-3% smaller, 15-22% less CPU time per video.
GRAPHICS_PARAMS = "partitions=i8x8,i4x4:bframes=2"


def video_options(graphics: bool = False) -> dict[str, str]:
    """``VIDEO_OPTIONS`` (with ``GRAPHICS_PARAMS`` for graphics), with libx264 kept off its
    AVX-512 kernels where the CPU has them.

    Measured on an AVX-512 machine (Xeon, PyAV 17 and 18): 40 encodes of the same 40 frames gave
    4 different bitstreams, up to 29/255 apart once decoded, so the same seed did not make the
    same video; capped at AVX2 the 40 were identical. ``asm=avx2`` names a set of CPU features,
    so it is only given where the CPU has AVX2 (any CPU with AVX-512 does).
    """
    params = [GRAPHICS_PARAMS] if graphics else []
    if platform.machine().lower() in ("x86_64", "amd64") and "avx512f" in _cpu_flags():
        params.append("asm=avx2")
    options = dict(VIDEO_OPTIONS)
    if params:
        options["x264-params"] = ":".join(params)
    return options


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@dataclass
class EncodeInfo:
    frames: int
    duration: float  # seconds: frames / fps
    has_audio: bool
    bytes: int
    last_frame: np.ndarray  # the final frame as the engine gave it, in RGB (for return_last_frame)


def encode_mp4(
    output: Output,
    path: Path,
    *,
    width: int,
    height: int,
    num_frames: int,
    on_frame: Callable[[int], None] | None = None,
) -> EncodeInfo:
    """Encode ``output`` to ``path`` (H.264 yuv420p + AAC, faststart). ``on_frame(done)`` is
    called after every frame. Raises ``EngineError`` when the output breaks the engine contract;
    the partial file is removed on any failure (``Cancelled`` from the frame iterator included)."""
    import av

    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"yuv420p needs a positive even size, got {width}x{height}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    fps = output.fps
    if not isinstance(fps, int) or fps <= 0:
        raise EngineError(f"engine output fps must be a positive integer, got {fps!r}")
    audio = _prepare_audio(output.audio, num_frames, fps) if output.audio is not None else None
    path = Path(path)
    to_yuv = RgbToYuv420()
    last: np.ndarray | Yuv420 | None = None
    count = 0
    try:
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            video = out.add_stream("libx264", rate=fps, options=video_options(graphics=output.graphics))
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.time_base = Fraction(1, fps)
            # Frame threads (x264's own default), not PyAV's default of slice threads: libx264
            # encodes earlier frames on its threads while the engine makes the next one, and
            # whole-frame slices compress better (files 2-6% smaller at the same PSNR here).
            video.codec_context.thread_type = "FRAME"
            _tag_bt709(video.codec_context)
            sound = _AudioWriter(out, audio, fps) if audio is not None else None
            for frame in output.frames:
                if count == num_frames:
                    raise EngineError(f"engine produced more than the {num_frames} frames asked for")
                _check_frame(frame, count, width, height)
                _mux(out, video.encode(_video_frame(av, to_yuv, frame, count, fps)))
                last, count = frame, count + 1
                if sound is not None:
                    sound.write_until(count)
                if on_frame is not None:
                    on_frame(count)
            if count != num_frames:
                raise EngineError(f"engine produced {count} frames, {num_frames} were asked for")
            _mux(out, video.encode(None))
            if sound is not None:
                sound.finish()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    assert last is not None  # num_frames >= 1 and the count matched
    return EncodeInfo(
        frames=count,
        duration=num_frames / fps,
        has_audio=audio is not None,
        bytes=path.stat().st_size,
        # A copy: engines may reuse their buffers.
        last_frame=last.to_rgb() if isinstance(last, Yuv420) else np.array(last, copy=True),
    )


def _check_frame(frame: Any, index: int, width: int, height: int) -> None:
    if isinstance(frame, Yuv420):
        if (frame.width, frame.height) != (width, height):
            raise EngineError(f"frame {index} must be {width}x{height}, got a {frame.width}x{frame.height} Yuv420")
        return
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (height, width, 3):
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise EngineError(f"frame {index} must be uint8 of shape ({height}, {width}, 3), got {got}")


def _video_frame(av: Any, to_yuv: RgbToYuv420, frame: np.ndarray | Yuv420, index: int, fps: int) -> Any:
    # BT.709 limited range, tagged on the stream: what players assume for HD, so colours match.
    if isinstance(frame, Yuv420):
        # Wrapped, not copied: libx264 copies its input into its own frames inside the encode call.
        out = av.VideoFrame.from_numpy_buffer(frame.data, format="yuv420p")
    else:
        out = to_yuv.video_frame(frame)
    out.pts, out.time_base = index, Fraction(1, fps)
    return out


def _tag_bt709(ctx: Any) -> None:
    from av.video.reformatter import ColorPrimaries, ColorRange, ColorTrc

    ctx.colorspace = 1  # AVCOL_SPC_BT709 (Colorspace enum values are swscale's, not these)
    ctx.color_primaries = ColorPrimaries.BT709
    ctx.color_trc = ColorTrc.BT709
    ctx.color_range = ColorRange.MPEG


def _mux(out: Any, packets: list[Any]) -> None:
    for packet in packets:
        out.mux(packet)


def _prepare_audio(audio: Audio, num_frames: int, fps: int) -> np.ndarray:
    """48 kHz stereo float32, exactly as long as the video (trimmed or zero-padded)."""
    samples = getattr(audio, "samples", None)
    if not isinstance(samples, np.ndarray) or not np.issubdtype(samples.dtype, np.floating) or audio.sample_rate <= 0:
        raise EngineError("engine audio must be an Audio of float samples (channels, n) and a positive sample rate")
    samples = resample(np.clip(samples, -1.0, 1.0), audio.sample_rate, AUDIO_RATE, 2)
    n = round(num_frames * AUDIO_RATE / fps)
    fitted = np.zeros((2, n), dtype=np.float32)
    fitted[:, : min(n, samples.shape[1])] = samples[:, :n]
    return fitted


class _AudioWriter:
    """Feeds AAC frames of a precomputed track, keeping pace with the video frames written."""

    def __init__(self, out: Any, samples: np.ndarray, fps: int) -> None:
        self.out, self.samples, self.fps, self.pos = out, samples, fps, 0
        self.stream = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        self.stream.time_base = Fraction(1, AUDIO_RATE)

    def write_until(self, frames_done: int) -> None:
        self._write(min(self.samples.shape[1], frames_done * AUDIO_RATE // self.fps))

    def finish(self) -> None:
        self._write(self.samples.shape[1])
        _mux(self.out, self.stream.encode(None))

    def _write(self, end: int) -> None:
        import av

        while self.pos < end:
            block = np.ascontiguousarray(self.samples[:, self.pos : self.pos + _AAC_FRAME])
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, self.pos, Fraction(1, AUDIO_RATE)
            _mux(self.out, self.stream.encode(frame))
            self.pos += block.shape[1]


def probe_mp4(path: Path) -> dict[str, Any]:
    """What a client would check in an MP4: size, duration (s, the video stream's), frame count,
    fps, pixel format, codecs, audio length, and whether ``moov`` precedes ``mdat`` (faststart)."""
    import av

    with av.open(str(path)) as container:
        v = container.streams.video[0]
        a = container.streams.audio[0] if container.streams.audio else None
        frames = v.frames or sum(1 for p in container.demux(v) if p.size)
        info: dict[str, Any] = {
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "duration": _stream_seconds(v),
            "num_frames": frames,
            "fps": float(v.average_rate) if v.average_rate else None,
            "pix_fmt": v.codec_context.pix_fmt,
            "video_codec": v.codec_context.name,
            "audio_codec": a.codec_context.name if a is not None else None,
            "audio_duration": _stream_seconds(a) if a is not None else None,
            "audio_sample_rate": a.codec_context.sample_rate if a is not None else None,
            "audio_channels": a.codec_context.channels if a is not None else None,
        }
    info["faststart"] = _moov_before_mdat(Path(path))
    info["bytes"] = Path(path).stat().st_size
    return info


def _stream_seconds(stream: Any) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def _moov_before_mdat(path: Path) -> bool:
    """Walk the top-level ISO-BMFF boxes (size, type) and see which of the two comes first."""
    with path.open("rb") as f:
        while header := f.read(8):
            if len(header) < 8:
                break
            size, kind = struct.unpack(">I4s", header)
            if kind in (b"moov", b"mdat"):
                return kind == b"moov"
            if size == 1:  # 64-bit size follows the type
                size = struct.unpack(">Q", f.read(8))[0] - 8
            elif size == 0:  # box runs to the end of the file
                break
            f.seek(size - 8, 1)
    return False
