"""The ``preview`` engine: procedural, deterministic, CPU-only videos for development and tests.

It makes a video of the right size, length and shape for every mode without a model, so that
clients, CI and load tests can exercise the whole server in seconds:

- text-to-video: the prompt typeset over a seeded, slowly panning colour field, with an
  "opendance preview" label and a time code so nobody mistakes it for a model's output.
- image-to-video: frame 0 is exactly ``fit_cover(image)``, then a slow eased zoom and pan.
- first-and-last-frame: exactly ``fit_cover(image)`` first and ``fit_cover(last_image)`` last,
  between them a crossfade that pushes in and back out.
- omni-reference: a montage of the references, images first then videos, each in its given
  order. Videos keep their own length while there is room; images share what is left (each
  with a slow zoom), and when videos crowd the output, images get a short slot each and the
  videos are trimmed in proportion. Videos alone that run short loop. Reference audios are
  mixed in (``mix_reference_audio``); the sound tracks of reference videos are ignored, so
  the output's sound is exactly the audios the client passed as audio.

``camera_fixed`` turns zoom and pan off (a still image is held; a morph only crossfades),
and ``watermark`` draws a small "AI generated" mark; ``generate_audio`` is ignored (the preview
makes no sound of its own). Frames are made lazily as the encoder pulls them; every frame
checks for cancellation.

The prompt is typeset with the model's ``font`` option when it has one; otherwise, for a prompt
in Chinese, Japanese or Korean, with the first CJK font found among the usual system places
(``CJK_FONTS``: Noto Sans CJK, WenQuanYi, Droid Sans Fallback, PingFang); otherwise with
Pillow's built-in font, which has Latin glyphs only (other scripts show as boxes).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..domain import Mode
from ..errors import EngineError
from ..media.audio import mix_reference_audio
from ..media.frames import fit_cover, read_video_frames, to_array
from .base import Engine, Inputs, Job, Output, StepContext
from .frame_chunks import checkpointed
from .options import PreviewOptions

PROGRESS_EVERY = 4  # frames between progress reports
ZOOM = 1.12  # how far image modes zoom in over their clip
# Where Linux distributions (apt fonts-noto-cjk / fonts-wqy-microhei / fonts-droid-fallback,
# dnf google-noto-sans-cjk-fonts) and macOS keep a font with CJK glyphs.
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
)


class PreviewEngine(Engine):
    name = "preview"

    def __init__(self, spec: dict[str, Any], device: str = "cpu") -> None:
        super().__init__(spec, device)
        self.opts = PreviewOptions(**{"engine": "preview", **spec})
        if self.opts.font is not None:
            try:
                ImageFont.truetype(str(self.opts.font), 12)
            except OSError as exc:
                raise ValueError(f"font = {str(self.opts.font)!r}: not a font this engine can read ({exc})") from None

    def check_inputs(self, job: Job, inputs: Inputs) -> None:
        if min(job.width, job.height, job.fps) <= 0 or job.num_frames < 2:
            raise EngineError(f"need a size, fps, 2+ frames: {job.width}x{job.height}, {job.num_frames} at {job.fps}")
        if job.mode in (Mode.IMAGE_TO_VIDEO, Mode.FIRST_AND_LAST_FRAME) and inputs.image is None:
            raise EngineError(f"{job.mode.value} needs an image")
        if job.mode is Mode.FIRST_AND_LAST_FRAME and inputs.last_image is None:
            raise EngineError("first-and-last-frame needs a last_image")
        if job.mode is Mode.OMNI_REFERENCE and not (inputs.images or inputs.videos):
            raise EngineError("omni-reference needs at least one reference image or video")

    def generate(self, job: Job, inputs: Inputs, ctx: StepContext) -> Output:
        self.check_inputs(job, inputs)
        w, h, n = job.width, job.height, job.num_frames
        rng = np.random.default_rng(job.seed)
        moving = not job.options.get("camera_fixed", False)
        frames: Iterable[np.ndarray]
        if job.mode is Mode.TEXT_TO_VIDEO:
            frames = _text_frames(job, rng, self._caption_font(job.prompt))
        elif job.mode is Mode.IMAGE_TO_VIDEO:
            frames = _zoom_frames(fit_cover(inputs.image, w, h), n, rng, moving)
        elif job.mode is Mode.FIRST_AND_LAST_FRAME:
            frames = _morph_frames(fit_cover(inputs.image, w, h), fit_cover(inputs.last_image, w, h), n, moving)
        else:
            frames = _montage_frames(job, inputs, rng, moving)
        audio = None  # the preview's only sound is reference audio (``generate_audio`` is ignored)
        if job.mode is Mode.OMNI_REFERENCE and inputs.audios:
            audio = mix_reference_audio(list(inputs.audios), job.duration)
        ctx.check_cancelled()
        mark = _watermark(w, h) if job.options.get("watermark", False) else None
        # Finished frames kept as checkpoint chunks only when the model asks (``checkpoint_frames``
        # in its spec): preview frames are about as cheap to remake as to store.
        paced = checkpointed(_paced(frames, n, ctx, mark), n, ctx, self.opts.checkpoint_frames)
        return Output(frames=paced, fps=job.fps, audio=audio)

    def _caption_font(self, prompt: str) -> str | None:
        """The font file for the prompt's caption, or None for the built-in font."""
        if self.opts.font is not None:
            return str(self.opts.font)
        if any(_is_cjk(ch) for ch in prompt):
            return next((path for path in CJK_FONTS if Path(path).is_file()), None)
        return None


def _is_cjk(ch: str) -> bool:
    """Han ideographs, kana, hangul, CJK punctuation and full-width forms."""
    o = ord(ch)
    return (0x2E80 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF or 0xFF00 <= o <= 0xFFEF
            or 0x20000 <= o <= 0x3FFFF)


def _paced(
    frames: Iterable[np.ndarray], total: int, ctx: StepContext, mark: Callable[[np.ndarray], np.ndarray] | None
) -> Iterator[np.ndarray]:
    """Exactly ``total`` frames; checks cancellation before each one and reports progress."""
    it = iter(frames)
    for done in range(1, total + 1):
        ctx.check_cancelled()
        frame = next(it)
        yield mark(frame) if mark is not None else frame
        if done % PROGRESS_EVERY == 0 or done == total:
            ctx.progress(done, total)


def _ease(t: float) -> float:  # smoothstep: motion starts and stops gently
    return t * t * (3 - 2 * t)


def _view(image: Image.Image, zoom: float, fx: float = 0.0, fy: float = 0.0) -> Image.Image:
    """``image`` zoomed in by ``zoom`` (>= 1), the window moved towards an edge by ``fx``, ``fy``
    in [-1, 1]. Upscaling the frame-sized image (not a larger source) is the cheap path in Pillow."""
    if zoom <= 1.0:
        return image
    w, h = image.size
    bw, bh = w / zoom, h / zoom
    x0, y0 = (w - bw) / 2 * (1 + fx), (h - bh) / 2 * (1 + fy)
    return image.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + bw, y0 + bh))


def _zoom_frames(still: Image.Image, n: int, rng: np.random.Generator, moving: bool) -> Iterator[np.ndarray]:
    """``still`` exactly, then an eased zoom and pan; with a fixed camera, the still held."""
    angle, base = rng.uniform(0, 2 * math.pi), to_array(still)
    yield base
    for i in range(1, n):
        e = _ease(i / (n - 1))
        dx, dy = 0.6 * e * math.cos(angle), 0.6 * e * math.sin(angle)
        yield np.asarray(_view(still, 1 + (ZOOM - 1) * e, dx, dy)) if moving else base


def _morph_frames(first: Image.Image, last: Image.Image, n: int, moving: bool) -> Iterator[np.ndarray]:
    """Exactly ``first`` and ``last`` at the ends; between, a crossfade that pushes in and back
    out (the zoom is 1 at both ends, so one zoom of the blend is enough)."""
    yield to_array(first)
    for i in range(1, n - 1):
        t = i / (n - 1)
        mixed = Image.blend(first, last, _ease(t))
        yield np.asarray(_view(mixed, 1 + (ZOOM - 1) * math.sin(math.pi * t)) if moving else mixed)
    yield to_array(last)


def _montage_frames(job: Job, inputs: Inputs, rng: np.random.Generator, moving: bool) -> Iterator[np.ndarray]:
    w, h, n, fps = job.width, job.height, job.num_frames, job.fps
    lengths = [_video_frames(p, fps) for p in inputs.videos]
    for kind, index, count in _plan(len(inputs.images), lengths, n, fps):
        if kind == "image":
            yield from _zoom_frames(fit_cover(inputs.images[index], w, h), count, rng, moving)
        else:
            yield from _exactly(read_video_frames(inputs.videos[index], fps, w, h, max_frames=count), count, index)


def _plan(images: int, videos: list[int], n: int, fps: int) -> list[tuple[str, int, int]]:
    """Segments (kind, index, frames) whose frames add up to exactly ``n``."""
    total_video = sum(videos)
    if images == 0:  # videos only: play them in order, looping, until the output is full
        plan: list[tuple[str, int, int]] = []
        for index in itertools.cycle(range(len(videos))):
            if (left := n - sum(c for _, _, c in plan)) == 0:
                return plan
            plan.append(("video", index, min(videos[index], left)))
    each_min = max(1, min(fps, n // (3 * images)))  # images get at least a third when crowded
    video_alloc = _share(max(0, min(total_video, n - images * each_min)), videos)
    image_alloc = _share(n - sum(video_alloc), [1] * images)
    plan = [("image", i, c) for i, c in enumerate(image_alloc)] + [("video", i, c) for i, c in enumerate(video_alloc)]
    return [segment for segment in plan if segment[2] > 0]


def _share(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder: the parts add up exactly)."""
    if (whole := sum(weights)) == 0:
        return [0] * len(weights)
    exact = [total * wt / whole for wt in weights]
    parts = [math.floor(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: parts[i] - exact[i])[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _video_frames(path: Path, fps: int) -> int:
    """A reference video's length in output frames (at least 1), from its video stream."""
    import av

    with av.open(str(path)) as container:
        v = container.streams.video[0]
        seconds = float(v.duration * v.time_base) if v.duration else (container.duration or 0) / av.time_base
    return max(1, round(seconds * fps))


def _exactly(frames: Iterator[np.ndarray], count: int, index: int) -> Iterator[np.ndarray]:
    """``count`` frames of a video: trimmed, or its last frame held if it decodes short."""
    last = None
    for last in itertools.islice(frames, count):
        count -= 1
        yield last
    if last is None:
        raise EngineError(f"reference video {index} has no frames")
    yield from itertools.repeat(last, count)


@functools.lru_cache(maxsize=64)
def _font(size: int, path: str | None = None) -> Any:
    """The font file at ``path`` (or Pillow's built-in scalable font) at ``size`` pixels."""
    return ImageFont.truetype(path, size) if path is not None else ImageFont.load_default(size)


def _text_frames(job: Job, rng: np.random.Generator, font_path: str | None = None) -> Iterator[np.ndarray]:
    w, h, n, fps = job.width, job.height, job.num_frames, job.fps
    field = _colour_field(w, h, rng)
    phase = rng.uniform(0, 2 * math.pi, size=2)
    spare_x, spare_y = field.width - w, field.height - h
    # Everything static is drawn once; per frame only a crop, two pastes and the time code.
    overlays = [_label(f"opendance preview  seed {job.seed}", w, h, top=True)]
    if (text := _text_layer(job.prompt, w, h, font_path)) is not None:
        overlays.append(text)
    stamp_font, pad = _font(max(10, min(w, h) // 30)), min(w, h) // 40
    for i in range(n):
        t = i / n  # one full, looping drift of the background over the clip
        x = round(spare_x * (0.5 + 0.5 * math.sin(2 * math.pi * t + phase[0])))
        y = round(spare_y * (0.5 + 0.5 * math.sin(2 * math.pi * t + phase[1])))
        frame = field.crop((x, y, x + w, y + h))
        for patch, at in overlays:
            frame.paste(patch, at, patch)
        draw, stamp = ImageDraw.Draw(frame), f"{i / fps:05.2f} s  frame {i + 1}/{n}"
        draw.text((pad + 1, h - pad + 1), stamp, font=stamp_font, anchor="ld", fill=(0, 0, 0))  # shadow
        draw.text((pad, h - pad), stamp, font=stamp_font, anchor="ld", fill=(255, 255, 255))
        yield np.asarray(frame)


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
        font, line_h = _font(size, font_path), round(size * 1.25)
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
        draw.text((layer.width / 2, 4 + k * line_h), line, font=font, anchor="ma", fill=(255, 255, 255, 255),
                  stroke_width=stroke, stroke_fill=(0, 0, 0, 170))
    return layer, ((w - layer.width) // 2, (h - layer.height) // 2)


def _wrap(words: list[str], font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap, stopping after ``max_lines + 1`` lines (one more says "it overflows");
    a word wider than the line is broken between characters."""
    per_line = width * 5 // int(font.size) + 1  # more characters than one line holds
    lines, line = [], ""
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


def _label(text: str, w: int, h: int, top: bool) -> tuple[Image.Image, tuple[int, int]]:
    """Small white text on a translucent dark box, top left or bottom right, with its position."""
    font, margin = _font(max(10, min(w, h) // 30)), min(w, h) // 40
    patch = Image.new("RGBA", (int(font.getlength(text)) + 12, font.size + 12), (0, 0, 0, 110))
    ImageDraw.Draw(patch).text((6, 6), text, font=font, fill=(255, 255, 255, 235))
    return patch, (margin, margin) if top else (w - patch.width - margin, h - patch.height - margin)


def _watermark(w: int, h: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function that returns a copy of a frame with "AI generated" in its lower right corner."""
    patch, (x0, y0) = _label("AI generated", w, h, top=False)
    rgba = np.asarray(patch, dtype=np.float32)
    colour, alpha = rgba[..., :3], rgba[..., 3:] / 255
    box = np.s_[y0 : y0 + patch.height, x0 : x0 + patch.width]

    def mark(frame: np.ndarray) -> np.ndarray:
        out = frame.copy()  # frames may be shared arrays (a held still is one array)
        out[box] = (out[box] * (1 - alpha) + colour * alpha + 0.5).astype(np.uint8)
        return out

    return mark

