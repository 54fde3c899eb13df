"""The LTX-Video engine on a tiny real LTXConditionPipeline: every mode, seeds, progress, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from opendance.domain import Mode
from opendance.engines.ltx import LTXEngine
from opendance.errors import Cancelled, EngineError

LTX = "ltx-video-480p"


@pytest.mark.parametrize("mode", list(Mode))
def test_every_mode_makes_the_spec_mp4(mode, engines, make_job, inputs_for, run, checks, tmp_path):
    job = make_job(LTX, mode, aspect="1:1")
    result = run(engines(job.engine), job, inputs_for(mode))
    checks.mp4(result.encode(tmp_path / "out.mp4"), job, audio=mode == Mode.OMNI_REFERENCE)
    checks.progress(result.steps, job.engine["steps"])


def test_omni_reference_conditions(engines, make_job, inputs_for):
    """References become soft conditions of the first chunk: the videos' frames from frame 0,
    the images as keyframes after them (planned as LTX-2's are)."""
    job = make_job(LTX, Mode.OMNI_REFERENCE)
    engine = engines(job.engine)
    inputs = inputs_for(job.mode)
    from opendance.engines._torch_utils import Chunk, Timeline
    from opendance.engines.ltx_conditions import plan_conditions

    frames = [np.zeros((32, 32, 3), np.uint8)] * 24
    strength = job.engine.get("reference_strength", 0.5)
    conds = plan_conditions(
        job.mode,
        Chunk(0, 0, 41, 0),
        True,
        Timeline(),
        temporal=engine.temporal,
        control=frames,
        references=inputs.images,
        strength=strength,
    )
    video, *images = conds
    assert len(video.video) == 21 and video.frame == 0  # 24 frames cut to 4k + 1
    assert [c.frame for c in images] == [12, 28]
    assert {c.strength for c in conds} == {strength}


def test_same_seed_same_video(engines, make_job, inputs_for, run):
    mode = Mode.FIRST_AND_LAST_FRAME
    engine = engines(make_job(LTX, mode).engine)
    a = run(engine, make_job(LTX, mode, seed=3), inputs_for(mode)).frames
    b = run(engine, make_job(LTX, mode, seed=3), inputs_for(mode)).frames
    c = run(engine, make_job(LTX, mode, seed=4), inputs_for(mode)).frames
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_distilled_schedule_sets_the_step_count(engines, make_job, inputs_for, run, checks):
    job = make_job(LTX, Mode.TEXT_TO_VIDEO, timesteps=[1000.0, 993.0, 725.0])
    del job.engine["steps"]  # the schedule's length is the step count
    result = run(engines(job.engine), job, inputs_for(job.mode))
    checks.progress(result.steps, 3)


def test_cancel_stops_before_any_decode(engines, make_job, inputs_for, run, decode_counter):
    job = make_job(LTX, Mode.IMAGE_TO_VIDEO, steps=3)
    engine = engines(job.engine)
    with decode_counter(engine.pipe.vae.decoder) as decodes:
        with pytest.raises(Cancelled):
            run(engine, job, inputs_for(job.mode), cancel_after=2)
        assert decodes.calls == 0
    assert engine.pipe.interrupt


def test_refusals(engines, make_job, inputs_for, run):
    job = make_job(LTX, Mode.FIRST_AND_LAST_FRAME)
    with pytest.raises(EngineError, match="needs a last image"):
        run(engines(job.engine), job, inputs_for(Mode.IMAGE_TO_VIDEO))
    with pytest.raises(ValueError, match="timesteps has 2 values"):
        LTXEngine(make_job(LTX, Mode.TEXT_TO_VIDEO, steps=3, timesteps=[1000.0, 500.0]).engine, "cpu")
    with pytest.raises(ValueError, match="8 \\* k \\+ 1|4 \\* k \\+ 1"):
        LTXEngine(make_job(LTX, Mode.TEXT_TO_VIDEO, overlap=6).engine, "cpu")
