"""Make the sample media in this folder (they are committed; run this to make them again).

    python examples/make_samples.py

- ``first-frame.jpg``, ``last-frame.jpg``: 640x360 pictures of a little scene at dawn and at
  dusk (a sun over hills), for image-to-video and first-and-last-frame.
- ``clip.mp4``: 3 s of 320x180 H.264 at 12 fps (the sun crossing the sky), a reference video.
- ``tune.m4a``: 3 s of AAC, a few notes, a reference audio.

Everything is drawn and synthesised here (Pillow, numpy, PyAV: opendance's own dependencies),
so the files are small and free to use.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent


def scene(width: int, height: int, sun: float, dusk: bool) -> Image.Image:
    """Sky, sun (``sun`` 0-1 across the sky), two rows of hills."""
    top, bottom = ((40, 20, 90), (250, 140, 90)) if dusk else ((90, 150, 230), (250, 220, 170))
    t = np.linspace(0, 1, height)[:, None, None]
    sky = (np.array(top) * (1 - t) + np.array(bottom) * t).astype(np.uint8)
    img = Image.fromarray(np.repeat(sky, width, axis=1), "RGB")
    draw = ImageDraw.Draw(img)
    cx, cy, r = width * (0.1 + 0.8 * sun), height * (0.55 - 0.35 * np.sin(np.pi * sun)), height * 0.09
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 200, 80) if dusk else (255, 245, 200))
    for row, (shade, base) in enumerate((((60, 110, 70), 0.68), ((35, 80, 50), 0.8))):
        xs = np.arange(0, width + 8, 8)
        ys = height * base + height * 0.06 * np.sin(xs / width * (5 + 3 * row) + row)
        draw.polygon([(0, height), *zip(xs.tolist(), ys.tolist()), (width, height)], fill=shade)
    return img.filter(ImageFilter.SMOOTH)


def write_video(path: Path, seconds: int = 3, fps: int = 12, size: tuple[int, int] = (320, 180)) -> None:
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.options = {"crf": "32", "preset": "veryslow"}
        n = seconds * fps
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.asarray(scene(*size, i / (n - 1), dusk=False)), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_tune(path: Path, seconds: int = 3, rate: int = 24000) -> None:
    notes = [392.0, 440.0, 494.0, 587.3, 494.0, 440.0]  # G A B D B A
    t = np.arange(seconds * rate) / rate
    step = len(t) // len(notes)
    freq = np.repeat(notes, step)[: len(t)]
    freq = np.pad(freq, (0, len(t) - len(freq)), mode="edge")
    envelope = np.minimum(1.0, (np.arange(len(t)) % step) / (0.02 * rate)) * np.exp(-((np.arange(len(t)) % step) / rate) * 3)
    samples = (0.25 * np.sin(2 * np.pi * np.cumsum(freq) / rate) * envelope).astype(np.float32)
    with av.open(str(path), mode="w", format="ipod") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        stream.bit_rate = 32000
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024].copy(), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def main() -> None:
    scene(640, 360, 0.15, dusk=False).save(HERE / "first-frame.jpg", quality=80)
    scene(640, 360, 0.85, dusk=True).save(HERE / "last-frame.jpg", quality=80)
    write_video(HERE / "clip.mp4")
    write_tune(HERE / "tune.m4a")
    for name in ("first-frame.jpg", "last-frame.jpg", "clip.mp4", "tune.m4a"):
        print(f"{name}: {(HERE / name).stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
