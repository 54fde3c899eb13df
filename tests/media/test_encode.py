"""encode_mp4 writes the spec's MP4 from streamed frames and refuses output that breaks the
engine contract; probe_mp4 reads back what clients check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opendance.engines.base import Audio, Output
from opendance.errors import Cancelled, EngineError
from opendance.media.encode import encode_mp4, probe_mp4
from opendance.media.frames import read_video_frames, to_array
from opendance.media.yuv import RgbToYuv420, Yuv420
from opendance.testing.media import gradient_image, tone, video_bytes

W, H = 320, 192


def _frames(n: int, width: int = W, height: int = H, seed: int = 0):
    base = to_array(gradient_image(width, height, seed))
    for i in range(n):
        yield np.roll(base, 2 * i, axis=1)


def _decode(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_video_only_mp4_matches_the_spec(tmp_path):
    path = tmp_path / "v.mp4"
    info = encode_mp4(Output(_frames(48), fps=24), path, width=W, height=H, num_frames=48)
    p = probe_mp4(path)
    assert (p["width"], p["height"], p["num_frames"], p["fps"]) == (W, H, 48, 24.0)
    assert (p["video_codec"], p["pix_fmt"], p["audio_codec"]) == ("h264", "yuv420p", None)
    assert p["faststart"] is True
    assert abs(p["duration"] - 2.0) <= 1 / 24
    assert (info.frames, info.duration, info.has_audio, info.bytes) == (48, 2.0, False, path.stat().st_size)


def test_timestamps_are_exact_frame_ticks(tmp_path):
    import av

    path = tmp_path / "v.mp4"
    encode_mp4(Output(_frames(30), fps=15), path, width=W, height=H, num_frames=30)
    with av.open(str(path)) as c:
        times = sorted(f.time for f in c.decode(video=0))
    assert times == pytest.approx([i / 15 for i in range(30)], abs=1e-6)


def test_long_video_keeps_its_duration(tmp_path):
    path = tmp_path / "long.mp4"
    encode_mp4(Output(_frames(15 * 6), fps=6), path, width=W, height=H, num_frames=90)
    assert abs(probe_mp4(path)["duration"] - 15) <= 1 / 6


def test_smooth_frames_survive_encoding_above_35_db(tmp_path):
    frames = list(_frames(24, 864, 480, seed=3))
    path = tmp_path / "q.mp4"
    encode_mp4(Output(iter(frames), fps=24), path, width=864, height=480, num_frames=24)
    decoded = _decode(path)
    assert min(_psnr(a, b) for a, b in zip(decoded, frames, strict=True)) >= 35


def test_last_frame_is_a_copy_of_the_final_frame(tmp_path):
    frames = list(_frames(10))
    info = encode_mp4(Output(frames, fps=10), tmp_path / "v.mp4", width=W, height=H, num_frames=10)
    assert np.array_equal(info.last_frame, frames[-1])
    frames[-1][:] = 0  # an engine reusing its buffer must not change what was returned
    assert info.last_frame.any()


def test_frames_stream_through_one_at_a_time(tmp_path):
    events: list[str] = []

    def frames():
        for i, f in enumerate(_frames(6)):
            events.append(f"make {i}")
            yield f

    encode_mp4(
        Output(frames(), fps=6),
        tmp_path / "v.mp4",
        width=W,
        height=H,
        num_frames=6,
        on_frame=lambda done: events.append(f"done {done}"),
    )
    assert events == [e for i in range(6) for e in (f"make {i}", f"done {i + 1}")]


@pytest.mark.parametrize("rate,channels,seconds", [(44100, 1, 1.3), (48000, 2, 3.0), (16000, 2, 2.0)])
def test_audio_becomes_48k_stereo_aac_exactly_as_long_as_the_video(tmp_path, rate, channels, seconds):
    samples = tone(seconds, rate, channels=channels)
    path = tmp_path / "av.mp4"
    info = encode_mp4(Output(_frames(48), fps=24, audio=Audio(samples, rate)), path, width=W, height=H, num_frames=48)
    p = probe_mp4(path)
    assert info.has_audio
    assert (p["audio_codec"], p["audio_sample_rate"], p["audio_channels"]) == ("aac", 48000, 2)
    assert abs(p["audio_duration"] - 2.0) <= 1 / 24  # trimmed or padded to the video
    assert abs(p["duration"] - 2.0) <= 1 / 24


def test_padded_audio_is_silent_after_the_clip(tmp_path):
    import av

    path = tmp_path / "av.mp4"
    encode_mp4(Output(_frames(48), fps=24, audio=Audio(tone(0.5, 48000), 48000)), path, width=W, height=H, num_frames=48)
    with av.open(str(path)) as c:
        pcm = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    assert np.abs(pcm[:, 4800:19200]).max() > 0.2  # the tone (0.1-0.4 s)
    assert np.abs(pcm[:, 36000:]).max() < 0.01  # silence (0.75 s on)


@pytest.mark.parametrize(
    "frames,why",
    [
        ([np.zeros((H, W + 2, 3), np.uint8)] * 4, "shape"),
        ([np.zeros((H, W), np.uint8)] * 4, "shape"),
        ([np.zeros((H, W, 3), np.float32)] * 4, "dtype"),
        (["not a frame"] * 4, "type"),
        ([np.zeros((H, W, 3), np.uint8)] * 3, "too few"),
        ([np.zeros((H, W, 3), np.uint8)] * 5, "too many"),
    ],
)
def test_contract_breaches_are_refused_and_leave_no_file(tmp_path, frames, why):
    path = tmp_path / "bad.mp4"
    with pytest.raises(EngineError, match="frame"):
        encode_mp4(Output(iter(frames), fps=24), path, width=W, height=H, num_frames=4)
    assert not path.exists()


@pytest.mark.parametrize(
    "samples,rate",
    [(np.zeros((5, 100), np.float32), 48000), (np.zeros((2, 100), np.int16), 48000), (np.zeros((2, 100), np.float32), 0)],
)
def test_bad_audio_is_refused(tmp_path, samples, rate):
    out = Output(_frames(4), fps=24, audio=Audio(samples, rate))
    with pytest.raises(EngineError, match="audio"):
        encode_mp4(out, tmp_path / "a.mp4", width=W, height=H, num_frames=4)


def test_cancel_inside_the_frames_propagates_and_removes_the_file(tmp_path):
    def frames():
        yield from _frames(3)
        raise Cancelled()

    path = tmp_path / "c.mp4"
    with pytest.raises(Cancelled):
        encode_mp4(Output(frames(), fps=24), path, width=W, height=H, num_frames=10)
    assert not path.exists()


def test_probe_sees_a_file_without_faststart(tmp_path):
    path = tmp_path / "plain.mp4"
    path.write_bytes(video_bytes(2.0))  # written by a plain muxer: moov after mdat
    p = probe_mp4(path)
    assert p["faststart"] is False and p["num_frames"] == 48 and p["audio_codec"] is None


def test_probe_reports_audio_of_a_video_with_sound(tmp_path):
    path = tmp_path / "s.mp4"
    path.write_bytes(video_bytes(2.0, with_audio=True))
    p = probe_mp4(path)
    assert p["audio_codec"] == "aac" and abs(p["audio_duration"] - 2.0) < 0.05


def test_read_video_frames_shows_the_latest_source_frame_at_each_tick(tmp_path):
    """A 30 fps source of flat grey levels read at 12 fps: tick n shows source frame
    floor(n * 30 / 12), and the stream ends after one second of ticks."""
    levels = [8 * i for i in range(30)]  # one second, a distinct level per frame
    frames = (np.full((96, 160, 3), v, np.uint8) for v in levels)
    path = tmp_path / "ramp.mp4"
    encode_mp4(Output(frames, fps=30), path, width=160, height=96, num_frames=30)
    got = [int(round(f.mean())) for f in read_video_frames(path, 12, 64, 48)]
    want = [levels[n * 30 // 12] for n in range(12)]
    assert len(got) == 12 and max(abs(g - w) for g, w in zip(got, want, strict=True)) <= 2


def test_the_same_frames_always_make_the_same_bytes(tmp_path):
    """Same seed, same video: libx264's AVX-512 kernels broke that (see ``video_options``).
    The preview's own frames, encoded again and again in one process, give one bitstream."""
    from opendance.domain import Mode
    from opendance.engines.base import Inputs, Job, StepContext
    from opendance.engines.preview import PreviewEngine

    job = Job(
        task_id="t",
        model="m",
        mode=Mode.TEXT_TO_VIDEO,
        prompt="the same every time",
        width=864,
        height=480,
        fps=8,
        duration=5,
        seed=7,
        engine={"engine": "preview"},
    )
    ctx = StepContext(progress=lambda done, total: None, cancelled=lambda: False)
    frames = [f.copy() for f in PreviewEngine({"engine": "preview"}).generate(job, Inputs(), ctx).frames]
    digests = set()
    for i in range(12):
        path = tmp_path / f"{i}.mp4"
        encode_mp4(Output(frames=iter(frames), fps=8), path, width=864, height=480, num_frames=len(frames))
        digests.add(path.read_bytes())
    assert len(digests) == 1


def test_yuv420_frames_encode_like_their_rgb_frames(tmp_path):
    """A ``Yuv420`` frame goes to libx264 as it is; an RGB frame is converted by ``RgbToYuv420``,
    which is swscale's BT.709 limited-range conversion, so the two give the same video."""
    import av

    frames = list(_frames(12))
    convert = RgbToYuv420()
    for rgb in frames[:2]:
        plain = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        expected = plain.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG").to_ndarray()
        assert np.array_equal(convert(rgb).data, expected)
    a = encode_mp4(Output(frames, fps=12), tmp_path / "rgb.mp4", width=W, height=H, num_frames=12)
    b = encode_mp4(Output([convert(f) for f in frames], fps=12), tmp_path / "yuv.mp4", width=W, height=H, num_frames=12)
    assert (tmp_path / "rgb.mp4").read_bytes() == (tmp_path / "yuv.mp4").read_bytes()
    assert probe_mp4(tmp_path / "yuv.mp4")["pix_fmt"] == "yuv420p"
    assert b.last_frame.shape == (H, W, 3) and _psnr(b.last_frame, a.last_frame) >= 40


def test_a_yuv420_frame_of_the_wrong_size_is_refused(tmp_path):
    frames = [RgbToYuv420()(np.zeros((H, W + 2, 3), np.uint8))] * 4
    with pytest.raises(EngineError, match="frame 0 must be 320x192"):
        encode_mp4(Output(iter(frames), fps=24), tmp_path / "bad.mp4", width=W, height=H, num_frames=4)
    assert not (tmp_path / "bad.mp4").exists()


@pytest.mark.parametrize("width,height", [(320, 192), (162, 94)])
def test_yuv420_planes_are_pyavs_planes(width, height):
    """The planes are views of PyAV's yuv420p layout, also where a chroma plane is not whole rows
    of the buffer (a height of 2 mod 4)."""
    import av

    rgb = to_array(gradient_image(width, height, seed=4))
    frame = RgbToYuv420()(rgb)
    reference = av.VideoFrame.from_ndarray(frame.data, format="yuv420p")
    for plane, mine in zip(reference.planes, (frame.y, frame.u, frame.v), strict=True):
        rows = np.frombuffer(bytes(plane), np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        assert np.array_equal(rows, mine)
    assert np.array_equal(Yuv420.from_planes(frame.y, frame.u, frame.v).data, frame.data)
    assert _psnr(frame.to_rgb(), rgb) >= 35
    with pytest.raises(ValueError):
        Yuv420.from_planes(frame.y, frame.u[:-1], frame.v)


def test_graphics_get_the_graphics_options(tmp_path):
    """libx264 writes its settings into the stream: a graphics output is encoded with 2 B-frames
    and no sub-8x8 inter partitions, any other with the default settings."""
    for graphics, bframes, analyse in ((False, b"bframes=3", b"analyse=0x3:0x113"), (True, b"bframes=2", b"analyse=0x3:0x3")):
        path = tmp_path / f"g{graphics}.mp4"
        encode_mp4(Output(_frames(8), fps=8, graphics=graphics), path, width=W, height=H, num_frames=8)
        data = path.read_bytes()
        assert bframes in data and analyse in data
