"""The preview engine end to end: frames -> MP4 -> probe/decode, for every mode and size."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from opendance.domain import OUTPUT_SIZES, Mode
from opendance.engines.base import Inputs, Output, StepContext, engine_class
from opendance.engines.preview import PROGRESS_EVERY, PreviewEngine
from opendance.errors import Cancelled, EngineError
from opendance.media.encode import encode_mp4, probe_mp4
from opendance.media.frames import fit_cover, read_video_frames, to_array
from opendance.testing.media import gradient_image

SIZES = [size for table in OUTPUT_SIZES.values() for size in table.values()]


def _inputs(mode: Mode, media_files=None) -> Inputs:
    if mode is Mode.TEXT_TO_VIDEO:
        return Inputs()
    if mode is Mode.IMAGE_TO_VIDEO:
        return Inputs(image=gradient_image(640, 480, seed=1))
    if mode is Mode.FIRST_AND_LAST_FRAME:
        return Inputs(image=gradient_image(640, 480, seed=1), last_image=gradient_image(360, 640, seed=2))
    return Inputs(
        images=[gradient_image(400, 300, seed=s) for s in (3, 4)],
        videos=media_files("video", [2.0]),
        audios=media_files("audio", [2.0]),
    )


def _digest(frames) -> str:
    h = hashlib.sha256()
    for f in frames:
        h.update(np.ascontiguousarray(f).tobytes())
    return h.hexdigest()


def test_registry_resolves_preview():
    assert engine_class("preview") is PreviewEngine


@pytest.mark.parametrize("mode", list(Mode))
def test_every_mode_at_480p_makes_the_spec_mp4(mode, make_job, render, media_files):
    job = make_job(mode)
    path, info = render(job, _inputs(mode, media_files))
    p = probe_mp4(path)
    assert (p["width"], p["height"]) == (864, 480)
    assert p["num_frames"] == info.frames == 120
    assert abs(p["duration"] - 5) <= 1 / 24
    assert (p["video_codec"], p["pix_fmt"], p["fps"]) == ("h264", "yuv420p", 24.0)
    assert p["faststart"] is True
    assert (p["audio_codec"] == "aac") == (mode is Mode.OMNI_REFERENCE)


@pytest.mark.parametrize("width,height", SIZES)
def test_each_aspect_ratio_has_its_exact_size(width, height, make_job, render, psnr, decoded):
    image = gradient_image(500, 500, seed=5)
    job = make_job(Mode.IMAGE_TO_VIDEO, width=width, height=height, fps=4)
    path, _ = render(job, Inputs(image=image))
    p = probe_mp4(path)
    assert (p["width"], p["height"], p["num_frames"]) == (width, height, 20)
    first = decoded(path)[0]
    assert psnr(first, to_array(fit_cover(image, width, height))) >= 30


def test_image_to_video_starts_exactly_on_the_image_then_moves(make_job, engine, render, psnr, decoded):
    image = gradient_image(1000, 700, seed=6)
    job = make_job(Mode.IMAGE_TO_VIDEO, width=1280, height=720, fps=8)
    frames = list(engine.generate(job, Inputs(image=image), StepContext()).frames)
    expected = to_array(fit_cover(image, 1280, 720))
    assert np.array_equal(frames[0], expected)
    assert not np.array_equal(frames[-1], expected)  # the camera moved
    assert psnr(frames[1], expected) > 30  # ... slowly: the first step is small

    path, _ = render(job, Inputs(image=image))
    assert psnr(decoded(path)[0], expected) >= 30


@pytest.mark.parametrize("width,height", [(864, 480), (720, 1280)])
def test_first_and_last_frame_hit_both_images(width, height, make_job, engine, render, psnr, decoded):
    first, last = gradient_image(640, 480, seed=1), gradient_image(480, 640, seed=2)
    inputs = Inputs(image=first, last_image=last)
    job = make_job(Mode.FIRST_AND_LAST_FRAME, width=width, height=height, fps=8)
    a, b = to_array(fit_cover(first, width, height)), to_array(fit_cover(last, width, height))
    frames = list(engine.generate(job, inputs, StepContext()).frames)
    assert np.array_equal(frames[0], a) and np.array_equal(frames[-1], b)
    middle = frames[len(frames) // 2]
    assert psnr(middle, a) < 30 and psnr(middle, b) < 30  # a morph, not a cut

    path, _ = render(job, inputs)
    got = decoded(path)
    assert psnr(got[0], a) >= 30 and psnr(got[-1], b) >= 30


@pytest.mark.parametrize("duration,mode", [(5, Mode.TEXT_TO_VIDEO), (15, Mode.TEXT_TO_VIDEO), (15, Mode.IMAGE_TO_VIDEO)])
def test_duration_is_exact_within_a_frame(duration, mode, make_job, render, media_files):
    fps = 24 if duration == 5 else 8  # the long ones at a low rate to stay fast
    path, info = render(make_job(mode, duration=duration, fps=fps), _inputs(mode, media_files))
    p = probe_mp4(path)
    assert p["num_frames"] == duration * fps
    assert abs(p["duration"] - duration) <= 1 / fps
    assert info.duration == duration


@pytest.mark.parametrize("mode", [Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO, Mode.OMNI_REFERENCE])
def test_same_seed_same_frames_other_seed_other_frames(mode, make_job, engine, media_files):
    inputs = _inputs(mode, media_files)

    def digest(seed: int) -> str:
        job = make_job(mode, seed=seed, fps=8)
        return _digest(engine.generate(job, inputs, StepContext()).frames)

    assert digest(11) == digest(11)
    assert digest(11) != digest(12)


def test_omni_with_every_reference_kind_fills_fifteen_seconds_with_sound(make_job, engine, tmp_path, media_files):
    images = [gradient_image(320 + 16 * i, 240, seed=20 + i) for i in range(9)]
    inputs = Inputs(images=images, videos=media_files("video", [5.0, 5.0, 5.0]), audios=media_files("audio", [5.0, 4.0, 3.0]))
    job = make_job(Mode.OMNI_REFERENCE, duration=15, fps=8)
    out = engine.generate(job, inputs, StepContext())
    frames = list(out.frames)
    assert len(frames) == 120
    # Every reference shows up, in order: images first (each starting exactly on its fitted
    # self), then each video from its first frame.
    firsts = [to_array(fit_cover(im, 864, 480)) for im in images]
    firsts += [next(read_video_frames(v, 8, 864, 480)) for v in inputs.videos]
    starts = [next(i for i, f in enumerate(frames) if np.array_equal(f, first)) for first in firsts]
    assert starts[0] == 0 and starts == sorted(starts) and len(set(starts)) == 12

    info = encode_mp4(Output(iter(frames), out.fps, out.audio), tmp_path / "omni.mp4", width=864, height=480, num_frames=120)
    p = probe_mp4(tmp_path / "omni.mp4")
    assert info.has_audio and p["audio_codec"] == "aac" and p["audio_channels"] == 2
    assert abs(p["duration"] - 15) <= 1 / 8 and abs(p["audio_duration"] - 15) <= 1 / 8


def test_omni_with_only_short_videos_and_audio_loops_to_the_exact_length(make_job, render, media_files):
    inputs = Inputs(videos=media_files("video", [2.0, 2.0]), audios=media_files("audio", [2.0]))
    path, info = render(make_job(Mode.OMNI_REFERENCE, fps=12), inputs)
    p = probe_mp4(path)
    assert p["num_frames"] == info.frames == 60 and abs(p["duration"] - 5) <= 1 / 12
    assert p["audio_codec"] == "aac"


def test_cancel_stops_within_a_few_frames(make_job, engine, tmp_path, render):
    progress: list[tuple[int, int]] = []
    ctx = StepContext(progress=lambda d, t: progress.append((d, t)), cancelled=lambda: len(progress) >= 2)
    with pytest.raises(Cancelled):
        render(make_job(Mode.TEXT_TO_VIDEO), Inputs(), ctx)
    assert progress[-1][0] == 2 * PROGRESS_EVERY  # no frame was made after the cancel was seen
    assert not list(tmp_path.glob("*.mp4"))  # the partial file is gone


def test_frames_are_lazy_and_progress_climbs_to_the_total(make_job, engine):
    progress: list[tuple[int, int]] = []
    out = engine.generate(make_job(Mode.TEXT_TO_VIDEO, fps=8), Inputs(), StepContext(lambda d, t: progress.append((d, t))))
    assert progress == [] and not isinstance(out.frames, list)
    frames = iter(out.frames)
    for _ in range(PROGRESS_EVERY + 1):
        next(frames)
    assert progress == [(PROGRESS_EVERY, 40)]
    list(frames)
    assert [d for d, _ in progress] == sorted({d for d, _ in progress}) and progress[-1] == (40, 40)


def test_watermark_marks_only_the_lower_right_corner(make_job, engine):
    image = gradient_image(640, 480, seed=1)
    plain = next(iter(engine.generate(make_job(Mode.IMAGE_TO_VIDEO), Inputs(image=image), StepContext()).frames))
    job = make_job(Mode.IMAGE_TO_VIDEO, watermark=True)
    marked = next(iter(engine.generate(job, Inputs(image=image), StepContext()).frames))
    changed = np.argwhere((plain != marked).any(axis=2))
    assert len(changed) > 0
    assert changed[:, 0].min() > 480 * 0.75 and changed[:, 1].min() > 864 * 0.6


def test_camera_fixed_holds_the_still_and_morphs_without_zoom(make_job, engine):
    image, last = gradient_image(640, 480, seed=1), gradient_image(640, 480, seed=2)
    job = make_job(Mode.IMAGE_TO_VIDEO, fps=8, camera_fixed=True)
    frames = list(engine.generate(job, Inputs(image=image), StepContext()).frames)
    assert all(np.array_equal(f, frames[0]) for f in frames)

    job = make_job(Mode.FIRST_AND_LAST_FRAME, fps=8, camera_fixed=True)
    frames = list(engine.generate(job, Inputs(image=image, last_image=last), StepContext()).frames)
    a, b = fit_cover(image, 864, 480), fit_cover(last, 864, 480)
    t = 20 / 39
    assert np.array_equal(frames[20], np.asarray(Image.blend(a, b, t * t * (3 - 2 * t))))


@pytest.mark.parametrize("prompt", [" ", "", "word " * 1000, "x" * 5000, "Ünïcödé — 猫 🦊"])
def test_any_prompt_renders(prompt, make_job, engine):
    job = make_job(Mode.TEXT_TO_VIDEO, prompt=prompt, width=480, height=864, fps=1)
    frames = list(engine.generate(job, Inputs(), StepContext()).frames)
    assert len(frames) == 5 and all(f.shape == (864, 480, 3) and f.dtype == np.uint8 for f in frames)


def test_text_frames_show_the_prompt(make_job, engine):
    blank = next(iter(engine.generate(make_job(Mode.TEXT_TO_VIDEO, prompt=" "), Inputs(), StepContext()).frames))
    text = next(iter(engine.generate(make_job(Mode.TEXT_TO_VIDEO), Inputs(), StepContext()).frames))
    centre = np.s_[180:300, 200:664]
    assert (blank[centre] != text[centre]).any(axis=2).mean() > 0.05


@pytest.mark.parametrize(
    "mode,inputs",
    [
        (Mode.IMAGE_TO_VIDEO, Inputs()),
        (Mode.FIRST_AND_LAST_FRAME, Inputs(image=gradient_image(64, 64))),
        (Mode.OMNI_REFERENCE, Inputs(audios=[])),
    ],
)
def test_missing_inputs_are_refused(mode, inputs, make_job, engine):
    with pytest.raises(EngineError):
        engine.generate(make_job(mode), inputs, StepContext())
