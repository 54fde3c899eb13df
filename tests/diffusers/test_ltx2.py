"""The LTX-2 engine on a tiny real LTX2Pipeline: every mode, its own sound, seeds, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from opendance.domain import Mode
from opendance.errors import Cancelled

LTX2 = "jisudance2.0-fast-720p"


@pytest.mark.parametrize("mode", list(Mode))
def test_every_mode_with_generated_sound(mode, engines, make_job, inputs_for, run, checks, tmp_path):
    job = make_job(LTX2, mode, options={"generate_audio": True})
    engine = engines(job.engine)
    result = run(engine, job, inputs_for(mode))
    checks.mp4(result.encode(tmp_path / "out.mp4"), job, audio=True)
    checks.progress(result.steps, job.engine["steps"])
    audio = result.output.audio
    assert audio.sample_rate == 48000 and audio.samples.shape == (2, job.duration * 48000)
    assert np.abs(audio.samples).max() <= 1.0


def test_sound_only_when_asked_or_referenced(engines, make_job, inputs_for, run, checks, tmp_path):
    silent = make_job(LTX2, Mode.TEXT_TO_VIDEO, options={"generate_audio": False})
    result = run(engines(silent.engine), silent, inputs_for(silent.mode))
    assert result.output.audio is None
    checks.mp4(result.encode(tmp_path / "silent.mp4"), silent, audio=False)
    # Reference audio without generate_audio: the reference alone is the sound track.
    referenced = make_job(LTX2, Mode.OMNI_REFERENCE, options={"generate_audio": False})
    alone = run(engines(referenced.engine), referenced, inputs_for(referenced.mode)).output.audio
    both = make_job(LTX2, Mode.OMNI_REFERENCE, options={"generate_audio": True})
    mixed = run(engines(both.engine), both, inputs_for(both.mode)).output.audio
    assert alone is not None and mixed is not None
    assert not np.allclose(alone.samples, mixed.samples)  # the generated track is mixed in


def test_same_seed_same_video_and_sound(engines, make_job, inputs_for, run):
    mode = Mode.IMAGE_TO_VIDEO
    engine = engines(make_job(LTX2, mode).engine)
    runs = [run(engine, make_job(LTX2, mode, seed=s, options={"generate_audio": True}), inputs_for(mode)) for s in (5, 5, 6)]
    a, b, c = runs
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
    assert np.array_equal(a.output.audio.samples, b.output.audio.samples)
    assert any(not np.array_equal(x, y) for x, y in zip(a.frames, c.frames, strict=True))


def test_cancel_stops_before_video_or_audio_decode(engines, make_job, inputs_for, run, decode_counter):
    job = make_job(LTX2, Mode.FIRST_AND_LAST_FRAME, steps=3, options={"generate_audio": True})
    engine = engines(job.engine)
    with decode_counter(engine.pipe.vae.decoder, engine.pipe.audio_vae.decoder, engine.pipe.vocoder) as decodes:
        with pytest.raises(Cancelled):
            run(engine, job, inputs_for(job.mode), cancel_after=1)
        assert decodes.calls == 0
    assert engine.cond.interrupt


def test_conditions_count_latent_frames(engines, make_job):
    """LTX-2's conditions are planned as LTX-Video's, with ``index`` in latent frames: a later
    chunk of first-and-last-frame starts from the previous tail (k * t + 1 frames) and ends on
    the last image at its last latent frame."""
    from PIL import Image

    from opendance.engines._torch_utils import Chunk, Timeline
    from opendance.engines.base import StepContext
    from opendance.engines.diffusers_base import Plan
    from opendance.engines.diffusers_resume import DenoiseCheckpoints

    job = make_job(LTX2, Mode.FIRST_AND_LAST_FRAME)
    engine = engines(job.engine)
    t = engine.temporal
    first, second = Chunk(0, 0, 41, 0), Chunk(1, 30, 21, 11)
    timeline = Timeline()
    timeline.add(first, [np.full((32, 32, 3), i, np.uint8) for i in range(41)])
    last_image = Image.new("RGB", (32, 32), (9, 9, 9))
    plan = Plan(job, 32, 32, [first, second], {}, DenoiseCheckpoints(StepContext(), 2), last_image=last_image)
    tail, last = engine.conditions(plan, second, timeline)
    assert tail.index == 0 and tail.strength == 1.0
    assert [int(f[0, 0, 0]) for f in tail.frames] == list(range(30, 39))  # 11 tail frames cut to 2 * 4 + 1
    assert last.frames is last_image and last.index == (second.length - 1) // t == 5
