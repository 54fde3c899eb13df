"""Past the native window: chunk planning, seam blending, output resampling, and 15 s through
every engine family (Wan VACE extension, LTX and LTX-2 video conditioning)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from opendance.domain import Mode
from opendance.engines._torch_utils import (
    Chunk,
    Timeline,
    grid_size,
    output_frames,
    plan_chunks,
    round_frames,
)


@given(
    temporal=st.sampled_from([4, 8]),
    seconds=st.integers(1, 15),
    fps=st.sampled_from([8, 16, 24, 30]),
    windows=st.integers(2, 20),
    overlaps=st.integers(1, 3),
)
def test_plan_covers_every_frame_once_with_valid_windows(temporal, seconds, fps, windows, overlaps):
    window, overlap = windows * temporal + 1, min(overlaps, windows - 1) * temporal + 1
    total = round_frames(seconds * fps, temporal)
    chunks = plan_chunks(total, window, overlap, temporal)
    assert chunks[0] == Chunk(0, 0, min(total, window), 0)
    end = chunks[0].length
    for chunk in chunks[1:]:
        assert (chunk.length - 1) % temporal == 0 and chunk.length <= window
        assert chunk.start + chunk.cond == end and chunk.cond >= overlap  # continues the tail it is given
        assert chunk.length > chunk.cond  # and always adds frames
        end = chunk.start + chunk.length
    assert end == total


def test_fifteen_seconds_of_wan_is_four_chunks():
    assert [(c.start, c.length, c.cond) for c in plan_chunks(241, 81, 9, 4)] == [
        (0, 81, 0),
        (72, 81, 9),
        (144, 81, 9),
        (216, 25, 9),
    ]
    assert len(plan_chunks(round_frames(15 * 8, 4), 41, 5, 4)) == 4


def test_seams_cross_fade_and_the_rest_appends():
    timeline = Timeline()
    timeline.add(Chunk(0, 0, 5, 0), [np.zeros((2, 2, 3), np.uint8)] * 5)
    timeline.add(Chunk(1, 2, 6, 3), [np.full((2, 2, 3), 200, np.uint8)] * 6)
    assert [int(f[0, 0, 0]) for f in timeline.frames] == [0, 0, 50, 100, 150, 200, 200, 200]


def test_output_frames_exact_count_size_and_ends():
    native = [np.full((16, 32, 3), i, np.uint8) for i in range(41)]  # 41 native frames (16 fps)
    out = list(output_frames(native, 120, 864, 480))  # 15 s at 8 fps
    assert len(out) == 120 and all(f.shape == (480, 864, 3) and f.dtype == np.uint8 for f in out)
    assert out[0][0, 0, 0] == 0 and out[-1][0, 0, 0] == 40  # first and last frames are kept


@pytest.mark.parametrize("size", [(864, 480), (640, 640), (480, 864), (1280, 720), (720, 1280)])
def test_grid_keeps_the_aspect_on_the_model_multiple(size):
    w, h = grid_size(*size, 480 * 832, 16)
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 480 * 832
    assert abs(w / h - size[0] / size[1]) < 0.06


CASES = [
    ("jisudance2.0-720p", Mode.TEXT_TO_VIDEO, {"guidance_2": 3.0}),  # Wan 2.2 two experts, then Wan VACE
    ("jisudance2.0-480p", Mode.FIRST_AND_LAST_FRAME, {"native_fps": 4, "frames": 13}),  # VACE throughout, 4 fps
    ("ltx-video-480p", Mode.FIRST_AND_LAST_FRAME, {}),
    ("jisudance2.0-fast-720p", Mode.IMAGE_TO_VIDEO, {}),  # LTX-2: video and sound in chunks
]


@pytest.mark.parametrize("model, mode, changes", CASES)
def test_fifteen_seconds_in_chunks(model, mode, changes, engines, make_job, inputs_for, run, checks, tmp_path):
    job = make_job(model, mode, duration=15, options={"generate_audio": True}, **changes)
    engine = engines(job.engine)
    spec = job.engine
    temporal = {"wan": 4}.get(spec["engine"]) or engine.temporal
    chunks = plan_chunks(round_frames(15 * spec["native_fps"], temporal), spec["frames"], spec["overlap"], temporal)
    assert len(chunks) >= 3
    used = []
    extender = getattr(engine, "vace", None) or getattr(engine, "cond", None) or engine.pipe
    handle = extender.transformer.register_forward_pre_hook(lambda module, args: used.append(1))
    try:
        result = run(engine, job, inputs_for(mode))
    finally:
        handle.remove()
    assert used  # the chunks after the first went through the extension pipeline
    checks.progress(result.steps, spec["steps"] * len(chunks))
    assert len(result.frames) == 120 and {f.shape for f in result.frames} == {(job.height, job.width, 3)}
    if spec["engine"] == "ltx2":  # the sound is made in chunks too, cross-faded, 15 s long
        assert result.output.audio.samples.shape == (2, 15 * 48000)
    if job.height == 480:  # (encoding 720p costs more than the model here; the mode tests cover it)
        checks.mp4(result.encode(tmp_path / "long.mp4"), job, audio=False)
