"""How the preview engine draws a frame: in RGB, or straight in the encoder's YUV 4:2:0 planes.

A ``Picture`` is a frame in the making as PIL images: one RGB image, or the Y, U and V planes of
BT.709 limited-range YUV 4:2:0 (``L`` images, U and V at half width and height). Its operations
(zoom, crossfade, crop) work plane by plane, each plane at its own scale, and every step is
linear in the pixel values, so the YUV frame is the RGB frame's conversion up to rounding (and
to chroma filtered at half size instead of at full size). The RGB path is the engine contract's
(``StepContext.yuv420`` false); the YUV path is what the encoder takes without converting.

Everything the preview draws on top of a picture (the prompt, the labels, the time code, the
watermark) is white, black or grey, so in YUV it sets luma only and pulls chroma to neutral
under its alpha.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from ..media.yuv import CHROMA_NEUTRAL, LUMA_BLACK, LUMA_WHITE, RgbToYuv420, Yuv420

Frame = np.ndarray | Yuv420
# Grey level (R = G = B) -> BT.709 limited-range luma.
_TO_LUMA = [round(LUMA_BLACK + g * (LUMA_WHITE - LUMA_BLACK) / 255) for g in range(256)]


class Picture:
    def __init__(self, planes: list[Image.Image]) -> None:
        self.planes = planes

    @classmethod
    def of(cls, image: Image.Image, yuv: bool) -> Picture:
        """``image`` as an RGB picture, or converted to YUV planes exactly as the encoder would."""
        image = image.convert("RGB")
        if not yuv:
            return cls([image])
        frame = RgbToYuv420()(np.asarray(image))
        return cls([Image.fromarray(p) for p in (frame.y, frame.u, frame.v)])

    @property
    def yuv(self) -> bool:
        return len(self.planes) == 3

    @property
    def size(self) -> tuple[int, int]:
        return self.planes[0].size

    def frame(self) -> Frame:
        """The finished frame: RGB uint8 H x W x 3, or ``Yuv420``."""
        if not self.yuv:
            return np.asarray(self.planes[0])
        return Yuv420.from_planes(*(np.asarray(p) for p in self.planes))

    def view(self, zoom: float, fx: float = 0.0, fy: float = 0.0) -> Picture:
        """Zoomed in by ``zoom`` (>= 1), the window moved towards an edge by ``fx``, ``fy`` in [-1, 1]."""
        return Picture([_view(p, zoom, fx, fy) for p in self.planes])

    def view_frame(self, zoom: float, fx: float, fy: float, helper: Executor | None = None) -> Frame:
        """``view(zoom, fx, fy).frame()``. In YUV, given a ``helper`` thread, the resampling is cut
        in two halves that run at once (Pillow lets go of the GIL while it resamples): the lower
        half of the luma and V there, the upper half and U here."""
        if not self.yuv or helper is None or zoom <= 1.0:
            return self.view(zoom, fx, fy).frame()
        luma, u, v = self.planes
        w, h = luma.size
        frame, split = Yuv420(np.empty((h * 3 // 2, w), np.uint8)), h // 2

        def lower() -> None:
            frame.y[split:] = np.asarray(_view(luma, zoom, fx, fy, rows=(split, h)))
            frame.v[...] = np.asarray(_view(v, zoom, fx, fy))

        later = helper.submit(lower)
        frame.y[:split] = np.asarray(_view(luma, zoom, fx, fy, rows=(0, split)))
        frame.u[...] = np.asarray(_view(u, zoom, fx, fy))
        later.result()
        return frame

    def blend(self, other: Picture, t: float) -> Picture:
        return Picture([Image.blend(a, b, t) for a, b in zip(self.planes, other.planes, strict=True)])

    def crop(self, x: int, y: int, w: int, h: int) -> Picture:
        """The ``w`` x ``h`` window at ``x``, ``y`` (even, in YUV: the chroma grid is 2 pixels)."""
        if not self.yuv:
            return Picture([self.planes[0].crop((x, y, x + w, y + h))])
        if x % 2 or y % 2:
            raise ValueError(f"a YUV 4:2:0 crop starts on even pixels, not at {x}, {y}")
        luma, *chroma = self.planes
        half = (x // 2, y // 2, (x + w) // 2, (y + h) // 2)
        return Picture([luma.crop((x, y, x + w, y + h)), *(c.crop(half) for c in chroma)])


def _view(image: Image.Image, zoom: float, fx: float = 0.0, fy: float = 0.0, rows: tuple[int, int] | None = None) -> Image.Image:
    """Rows ``rows`` (all by default) of the zoomed view. Upscaling the frame-sized image (not a
    larger source) is the cheap path in Pillow."""
    if zoom <= 1.0:
        return image
    w, h = image.size
    top, bottom = rows or (0, h)
    bw, bh = w / zoom, h / zoom
    x0, y0 = (w - bw) / 2 * (1 + fx), (h - bh) / 2 * (1 + fy)
    box = (x0, y0 + bh * (top / h), x0 + bw, y0 + bh * (bottom / h))
    return image.resize((w, bottom - top), Image.Resampling.BILINEAR, box=box)


class Overlay:
    """A grey RGBA patch (R = G = B; its alpha says how much it covers) placed at ``at``."""

    def __init__(self, rgba: Image.Image, at: tuple[int, int]) -> None:
        self.rgba, self.at = rgba, at
        self.alpha = rgba.getchannel("A")
        self.luma = rgba.getchannel("R").point(_TO_LUMA)
        self.chroma_alpha, self.chroma_at = _half(self.alpha, at)

    def paste(self, picture: Picture) -> None:
        if not picture.yuv:
            picture.planes[0].paste(self.rgba, self.at, self.rgba)
            return
        luma, *chroma = picture.planes
        luma.paste(self.luma, self.at, self.alpha)
        box = (*self.chroma_at, self.chroma_at[0] + self.chroma_alpha.width, self.chroma_at[1] + self.chroma_alpha.height)
        for plane in chroma:
            plane.paste(CHROMA_NEUTRAL, box, self.chroma_alpha)

    def marker(self) -> Callable[[Frame], Frame]:
        """A function that returns a copy of a finished frame with this overlay on it."""
        x0, y0 = self.at
        box = np.s_[y0 : y0 + self.rgba.height, x0 : x0 + self.rgba.width]
        rgba = np.asarray(self.rgba, dtype=np.float32)
        colour, alpha = rgba[..., :3], rgba[..., 3:] / 255
        luma, luma_alpha = np.asarray(self.luma, dtype=np.float32), alpha[..., 0]
        cx, cy = self.chroma_at
        chroma_alpha = np.asarray(self.chroma_alpha, dtype=np.float32) / 255
        cbox = np.s_[cy : cy + chroma_alpha.shape[0], cx : cx + chroma_alpha.shape[1]]

        def mark(frame: Frame) -> Frame:
            out = frame.copy()  # frames may be shared (a held still is one frame)
            if isinstance(out, Yuv420):
                out.y[box] = (out.y[box] * (1 - luma_alpha) + luma * luma_alpha + 0.5).astype(np.uint8)
                for plane in (out.u, out.v):
                    plane[cbox] = (plane[cbox] * (1 - chroma_alpha) + CHROMA_NEUTRAL * chroma_alpha + 0.5).astype(np.uint8)
            else:
                out[box] = (out[box] * (1 - alpha) + colour * alpha + 0.5).astype(np.uint8)
            return out

        return mark


def draw_caption(picture: Picture, xy: tuple[int, int], text: str, font: Any) -> None:
    """White ``text`` with a one-pixel black shadow below and to the right, its left end on the
    font's descender line at ``xy`` (Pillow's anchor "ld")."""
    if not picture.yuv:
        draw, (x, y) = ImageDraw.Draw(picture.planes[0]), xy
        draw.text((x + 1, y + 1), text, font=font, anchor="ld", fill=(0, 0, 0))
        draw.text((x, y), text, font=font, anchor="ld", fill=(255, 255, 255))
        return
    # The caption changes every frame (a time code), so it is set from glyphs rendered once
    # each, then used as one mask for the shadow, the text and the chroma.
    mask, at = _set(text, font, xy)
    luma, *chroma = picture.planes
    luma.paste(LUMA_BLACK, (at[0] + 1, at[1] + 1, at[0] + 1 + mask.width, at[1] + 1 + mask.height), mask)
    luma.paste(LUMA_WHITE, (*at, at[0] + mask.width, at[1] + mask.height), mask)
    covered = ImageChops.lighter(mask, ImageChops.offset(mask, 1, 1))  # text and shadow (the mask has a spare edge)
    chroma_alpha, (cx, cy) = _half(covered, at)
    for plane in chroma:
        plane.paste(CHROMA_NEUTRAL, (cx, cy, cx + chroma_alpha.width, cy + chroma_alpha.height), chroma_alpha)


def _set(text: str, font: Any, xy: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """``text`` as a mask with a spare pixel right and below, and where its top left goes."""
    ascent, descent = font.getmetrics()
    glyphs = [_glyph(font, ch) for ch in text]
    mask = Image.new("L", (max(1, math.ceil(sum(g[3] for g in glyphs))) + 2, ascent + descent + 1))
    pen = 0.0
    for glyph, left, top, advance in glyphs:
        x, y = round(pen) + left, ascent + top
        mask.paste(255, (x, y, x + glyph.width, y + glyph.height), glyph)
        pen += advance
    return mask, (xy[0], xy[1] - ascent - descent)


@functools.lru_cache(maxsize=512)
def _glyph(font: Any, ch: str) -> tuple[Image.Image, int, int, float]:
    """One character as a mask, its offset from the pen on the baseline, and its advance."""
    left, top, right, bottom = font.getbbox(ch, anchor="ls")
    glyph = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(glyph).text((-left, -top), ch, font=font, anchor="ls", fill=255)
    return glyph, left, top, font.getlength(ch)


def _half(alpha: Image.Image, at: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """``alpha`` placed at ``at``, at chroma resolution: padded out to the 2-pixel chroma grid,
    then each 2 x 2 block averaged; with where it goes on a chroma plane."""
    px, py = at[0] % 2, at[1] % 2
    w, h = alpha.width + px, alpha.height + py
    padded = Image.new("L", (w + w % 2, h + h % 2))
    padded.paste(alpha, (px, py))
    return padded.reduce(2), ((at[0] - px) // 2, (at[1] - py) // 2)
