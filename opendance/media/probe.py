"""Probe reference videos and audios from their bytes with PyAV, in memory or from the spooled
file intake wrote (read through Python, so FFmpeg opens nothing itself).

Only the demuxers of the accepted containers may open the bytes (``format_whitelist``), so a
playlist or concat script can never make FFmpeg open other files or URLs. The duration is
measured from the packets (each stream's last presentation time plus that packet's duration,
minus its first), because container headers can say anything. Walking the packets reads no pixels
and is bounded by the byte caps; only the first frame is decoded, to prove the stream decodes.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from ..errors import MediaError
from .images import MAX_ASPECT, MAX_SIDE, MIN_ASPECT, MIN_SIDE

VIDEO_DEMUXERS = "mov,mp4"
AUDIO_DEMUXERS = "wav,mp3,aac,mov,mp4"
# A reference video's frame follows the image rules (each side 64-6000 px, aspect 0.4-2.5), and
# holds at most DCI 4K's pixels: the worker decodes and fits every frame, so a frame must stay
# affordable. Checked from the stream header before anything is decoded, and on the first frame.
MAX_VIDEO_PIXELS = 4096 * 2160
# Memory one probe may need per pixel of the frame: the decoder's reference frames (H.264 keeps
# up to about 6 at 4K) in YUV 4:2:0, with room to spare; a 4096x2160 probe counts 101 MiB.
DECODE_BYTES_PER_PIXEL = 12
AUDIO_DECODE_COST = 4 * 1024 * 1024  # one decoded audio frame and the demuxer's buffers
MAX_PACKETS = 200_000  # far above 15 s of any real stream; a file past it is refused, not walked


@dataclass
class MediaInfo:
    format: str  # "mp4", "mov", "wav", "mp3", "aac", "m4a"
    duration: float  # seconds, measured from the packets of the main stream
    width: int | None = None  # video only
    height: int | None = None
    has_video: bool = False
    has_audio: bool = False
    video_codec: str | None = None
    audio_codec: str | None = None


def probe_video(data: bytes | Path, *, param: str) -> MediaInfo:
    """Refuse ``data`` unless it is an MP4/MOV whose video stream decodes; measure it."""
    what = "a video (MP4 or MOV)"
    with _open(data, VIDEO_DEMUXERS, param, what) as container:
        streams = [s for s in container.streams.video if not _is_cover_art(s)]
        if not streams:
            raise MediaError(f"{param} has no video stream; a reference video must have one", param=param)
        stream = streams[0]
        ctx = stream.codec_context
        if ctx.width and ctx.height:  # a header may leave them out: then the first frame tells
            check_video_shape(ctx.width, ctx.height, param)
        duration, frame = _walk(container, stream, param, what)
        check_video_shape(frame.width, frame.height, param)
        brand = str(container.metadata.get("major_brand", "")).strip().lower()
        return MediaInfo(
            format="mov" if brand == "qt" else "mp4",
            duration=duration,
            width=frame.width,
            height=frame.height,
            has_video=True,
            has_audio=bool(container.streams.audio),
            video_codec=ctx.name,
            audio_codec=container.streams.audio[0].codec_context.name if container.streams.audio else None,
        )


def probe_audio(data: bytes | Path, *, param: str) -> MediaInfo:
    """Refuse ``data`` unless it is a WAV/MP3/AAC (ADTS)/M4A whose audio stream decodes; measure it."""
    what = "an audio file (WAV, MP3, AAC or M4A)"
    with _open(data, AUDIO_DEMUXERS, param, what) as container:
        if not container.streams.audio:
            raise MediaError(f"{param} has no audio stream; a reference audio must have one", param=param)
        if any(not _is_cover_art(s) for s in container.streams.video):
            # An MP4 with pictures is a video, not an M4A: refused rather than silently stripped.
            message = f"{param} is a video; reference audios must be WAV, MP3, AAC or M4A (send it in videos instead)"
            raise MediaError(message, param=param)
        stream = container.streams.audio[0]
        duration, _ = _walk(container, stream, param, what)
        demuxer = container.format.name
        fmt = "m4a" if "mov" in demuxer.split(",") else demuxer
        return MediaInfo(format=fmt, duration=duration, has_audio=True, audio_codec=stream.codec_context.name)


def check_video_shape(width: int, height: int, param: str) -> None:
    """Refuse a frame size outside the rules above (``invalid_video_dimensions``)."""
    problem = None
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        problem = f"width and height must be {MIN_SIDE}-{MAX_SIDE} px"
    elif not MIN_ASPECT <= width / height <= MAX_ASPECT:
        problem = f"the aspect ratio must be {MIN_ASPECT}-{MAX_ASPECT} (this is {width / height:.2f})"
    elif width * height > MAX_VIDEO_PIXELS:
        problem = f"a frame may have at most {MAX_VIDEO_PIXELS} pixels (4096x2160)"
    if problem is not None:
        raise MediaError(f"{param} is {width}x{height} px; {problem}", param=param, code="invalid_video_dimensions")


def decode_cost(data: bytes | Path) -> int:
    """The memory ``probe_video`` will need, from the video stream's header alone (nothing is
    decoded). 0 when ``probe_video`` will refuse it before decoding (not a video, a bad shape)."""
    try:
        with _open(data, VIDEO_DEMUXERS, "", "") as container:
            streams = [s for s in container.streams.video if not _is_cover_art(s)]
            if not streams:
                return 0
            width, height = streams[0].codec_context.width or 0, streams[0].codec_context.height or 0
        check_video_shape(width, height, "")
    except MediaError:
        return 0
    return width * height * DECODE_BYTES_PER_PIXEL


@contextlib.contextmanager
def _open(data: bytes | Path, demuxers: str, param: str, what: str) -> Iterator[av.container.InputContainer]:
    with contextlib.ExitStack() as stack:
        source = io.BytesIO(data) if isinstance(data, bytes) else stack.enter_context(open(data, "rb"))
        if not source.read(1):
            raise MediaError(f"{param} is empty; expected {what}", param=param)
        source.seek(0)
        try:
            container = av.open(source, mode="r", container_options={"format_whitelist": demuxers})
        except (av.InvalidDataError, av.ArgumentError):
            # No allowed demuxer recognises the bytes (FFmpeg's own words for this say less).
            message = f"{param} does not open as {what}: the bytes are not one of these formats"
            raise MediaError(message, param=param) from None
        except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
            raise MediaError(f"{param} does not open as {what}: {_reason(exc)}", param=param) from None
        with container:
            yield container


def _is_cover_art(stream: av.stream.Stream) -> bool:
    """An embedded still picture (album art), which FFmpeg lists as a video stream."""
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _walk(container: av.container.InputContainer, stream: av.stream.Stream, param: str, what: str):
    """Read every packet of ``stream``: its measured duration, and its first decoded frame."""
    kind = "a video" if stream.type == "video" else "an audio"
    stream.thread_type = "SLICE"  # type: ignore[attr-defined]  # (codec streams have it) one frame is decoded; frame threads would only add latency
    first: Fraction | None = None
    end: Fraction | None = None
    frame = None
    count = 0
    try:
        for packet in container.demux(stream):
            count += 1
            if count > MAX_PACKETS:
                raise MediaError(f"{param} has more than {MAX_PACKETS} packets; too long for a reference", param=param)
            if frame is None:
                frame = next(iter(stream.codec_context.decode(packet)), None)  # type: ignore[attr-defined]
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None or packet.time_base is None:
                continue
            start, stop = ts * packet.time_base, (ts + (packet.duration or 0)) * packet.time_base
            first = start if first is None or start < first else first
            end = stop if end is None or stop > end else end
        if frame is None:
            frame = next(iter(stream.codec_context.decode(None)), None)  # type: ignore[attr-defined]  # drain buffered frames
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError, IndexError, StopIteration) as exc:
        raise MediaError(f"{param} does not decode as {kind}: {_reason(exc)}", param=param) from None
    if frame is None:
        raise MediaError(f"{param} does not decode as {kind}: no frame could be decoded", param=param)
    if first is None or end is None:
        raise MediaError(f"{param} does not decode as {kind}: its packets carry no timestamps", param=param)
    # Packets before time 0 are the encoder's priming (an edit list hides them): not played.
    duration = float(end - max(first, Fraction(0)))
    return max(duration, 0.0), frame


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.replace("'<none>'", "").rstrip(": ")[:200]
