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
checks for cancellation. When the encoder takes them (``ctx.yuv420``) the frames are drawn
straight in its YUV 4:2:0 planes (``preview_planes``): the same pictures, with no RGB frame made
and none converted; the RGB frames of the engine contract otherwise.

The prompt is typeset with the model's ``font`` option when it has one; otherwise, for a prompt
in Chinese, Japanese or Korean, with the first CJK font found among the usual system places
(``CJK_FONTS``: Noto Sans CJK, WenQuanYi, Droid Sans Fallback, PingFang); otherwise with
Pillow's built-in font, which has Latin glyphs only (other scripts show as boxes).
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageFont

from ..domain import Mode
from ..errors import EngineError
from ..media.audio import mix_reference_audio
from ..media.frames import fit_cover, read_video_frames
from ..media.yuv import RgbToYuv420
from .base import Engine, Inputs, Job, Output, StepContext
from .frame_chunks import checkpointed
from .options import PreviewOptions
from .preview_planes import Frame, Overlay, Picture
from .preview_text import label, text_frames

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
        w, h, n, yuv = job.width, job.height, job.num_frames, ctx.yuv420
        rng = np.random.default_rng(job.seed)
        moving = not job.options.get("camera_fixed", False)
        frames: Iterable[Frame]
        if job.mode is Mode.TEXT_TO_VIDEO:
            frames = text_frames(job, rng, self._caption_font(job.prompt), yuv)
        elif job.mode is Mode.IMAGE_TO_VIDEO:
            frames = _zoom_frames(Picture.of(fit_cover(inputs.image, w, h), yuv), n, rng, moving)
        elif job.mode is Mode.FIRST_AND_LAST_FRAME:
            first, last = (Picture.of(fit_cover(image, w, h), yuv) for image in (inputs.image, inputs.last_image))
            frames = _morph_frames(first, last, n, moving)
        else:
            frames = _montage_frames(job, inputs, rng, moving, yuv)
        audio = None  # the preview's only sound is reference audio (``generate_audio`` is ignored)
        if job.mode is Mode.OMNI_REFERENCE and inputs.audios:
            audio = mix_reference_audio(list(inputs.audios), job.duration)
        ctx.check_cancelled()
        mark = Overlay(*label("AI generated", w, h, top=False)).marker() if job.options.get("watermark", False) else None
        # Finished frames kept as checkpoint chunks only when the model asks (``checkpoint_frames``
        # in its spec): preview frames are about as cheap to remake as to store.
        paced = checkpointed(_paced(frames, n, ctx, mark), n, ctx, self.opts.checkpoint_frames)
        return Output(frames=paced, fps=job.fps, audio=audio, graphics=job.mode is Mode.TEXT_TO_VIDEO)

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
    return (
        0x2E80 <= o <= 0x9FFF
        or 0xAC00 <= o <= 0xD7AF
        or 0xF900 <= o <= 0xFAFF
        or 0xFF00 <= o <= 0xFFEF
        or 0x20000 <= o <= 0x3FFFF
    )


def _paced(frames: Iterable[Frame], total: int, ctx: StepContext, mark: Callable[[Frame], Frame] | None) -> Iterator[Frame]:
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


def _zoom_frames(still: Picture, n: int, rng: np.random.Generator, moving: bool) -> Iterator[Frame]:
    """``still`` exactly, then an eased zoom and pan; with a fixed camera, the still held. In YUV
    a helper thread resamples half of each frame (the zoom is most of this mode's work)."""
    angle, base = rng.uniform(0, 2 * math.pi), still.frame()
    yield base
    with ThreadPoolExecutor(1, thread_name_prefix="preview-zoom") if still.yuv and moving else nullcontext() as helper:
        for i in range(1, n):
            e = _ease(i / (n - 1))
            dx, dy = 0.6 * e * math.cos(angle), 0.6 * e * math.sin(angle)
            yield still.view_frame(1 + (ZOOM - 1) * e, dx, dy, helper) if moving else base


def _morph_frames(first: Picture, last: Picture, n: int, moving: bool) -> Iterator[Frame]:
    """Exactly ``first`` and ``last`` at the ends; between, a crossfade that pushes in and back
    out (the zoom is 1 at both ends, so one zoom of the blend is enough)."""
    yield first.frame()
    for i in range(1, n - 1):
        t = i / (n - 1)
        mixed = first.blend(last, _ease(t))
        yield (mixed.view(1 + (ZOOM - 1) * math.sin(math.pi * t)) if moving else mixed).frame()
    yield last.frame()


def _montage_frames(job: Job, inputs: Inputs, rng: np.random.Generator, moving: bool, yuv: bool) -> Iterator[Frame]:
    w, h, n, fps = job.width, job.height, job.num_frames, job.fps
    lengths = [_video_frames(p, fps) for p in inputs.videos]
    for kind, index, count in _plan(len(inputs.images), lengths, n, fps):
        if kind == "image":
            yield from _zoom_frames(Picture.of(fit_cover(inputs.images[index], w, h), yuv), count, rng, moving)
        else:
            decoded = read_video_frames(inputs.videos[index], fps, w, h, max_frames=count)
            # Decoded frames come as RGB: converted here, as the encoder would (a held frame once).
            frames: Iterator[Frame] = _converted(decoded) if yuv else decoded
            yield from _exactly(frames, count, index)


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
        seconds = float(v.duration * v.time_base) if v.duration and v.time_base else (container.duration or 0) / av.time_base
    return max(1, round(seconds * fps))


def _converted(frames: Iterator[np.ndarray]) -> Iterator[Frame]:
    convert = RgbToYuv420()
    last: np.ndarray | None = None
    out: Frame | None = None
    for frame in frames:
        if frame is not last or out is None:  # read_video_frames repeats one array for a held source frame
            last, out = frame, convert(frame)
        yield out


def _exactly(frames: Iterator[Frame], count: int, index: int) -> Iterator[Frame]:
    """``count`` frames of a video: trimmed, or its last frame held if it decodes short."""
    last = None
    for last in itertools.islice(frames, count):
        count -= 1
        yield last
    if last is None:
        raise EngineError(f"reference video {index} has no frames")
    yield from itertools.repeat(last, count)
