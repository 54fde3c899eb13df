"""Audio helpers for engines: decode a reference, fit it to a length, mix several references.

Everything works on float32 arrays shaped ``(channels, n)`` with values in [-1, 1] (the layout
of ``engines.base.Audio``). Rate conversion goes through FFmpeg's resampler (PyAV). Mono is
widened to stereo by copying the channel at full level: FFmpeg's own upmix pans it at -3 dB,
which would make a mono reference quieter in the output than it sounds on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engines.base import Audio
from ..errors import EngineError

_LAYOUTS = {1: "mono", 2: "stereo"}
_CHUNK = 4096  # samples per frame pushed into the resampler
_HEADROOM = 0.98  # mix peak limit, a little below full scale so AAC's overshoot stays inside [-1, 1]


def decode_audio(path: Path, sample_rate: int = 48000, channels: int = 2) -> np.ndarray:
    """The first audio stream of ``path`` (an audio file, or a video with a sound track) as
    float32 ``(channels, n)`` at ``sample_rate``. Raises ``EngineError`` if it has no audio."""
    import av

    _check_channels(channels)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise EngineError(f"{Path(path).name} has no audio stream")
            stream = container.streams.audio[0]
            # Mono stays mono through the resampler and is widened here (see module doc).
            mid = 1 if stream.codec_context.channels == 1 else 2
            resampler = av.AudioResampler(format="fltp", layout=_LAYOUTS[mid], rate=sample_rate)
            blocks = [f.to_ndarray() for frame in container.decode(stream) for f in resampler.resample(frame)]
            blocks += [f.to_ndarray() for f in resampler.resample(None)]
    except av.FFmpegError as e:
        raise EngineError(f"cannot decode audio of {Path(path).name}: {e}") from e
    samples = np.concatenate(blocks, axis=1) if blocks else np.zeros((mid, 0), np.float32)
    return _to_channels(samples, channels)


def resample(samples: np.ndarray, sample_rate: int, target_rate: int = 48000, channels: int = 2) -> np.ndarray:
    """Convert in-memory audio ``(c, n)`` (c = 1 or 2) to ``target_rate`` and ``channels``."""
    import av

    _check_channels(channels)
    src = np.asarray(samples, dtype=np.float32)
    if src.ndim != 2 or src.shape[0] not in _LAYOUTS:
        raise EngineError(f"audio must be shaped (1 or 2 channels, n), got {src.shape}")
    if sample_rate == target_rate:
        out = src
    else:
        mid = src.shape[0]
        resampler = av.AudioResampler(format="fltp", layout=_LAYOUTS[mid], rate=target_rate)
        blocks: list[np.ndarray] = []
        for start in range(0, src.shape[1], _CHUNK):
            block = np.ascontiguousarray(src[:, start : start + _CHUNK])
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=_LAYOUTS[src.shape[0]])
            frame.sample_rate = sample_rate
            frame.pts = start
            blocks += [f.to_ndarray() for f in resampler.resample(frame)]
        blocks += [f.to_ndarray() for f in resampler.resample(None)]
        out = np.concatenate(blocks, axis=1) if blocks else np.zeros((mid, 0), np.float32)
    return _to_channels(out, channels)


def fit_audio(samples: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` samples: a longer clip is trimmed (its start kept), a shorter one is
    looped from its start (a reference that runs out starts again rather than falling silent).
    An empty clip gives silence."""
    channels, have = samples.shape
    if have == 0:
        return np.zeros((channels, n), dtype=np.float32)
    if have >= n:
        return np.ascontiguousarray(samples[:, :n], dtype=np.float32)
    reps = -(-n // have)  # ceil
    return np.ascontiguousarray(np.tile(samples, (1, reps))[:, :n], dtype=np.float32)


def mix_reference_audio(paths: list[Path], duration: float, sample_rate: int = 48000) -> Audio:
    """Every reference looped/trimmed to ``duration`` seconds and overlaid (stereo).

    The sum is scaled down only when it would clip (peak above ``_HEADROOM``), so one reference
    keeps its own loudness and several never distort. Videos with a sound track are accepted.
    """
    if not paths:
        raise ValueError("mix_reference_audio needs at least one path")
    n = int(round(duration * sample_rate))
    mix = np.zeros((2, n), dtype=np.float32)
    for path in paths:
        mix += fit_audio(decode_audio(path, sample_rate, 2), n)
    peak = float(np.abs(mix).max(initial=0.0))
    if peak > _HEADROOM:
        mix *= _HEADROOM / peak
    return Audio(samples=mix, sample_rate=sample_rate)


def _to_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    samples = samples.astype(np.float32, copy=False)
    if samples.shape[0] == 1 and channels == 2:
        return np.repeat(samples, 2, axis=0)
    if samples.shape[0] == 2 and channels == 1:
        return samples.mean(axis=0, keepdims=True)
    return samples


def _check_channels(channels: int) -> None:
    if channels not in _LAYOUTS:
        raise ValueError(f"channels must be 1 or 2, got {channels}")
