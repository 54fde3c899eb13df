"""The preview's text-to-video frames: the prompt typeset over a seeded, slowly panning colour
field, an "opendance preview" label and a time code (and the typesetting the labels share).

Everything static is drawn once (the field, converted to YUV once per pixel parity when the
frames are YUV; the caption and the label as overlays); per frame there is one crop, two
pastes and the time code (in YUV, set from glyphs rendered once each).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .base import Job
from .preview_planes import Frame, Overlay, Picture, draw_caption


def text_frames(job: Job, rng: np.random.Generator, font_path: str | None, yuv: bool) -> Iterator[Frame]:
    w, h, n, fps = job.width, job.height, job.num_frames, job.fps
    field = _colour_field(w, h, rng)
    phase = rng.uniform(0, 2 * math.pi, size=2)
    spare_x, spare_y = field.width - w, field.height - h
    overlays = [Overlay(*label(f"opendance preview  seed {job.seed}", w, h, top=True))]
    if (text := _text_layer(job.prompt, w, h, font_path)) is not None:
        overlays.append(Overlay(*text))
    stamp_font, pad = load_font(max(10, min(w, h) // 30)), min(w, h) // 40
    # YUV chroma is sampled every 2 pixels, so a window at an odd offset is cut from the field
    # shifted by one pixel: the (up to) four shifted fields are converted once, up front.
    fields = (
        {(0, 0): Picture.of(field, yuv)}
        if not yuv
        else {
            (px, py): Picture.of(field.crop((px, py, px + (field.width - px) // 2 * 2, py + (field.height - py) // 2 * 2)), yuv)
            for px in (0, 1)
            for py in (0, 1)
        }
    )
    for i in range(n):
        t = i / n  # one full, looping drift of the background over the clip
        x = round(spare_x * (0.5 + 0.5 * math.sin(2 * math.pi * t + phase[0])))
        y = round(spare_y * (0.5 + 0.5 * math.sin(2 * math.pi * t + phase[1])))
        px, py = (x % 2, y % 2) if yuv else (0, 0)
        frame = fields[px, py].crop(x - px, y - py, w, h)
        for overlay in overlays:
            overlay.paste(frame)
        draw_caption(frame, (pad, h - pad), f"{i / fps:05.2f} s  frame {i + 1}/{n}", stamp_font)
        yield frame.frame()


@functools.lru_cache(maxsize=64)
def load_font(size: int, path: str | None = None) -> Any:
    """The font file at ``path`` (or Pillow's built-in scalable font) at ``size`` pixels."""
    return ImageFont.truetype(path, size) if path is not None else ImageFont.load_default(size)


def _colour_field(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A smooth seeded field a quarter larger than the frame (the spare is the pan range):
    a few coloured blobs on a tiny grid, blown up with bicubic interpolation."""
    gw, gh = 8, max(2, round(8 * h / w))
    grid = np.tile(rng.uniform(20, 120, size=3), (gh, gw, 1))
    yy, xx = np.mgrid[0:gh, 0:gw]
    for _ in range(4):
        cx, cy, r = rng.uniform(0, gw), rng.uniform(0, gh), rng.uniform(1.5, 4)
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)[..., None]
        grid = grid * (1 - weight) + rng.uniform(40, 230, size=3) * weight
    small = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), "RGB")
    return small.resize((w + w // 4, h + h // 4), Image.Resampling.BICUBIC)


def _text_layer(prompt: str, w: int, h: int, font_path: str | None = None) -> tuple[Image.Image, tuple[int, int]] | None:
    """The prompt wrapped and centred as an RGBA patch and its position; ``None`` if blank.
    The font shrinks for long prompts; what still does not fit ends in an ellipsis."""
    if not (text := " ".join(prompt.split())):
        return None
    box_w, box_h, start = int(w * 0.84), int(h * 0.6), max(12, min(w, h) // 12)
    for size in (start, start * 4 // 5, start * 2 // 3, start // 2):
        font, line_h = load_font(size, font_path), round(size * 1.25)
        max_lines = max(1, box_h // line_h)
        cap = max_lines * (box_w * 5 // size + 1)  # more characters than the box can hold: no glyph is under size/5
        lines = _wrap(text[:cap].split(), font, box_w, max_lines)
        if len(lines) <= max_lines and len(text) <= cap:
            break
    if len(lines) > max_lines or len(text) > cap:
        lines = lines[:max_lines]
        while lines[-1] and font.getlength(lines[-1] + "…") > box_w:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "…"
    layer = Image.new("RGBA", (box_w + 8, len(lines) * line_h + 8), (0, 0, 0, 0))
    draw, stroke = ImageDraw.Draw(layer), max(1, size // 16)
    for k, line in enumerate(lines):
        draw.text(
            (layer.width / 2, 4 + k * line_h),
            line,
            font=font,
            anchor="ma",
            fill=(255, 255, 255, 255),
            stroke_width=stroke,
            stroke_fill=(0, 0, 0, 170),
        )
    return layer, ((w - layer.width) // 2, (h - layer.height) // 2)


def _wrap(words: list[str], font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap, stopping after ``max_lines + 1`` lines (one more says "it overflows");
    a word wider than the line is broken between characters."""
    per_line = width * 5 // int(font.size) + 1  # more characters than one line holds
    lines: list[str] = []
    line = ""
    for word in words:
        while font.getlength(word[:per_line]) > width and len(lines) <= max_lines:
            lo, hi = 1, min(len(word), per_line)  # the longest prefix that fits (at least one character)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if font.getlength(word[:mid]) <= width else (lo, mid - 1)
            lines += [line, word[:lo]] if line else [word[:lo]]
            line, word = "", word[lo:]
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
        else:
            lines.append(line)
            line = word
        if len(lines) > max_lines:
            return lines
    return lines + [line] if line else lines


def label(text: str, w: int, h: int, top: bool) -> tuple[Image.Image, tuple[int, int]]:
    """Small white text on a translucent dark box, top left or bottom right, with its position."""
    font, margin = load_font(max(10, min(w, h) // 30)), min(w, h) // 40
    patch = Image.new("RGBA", (int(font.getlength(text)) + 12, font.size + 12), (0, 0, 0, 110))
    ImageDraw.Draw(patch).text((6, 6), text, font=font, fill=(255, 255, 255, 235))
    return patch, (margin, margin) if top else (w - patch.width - margin, h - patch.height - margin)
