"""Video and audio probing from bytes: containers, streams, decodability, measured durations."""

from __future__ import annotations

import io
import os
import struct

import av
import pytest

from opendance.errors import MediaError
from opendance.media.probe import MediaInfo, probe_audio, probe_video
from opendance.testing.media import audio_bytes, image_bytes, video_bytes


def refused(probe, data: bytes, param: str) -> MediaError:
    with pytest.raises(MediaError) as info:
        probe(data, param=param)
    assert info.value.param == param and info.value.status == 400 and info.value.code == "invalid_media"
    assert info.value.message.startswith(param + " ")
    return info.value


def test_mp4_video():
    info = probe_video(video_bytes(2.5, width=176, height=96), param="videos[0]")
    assert info == MediaInfo("mp4", pytest.approx(2.5, abs=0.01), 176, 96, True, False, "h264", None)


def test_mov_video_with_sound():
    info = probe_video(video_bytes(3.0, container="mov", with_audio=True), param="videos[0]")
    assert (info.format, info.has_video, info.has_audio, info.video_codec, info.audio_codec) == ("mov", True, True, "h264", "aac")
    assert info.duration == pytest.approx(3.0, abs=0.01)


@pytest.mark.parametrize("fmt, codec", [("wav", "pcm_s16le"), ("mp3", "mp3"), ("aac", "aac"), ("m4a", "aac")])
def test_audio_formats(fmt, codec):
    info = probe_audio(audio_bytes(3.0, fmt), param="audios[0]")
    assert (info.format, info.has_audio, info.has_video) == (fmt, True, False)
    assert info.audio_codec.startswith(codec)
    # Encoders pad to whole frames (AAC 1024, MP3 1152 samples): a little over, never under.
    assert 3.0 <= info.duration < 3.06


def test_audio_only_mp4_is_not_a_video():
    err = refused(probe_video, audio_bytes(3.0, "m4a"), "videos[1]")
    assert err.message == "videos[1] has no video stream; a reference video must have one"


def test_video_is_not_an_audio():
    err = refused(probe_audio, video_bytes(2.0, with_audio=True), "audios[2]")
    assert "is a video" in err.message
    err = refused(probe_audio, video_bytes(2.0), "audios[2]")
    assert "has no audio stream" in err.message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        os.urandom(20000),
        b"<html><script>alert(1)</script></html>" * 50,
        image_bytes(320, 240, "PNG"),
        b"RIFF\x00\x00\x00\x00WAVEfmt garbage",
        b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
    ],
    ids=["empty", "random", "html", "png", "broken-wav", "hls-playlist"],
)
def test_garbage_is_refused_as_video_and_audio(data):
    assert "videos[1]" in refused(probe_video, data, "videos[1]").message
    assert "audios[0]" in refused(probe_audio, data, "audios[0]").message


def test_a_wav_is_not_a_video_container():
    err = refused(probe_video, audio_bytes(3.0, "wav"), "videos[0]")
    assert err.message.startswith("videos[0] does not open as a video (MP4 or MOV)")


def test_polyglot_png_with_an_mp4_appended_is_not_a_video():
    err = refused(probe_video, image_bytes(100, 100) + video_bytes(2.0), "videos[2]")
    assert "does not open as a video" in err.message


def test_truncated_mp4_is_refused():
    data = video_bytes(3.0, width=320, height=192)
    refused(probe_video, data[: len(data) // 2], "videos[0]")


def test_mp4_with_corrupt_frames_does_not_decode():
    data = bytearray(video_bytes(2.0, width=320, height=192))
    start = data.find(b"mdat") + 8
    data[start : start + 4000] = os.urandom(4000)  # the first frames' coded data
    err = refused(probe_video, bytes(data), "videos[1]")
    assert err.message.startswith("videos[1] does not decode as a video")


def test_duration_comes_from_the_packets_not_the_header():
    """An MP3 whose Info header claims ten times its frames: the header fools FFmpeg, not us."""
    mp3 = bytearray(audio_bytes(1.0, "mp3"))
    at = mp3.find(b"Info")
    assert at != -1
    frames = struct.unpack(">I", mp3[at + 8 : at + 12])[0]
    mp3[at + 8 : at + 12] = struct.pack(">I", frames * 10)
    with av.open(io.BytesIO(bytes(mp3))) as c:
        assert c.duration / 1e6 > 9  # the lie, as the header tells it
    assert probe_audio(bytes(mp3), param="audios[0]").duration == pytest.approx(1.0, abs=0.06)


def test_wav_header_that_claims_more_data():
    wav = bytearray(audio_bytes(1.0, "wav", sample_rate=8000))
    at = wav.find(b"data")
    size = struct.unpack("<I", wav[at + 4 : at + 8])[0]
    wav[at + 4 : at + 8] = struct.pack("<I", size * 20)
    assert probe_audio(bytes(wav), param="audios[1]").duration == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize(
    "width, height, why",
    [
        (8208, 64, "width and height must be 64-6000 px"),  # too wide
        (8192, 16, "width and height must be 64-6000 px"),  # the extreme shape of issue 10
        (256, 48, "width and height must be 64-6000 px"),  # too short
        (640, 128, "the aspect ratio must be 0.4-2.5 (this is 5.00)"),
        (96, 320, "the aspect ratio must be 0.4-2.5 (this is 0.30)"),
        (4800, 2400, "a frame may have at most 8847360 pixels (4096x2160)"),
    ],
)
def test_video_shape_rules(width, height, why):
    """The image rules (sides 64-6000 px, aspect 0.4-2.5) and at most 4K's pixels per frame."""
    with pytest.raises(MediaError) as info:
        probe_video(video_bytes(0.1, width=width, height=height, fps=10), param="videos[0]")
    assert (info.value.param, info.value.code) == ("videos[0]", "invalid_video_dimensions")
    assert info.value.message == f"videos[0] is {width}x{height} px; {why}"


@pytest.mark.parametrize("width, height", [(64, 64), (160, 64), (64, 160), (4096, 2160), (2160, 4096)])
def test_video_shapes_at_the_limits_are_accepted(width, height):
    info = probe_video(video_bytes(0.1, width=width, height=height, fps=10), param="videos[0]")
    assert (info.width, info.height) == (width, height)
