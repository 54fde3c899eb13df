"""decode_audio, fit_audio, mix_reference_audio and resample on real files of every accepted kind."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from opendance.errors import EngineError
from opendance.media.audio import decode_audio, fit_audio, mix_reference_audio, resample
from opendance.testing.media import audio_bytes, video_bytes


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _mono_wav(path: Path, seconds: float, rate: int, amplitude: float) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (amplitude * np.sin(2 * np.pi * 330 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


@pytest.mark.parametrize("fmt", ["wav", "mp3", "aac", "m4a"])
def test_every_reference_format_decodes_to_48k_stereo_float(tmp_path, fmt):
    path = _write(tmp_path, f"a.{fmt}", audio_bytes(2.0, fmt, sample_rate=44100))
    samples = decode_audio(path)
    assert samples.dtype == np.float32 and samples.shape[0] == 2
    assert abs(samples.shape[1] - 96000) <= 0.06 * 48000  # codec padding, at most a few frames
    assert 0.25 < np.abs(samples).max() < 0.4  # the 0.3 tone keeps its level


def test_mono_is_widened_at_full_level_and_can_be_asked_for(tmp_path):
    path = _mono_wav(tmp_path / "m.wav", 1.0, 22050, 0.5)
    stereo = decode_audio(path)
    assert stereo.shape == (2, 48000)
    assert np.array_equal(stereo[0], stereo[1]) and 0.48 < np.abs(stereo).max() < 0.52
    assert decode_audio(path, 16000, 1).shape == (1, 16000)


def test_the_sound_track_of_a_video_decodes_and_a_silent_video_is_refused(tmp_path):
    with_sound = _write(tmp_path, "s.mp4", video_bytes(2.0, with_audio=True))
    assert abs(decode_audio(with_sound).shape[1] - 96000) < 0.05 * 48000
    silent = _write(tmp_path, "v.mp4", video_bytes(2.0))
    with pytest.raises(EngineError, match="no audio"):
        decode_audio(silent)


def test_a_file_that_is_not_media_is_an_engine_error(tmp_path):
    with pytest.raises(EngineError):
        decode_audio(_write(tmp_path, "x.wav", b"RIFF nonsense" * 10))


def test_fit_audio_trims_from_the_start_and_loops_short_clips():
    clip = np.arange(10, dtype=np.float32).reshape(1, 10).repeat(2, axis=0)
    assert np.array_equal(fit_audio(clip, 4), clip[:, :4])
    looped = fit_audio(clip, 25)
    assert looped.shape == (2, 25)
    assert np.array_equal(looped[:, 10:20], clip) and np.array_equal(looped[:, 20:], clip[:, :5])
    assert np.array_equal(fit_audio(np.zeros((2, 0), np.float32), 3), np.zeros((2, 3), np.float32))


def test_mix_overlays_every_reference_for_the_whole_duration(tmp_path):
    a = _write(tmp_path, "a.wav", audio_bytes(2.0, freq=300.0))
    b = _write(tmp_path, "b.wav", audio_bytes(3.0, freq=500.0))
    audio = mix_reference_audio([a, b], 5.0)
    assert audio.sample_rate == 48000 and audio.samples.shape == (2, 240000)
    spectrum = np.abs(np.fft.rfft(audio.samples[0, 200000:240000]))  # the last 0.83 s: both looped
    freqs = np.fft.rfftfreq(40000, 1 / 48000)
    for f in (300, 500):
        assert spectrum[np.abs(freqs - f) < 3].max() > 100 * np.median(spectrum)


def test_mix_never_clips(tmp_path):
    loud = _write(tmp_path, "a.wav", audio_bytes(2.0))  # 0.3 peak each; five in phase would be 1.5
    audio = mix_reference_audio([loud] * 5, 2.0)
    peak = np.abs(audio.samples).max()
    assert 0.9 < peak <= 0.98


def test_one_quiet_reference_keeps_its_level(tmp_path):
    audio = mix_reference_audio([_write(tmp_path, "a.wav", audio_bytes(2.0))], 2.0)
    assert 0.28 < np.abs(audio.samples).max() < 0.32


def test_mix_accepts_a_video_with_sound(tmp_path):
    clip = _write(tmp_path, "s.mp4", video_bytes(2.0, with_audio=True))
    audio = mix_reference_audio([clip], 5.0)
    assert audio.samples.shape == (2, 240000) and np.abs(audio.samples[:, -48000:]).max() > 0.2  # looped


def test_resample_changes_rate_and_channels():
    t = np.arange(44100) / 44100
    mono = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
    out = resample(mono, 44100, 48000, 2)
    assert out.shape[0] == 2 and abs(out.shape[1] - 48000) <= 64
    assert 0.48 < np.abs(out).max() < 0.52
    assert resample(np.vstack([mono, -mono]), 48000, 48000, 1).shape == (1, 44100)
    with pytest.raises(EngineError):
        resample(np.zeros((3, 10), np.float32), 48000)
