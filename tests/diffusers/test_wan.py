"""The Wan engine on tiny real Wan pipelines: every mode, both tiers, seeds, progress, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from opendance.domain import Mode
from opendance.engines.wan import WanEngine
from opendance.errors import Cancelled, EngineError

STD, WAN22, FAST = "jisudance2.0-480p", "jisudance2.0-720p", "jisudance2.0-fast-480p"


@pytest.mark.parametrize("mode", list(Mode))
def test_every_mode_makes_the_spec_mp4(mode, engines, make_job, inputs_for, run, checks, tmp_path):
    job = make_job(STD, mode)
    engine = engines(job.engine)
    result = run(engine, job, inputs_for(mode))
    info = result.encode(tmp_path / "out.mp4")
    checks.mp4(info, job, audio=mode == Mode.OMNI_REFERENCE)  # only the omni inputs carry a reference audio
    checks.progress(result.steps, job.engine["steps"])  # 5 s fits one window
    expected = {
        Mode.TEXT_TO_VIDEO: "WanPipeline",
        Mode.IMAGE_TO_VIDEO: "WanImageToVideoPipeline",
        Mode.FIRST_AND_LAST_FRAME: "WanImageToVideoPipeline",
        Mode.OMNI_REFERENCE: "WanVACEPipeline",
    }[mode]
    assert type(engine.pipe).__name__ == expected


def test_wan22_two_experts_portrait(engines, make_job, inputs_for, run, checks, tmp_path):
    job = make_job(WAN22, Mode.TEXT_TO_VIDEO, aspect="9:16", guidance_2=3.0)
    engine = engines(job.engine)
    assert engine.pipe.transformer_2 is not None and engine.pipe.config.boundary_ratio is not None
    result = run(engine, job, inputs_for(job.mode))
    checks.mp4(result.encode(tmp_path / "out.mp4"), job, audio=False)
    assert result.frames[0].shape == (1280, 720, 3)


def test_same_seed_same_video_other_seed_other_video(engines, make_job, inputs_for, run):
    mode = Mode.IMAGE_TO_VIDEO
    engine = engines(make_job(STD, mode).engine)
    a = run(engine, make_job(STD, mode, seed=11), inputs_for(mode)).frames
    b = run(engine, make_job(STD, mode, seed=11), inputs_for(mode)).frames
    c = run(engine, make_job(STD, mode, seed=12), inputs_for(mode)).frames
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_fast_tier_cache_hook_is_on_and_deterministic(engines, make_job, inputs_for, run, checks):
    job = make_job(FAST, Mode.TEXT_TO_VIDEO)
    engine = engines(job.engine)
    assert engine.pipe.transformer.is_cache_enabled
    assert type(engine.pipe.transformer._cache_config).__name__ == "FirstBlockCacheConfig"
    a, b = run(engine, job, inputs_for(job.mode)), run(engine, job, inputs_for(job.mode))
    checks.progress(a.steps, job.engine["steps"])
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))


@pytest.mark.parametrize("mode", [Mode.TEXT_TO_VIDEO, Mode.OMNI_REFERENCE])
def test_cancel_stops_before_any_decode(mode, engines, make_job, inputs_for, run, decode_counter):
    job = make_job(STD, mode, steps=3)
    engine = engines(job.engine)
    vaes = {id(p.vae): p.vae.decoder for p in (engine.pipe, engine.vace)}
    with decode_counter(*vaes.values()) as decodes:
        with pytest.raises(Cancelled):
            run(engine, job, inputs_for(mode), cancel_after=1)
        assert decodes.calls == 0
    assert engine.pipe.interrupt  # stopped through the pipeline's interrupt flag
    # The engine is still good for the next task.
    after = run(engine, job, inputs_for(mode))
    assert len(after.frames) == job.num_frames and after.steps[-1] == (3, 3)


def test_check_inputs_refuses_with_a_concise_message(engines, make_job, inputs_for, run, tiny_folders):
    i2v = make_job(STD, Mode.IMAGE_TO_VIDEO)
    with pytest.raises(EngineError, match="needs a first image"):
        run(engines(i2v.engine), i2v, inputs_for(Mode.TEXT_TO_VIDEO))
    # Past the window without a VACE checkpoint to extend with.
    long = make_job(STD, Mode.TEXT_TO_VIDEO, duration=15, extend_checkpoint=None)
    with pytest.raises(EngineError, match="set extend_checkpoint"):
        run(engines(long.engine), long, inputs_for(long.mode))
    # A text-to-video checkpoint asked for image-to-video.
    wrong = make_job(STD, Mode.IMAGE_TO_VIDEO, checkpoint=str(tiny_folders["wan-t2v"]))
    with pytest.raises(EngineError, match="cannot start from an image"):
        run(engines(wrong.engine), wrong, inputs_for(wrong.mode))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"frames": 40}, "4 \\* k \\+ 1"),
        ({"overlap": 41}, "smaller than frames"),
        ({"stepz": 3}, "stepz"),
        ({"cache": {"type": "FasterCache"}}, "FirstBlockCache"),
        ({"call_kwargs": {"num_frame": 3}}, "num_frame"),
        ({"call_kwargs": {"output_type": "pt", "stg_scale": 1.0}}, "call_kwargs \\['output_type'\\] are set by the engine"),
        ({"pipeline": "LTXPipeline"}, "wan engine runs"),
    ],
)
def test_bad_options_fail_at_load(change, message, make_job):
    spec = make_job(STD, Mode.TEXT_TO_VIDEO, **change).engine
    with pytest.raises(ValueError, match=message):
        WanEngine(spec, "cpu")
