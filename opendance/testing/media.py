"""Make real media files in memory for tests and benchmarks: images, videos, audios.

Everything is deterministic (a seed picks colours) and smooth enough to survive lossy
encoding, so frame-accuracy checks (PSNR) are meaningful.
"""

from __future__ import annotations

import base64
import io
from fractions import Fraction

import numpy as np
from PIL import Image


def gradient_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth two-axis colour gradient with a soft disc: survives JPEG/H.264 well."""
    rng = np.random.default_rng(seed)
    c0, c1, c2 = (rng.integers(30, 225, size=3) for _ in range(3))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    img = (c0[None, None, :] * (1 - u[..., None]) + c1[None, None, :] * u[..., None]) * (1 - v[..., None] * 0.5)
    cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, 0.2 * min(width, height)
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    w = np.clip((r - d) / (0.3 * r), 0, 1)[..., None]
    img = img * (1 - w) + c2[None, None, :] * w
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def image_bytes(width: int = 320, height: int = 240, fmt: str = "PNG", seed: int = 0) -> bytes:
    buf = io.BytesIO()
    gradient_image(width, height, seed).save(buf, format=fmt)
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def tone(duration: float, sample_rate: int = 48000, freq: float = 440.0, channels: int = 2) -> np.ndarray:
    t = np.arange(int(round(duration * sample_rate)), dtype=np.float32) / sample_rate
    mono = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.repeat(mono[None, :], channels, axis=0)


def video_bytes(
    duration: float,
    width: int = 160,
    height: int = 96,
    fps: int = 24,
    container: str = "mp4",
    with_audio: bool = False,
    seed: int = 0,
) -> bytes:
    """An H.264 video of ``duration`` seconds (a moving gradient), optionally with an AAC tone."""
    import av

    buf = io.BytesIO()
    base = np.asarray(gradient_image(width, height, seed), dtype=np.uint8)
    n = int(round(duration * fps))
    with av.open(buf, mode="w", format=container) as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "ultrafast"}
        as_ = None
        if with_audio:
            as_ = out.add_stream("aac", rate=48000)
            as_.layout = "stereo"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i * 2, axis=1), format="rgb24")
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if as_ is not None:
            _write_audio(out, as_, tone(duration, 48000), 48000)
    return buf.getvalue()


def audio_bytes(duration: float, fmt: str = "wav", sample_rate: int = 48000, freq: float = 440.0) -> bytes:
    """A sine tone of ``duration`` seconds as WAV, MP3, AAC (ADTS) or M4A."""
    import av

    codec, container = {
        "wav": ("pcm_s16le", "wav"),
        "mp3": ("libmp3lame", "mp3"),
        "aac": ("aac", "adts"),
        "m4a": ("aac", "ipod"),
    }[fmt]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        st = out.add_stream(codec, rate=sample_rate)
        st.layout = "stereo"  # type: ignore[union-attr]  # an audio codec gives an audio stream
        _write_audio(out, st, tone(duration, sample_rate, freq), sample_rate)
    return buf.getvalue()


def _write_audio(out, stream, samples: np.ndarray, sample_rate: int) -> None:
    import av

    fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
    chunk = 1024
    pts = 0
    for start in range(0, samples.shape[1], chunk):
        block = np.ascontiguousarray(samples[:, start : start + chunk], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
        frame.sample_rate = sample_rate
        frame.pts = pts
        frame.time_base = Fraction(1, sample_rate)
        pts += block.shape[1]
        if fmt != "fltp":
            for f in av.AudioResampler(format=fmt, layout="stereo", rate=sample_rate).resample(frame):
                for p in stream.encode(f):
                    out.mux(p)
            continue
        for p in stream.encode(frame):
            out.mux(p)
    for p in stream.encode(None):
        out.mux(p)
