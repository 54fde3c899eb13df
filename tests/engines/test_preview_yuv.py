"""The preview's YUV path (``StepContext(yuv420=True)``, what a worker uses): the same pictures as
the RGB frames of the engine contract, drawn straight in the encoder's planes."""

from __future__ import annotations

import numpy as np
import pytest

from opendance.domain import Mode
from opendance.engines.base import Inputs, StepContext
from opendance.engines.frame_chunks import _pack, _unpack
from opendance.media.encode import encode_mp4, probe_mp4
from opendance.media.frames import fit_cover
from opendance.media.yuv import RgbToYuv420, Yuv420
from opendance.testing.media import gradient_image

YUV = StepContext(yuv420=True)


def _inputs(mode: Mode, media_files) -> Inputs:
    if mode is Mode.TEXT_TO_VIDEO:
        return Inputs()
    if mode is Mode.IMAGE_TO_VIDEO:
        return Inputs(image=gradient_image(640, 480, seed=1))
    if mode is Mode.FIRST_AND_LAST_FRAME:
        return Inputs(image=gradient_image(640, 480, seed=1), last_image=gradient_image(360, 640, seed=2))
    return Inputs(images=[gradient_image(400, 300, seed=3)], videos=media_files("video", [1.0]))


def _both(engine, job, inputs) -> tuple[list[np.ndarray], list[Yuv420]]:
    rgb = list(engine.generate(job, inputs, StepContext()).frames)
    yuv = list(engine.generate(job, inputs, YUV).frames)
    return rgb, yuv


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("width,height", [(864, 480), (720, 1280)])
def test_yuv_frames_are_the_rgb_frames_in_the_encoders_planes(mode, width, height, make_job, engine, psnr, media_files):
    job = make_job(mode, width=width, height=height, fps=4, watermark=True)
    rgb, yuv = _both(engine, job, _inputs(mode, media_files))
    assert len(yuv) == len(rgb) == 20 and all(isinstance(f, Yuv420) for f in yuv)
    assert all((f.width, f.height) == (width, height) for f in yuv)
    convert = RgbToYuv420()
    for mine, theirs in zip(yuv, map(convert, rgb), strict=True):
        # Rounding apart (and chroma filtered at half size), the same picture.
        assert psnr(mine.y, theirs.y) >= 50
        assert min(psnr(mine.u, theirs.u), psnr(mine.v, theirs.v)) >= 45


def test_exact_frames_stay_exact(make_job, engine):
    """Frame 0 of image-to-video and both ends of a morph are exactly what the encoder would make
    of the fitted images."""
    first, last = gradient_image(1000, 700, seed=6), gradient_image(480, 640, seed=2)
    convert = RgbToYuv420()
    a, b = (convert(np.asarray(fit_cover(im, 1280, 720))) for im in (first, last))
    frames = list(engine.generate(make_job(Mode.IMAGE_TO_VIDEO, width=1280, height=720, fps=4), Inputs(image=first), YUV).frames)
    assert np.array_equal(frames[0].data, a.data) and not np.array_equal(frames[-1].data, a.data)
    job = make_job(Mode.FIRST_AND_LAST_FRAME, width=1280, height=720, fps=4)
    frames = list(engine.generate(job, Inputs(image=first, last_image=last), YUV).frames)
    assert np.array_equal(frames[0].data, a.data) and np.array_equal(frames[-1].data, b.data)


@pytest.mark.parametrize("mode", [Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO])
def test_same_seed_same_frames_other_seed_other_frames(mode, make_job, engine, media_files):
    def frames(seed: int) -> np.ndarray:
        job = make_job(mode, seed=seed, fps=2)
        return np.stack([f.data for f in engine.generate(job, _inputs(mode, media_files), YUV).frames])

    assert np.array_equal(frames(11), frames(11))
    assert not np.array_equal(frames(11), frames(12))


def test_text_stays_white_and_the_marks_stay_in_their_corners(make_job, engine):
    """Captions pull chroma to neutral under their glyphs: white text is white, not tinted with
    the field behind it; the watermark changes the lower right corner only."""
    job = make_job(Mode.TEXT_TO_VIDEO, fps=1)
    rgb, yuv = _both(engine, job, Inputs())
    white = [int(np.all(f >= 245, axis=-1).sum()) for f in (rgb[0], yuv[0].to_rgb())]
    assert white[0] > 2000 and abs(white[1] - white[0]) < 0.1 * white[0], white

    plain = next(iter(engine.generate(make_job(Mode.IMAGE_TO_VIDEO), Inputs(image=gradient_image(640, 480)), YUV).frames))
    job = make_job(Mode.IMAGE_TO_VIDEO, watermark=True)
    marked = next(iter(engine.generate(job, Inputs(image=gradient_image(640, 480)), YUV).frames))
    changed = np.argwhere((plain.to_rgb() != marked.to_rgb()).any(axis=2))
    assert len(changed) > 0
    assert changed[:, 0].min() > 480 * 0.7 and changed[:, 1].min() > 864 * 0.55


@pytest.mark.parametrize("mode", [Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO])
def test_the_video_is_the_rgb_paths_video(mode, make_job, engine, tmp_path, psnr, decoded, media_files):
    job = make_job(mode, fps=8, duration=2)
    infos = []
    for name, ctx in (("rgb", StepContext()), ("yuv", YUV)):
        out = engine.generate(job, _inputs(mode, media_files), ctx)
        infos.append(encode_mp4(out, tmp_path / f"{name}.mp4", width=864, height=480, num_frames=16))
    a, b = decoded(tmp_path / "rgb.mp4"), decoded(tmp_path / "yuv.mp4")
    assert probe_mp4(tmp_path / "yuv.mp4")["num_frames"] == len(a) == len(b) == 16
    assert min(psnr(x, y) for x, y in zip(a, b, strict=True)) >= 40
    assert infos[1].last_frame.shape == (480, 864, 3) and psnr(infos[1].last_frame, infos[0].last_frame) >= 40


def test_checkpoint_chunks_keep_their_format(make_job, engine):
    job = make_job(Mode.IMAGE_TO_VIDEO, fps=2, duration=2)
    rgb, yuv = _both(engine, job, Inputs(image=gradient_image(640, 480)))
    back = _unpack(_pack(yuv))
    assert all(isinstance(f, Yuv420) and np.array_equal(f.data, g.data) for f, g in zip(back, yuv, strict=True))
    assert all(isinstance(f, np.ndarray) and np.array_equal(f, g) for f, g in zip(_unpack(_pack(rgb)), rgb, strict=True))
