"""Frames to the encoder as they are decoded (engines/decode_stream.py), on tiny real Wan
pipelines: the frames and the MP4 are the same bytes as with the whole video decoded first
(``stream_frames`` off: the path before), a one-chunk video's frames come from the VAE's
decoder one latent frame at a time while the pipeline call is still running, a long video's
chunks come as each is final, and a cancel or an encoder that stops early ends the thread. ``generate`` still returns only once
the denoising is done (its first frame is there), raising a cancel as before."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from opendance.domain import Mode
from opendance.engines import _torch_utils as tu, decode_stream
from opendance.engines.base import StepContext
from opendance.errors import Cancelled

STD = "jisudance2.0-480p"


def frames_and_mp4(engine, job, inputs, run, tmp_path, name: str, *, stream: bool):
    engine.stream_frames = stream
    try:
        result = run(engine, job, inputs)
    finally:
        del engine.stream_frames  # back to the class's (on)
    path = tmp_path / f"{name}.mp4"
    result.encode(path)
    return result.frames, path.read_bytes()


@pytest.mark.parametrize("mode", [Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO])
def test_streamed_frames_and_video_are_the_same_bytes(mode, engines, make_job, inputs_for, run, tmp_path, caplog):
    job = make_job(STD, mode)
    engine = engines(job.engine)
    before, before_mp4 = frames_and_mp4(engine, job, inputs_for(mode), run, tmp_path, "before", stream=False)
    now, now_mp4 = frames_and_mp4(engine, job, inputs_for(mode), run, tmp_path, "now", stream=True)
    assert len(now) == len(before) == job.num_frames
    assert all(np.array_equal(a, b) for a, b in zip(now, before, strict=True))
    assert now_mp4 == before_mp4
    assert "differs from the pipeline's output" not in caplog.text and "the VAE streamed" not in caplog.text


def test_a_long_video_in_chunks_is_the_same_bytes(engines, make_job, inputs_for, run, tmp_path, caplog):
    job = make_job(STD, Mode.OMNI_REFERENCE, duration=15)
    engine = engines(job.engine)
    before, before_mp4 = frames_and_mp4(engine, job, inputs_for(job.mode), run, tmp_path, "before", stream=False)
    now, now_mp4 = frames_and_mp4(engine, job, inputs_for(job.mode), run, tmp_path, "now", stream=True)
    assert all(np.array_equal(a, b) for a, b in zip(now, before, strict=True)) and now_mp4 == before_mp4
    assert "differs from the pipeline's output" not in caplog.text


class Recorder(decode_stream.FrameFeed):
    """A feed that records how many frames had come from the decoder when the chunk loop ended."""

    streamed_before_finish: list[int] = []

    def finish(self, frames):
        Recorder.streamed_before_finish.append(len(self._frames))
        super().finish(frames)


def test_a_one_chunk_video_streams_from_the_decoder_while_the_call_runs(engines, make_job, inputs_for, monkeypatch):
    job = make_job(STD, Mode.TEXT_TO_VIDEO)
    engine = engines(job.engine)
    monkeypatch.setattr(decode_stream, "FrameFeed", Recorder)
    Recorder.streamed_before_finish.clear()
    frames = list(engine.generate(job, inputs_for(job.mode), StepContext()).frames)
    assert len(frames) == job.num_frames
    # Every native frame came through the decoder hook before the pipeline call returned.
    (streamed,) = Recorder.streamed_before_finish
    assert streamed == tu.round_frames(job.duration * engine.opts.native_fps, engine.temporal)


def test_a_cancel_reaches_the_encoder_and_ends_the_thread(engines, make_job, inputs_for):
    job = make_job(STD, Mode.TEXT_TO_VIDEO, steps=3)
    engine = engines(job.engine)
    steps = []
    ctx = StepContext(progress=lambda d, t: steps.append(d), cancelled=lambda: len(steps) >= 1)
    with pytest.raises(Cancelled):  # from generate itself: the denoising is done before it returns
        engine.generate(job, inputs_for(job.mode), ctx)
    assert not [t for t in threading.enumerate() if t.name == "decode-stream"]


def test_an_encoder_that_stops_early_stops_the_decode_and_waits_for_it(engines, make_job, inputs_for):
    job = make_job(STD, Mode.TEXT_TO_VIDEO)
    engine = engines(job.engine)
    frames = iter(engine.generate(job, inputs_for(job.mode), StepContext()).frames)
    next(frames)
    frames.close()  # the encoder failed after its first frame
    assert not [t for t in threading.enumerate() if t.name == "decode-stream"]
    # The engine is still good for the next task.
    again = list(engine.generate(job, inputs_for(job.mode), StepContext()).frames)
    assert len(again) == job.num_frames
