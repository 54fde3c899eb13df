"""Frames as YUV 4:2:0 planes: the pixel format the MP4 is written in (H.264 yuv420p, BT.709,
limited range).

Engines give the encoder RGB frames, which it converts with swscale before libx264 sees them.
An engine that draws its frames itself (the preview) can draw them straight into these planes
and hand the encoder ``Yuv420`` frames, which go to libx264 as they are: no RGB frame is made
and none is converted. ``RgbToYuv420`` is the encoder's one RGB conversion, so a frame
converted here is exactly what the encoder would have made of the same RGB frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# BT.709 limited ("TV") range: black and white luma, and the chroma of every grey.
LUMA_BLACK, LUMA_WHITE, CHROMA_NEUTRAL = 16, 235, 128
_CONVERSION = {"format": "yuv420p", "dst_colorspace": "itu709", "dst_color_range": "MPEG"}


class Yuv420:
    """One frame as Y, U and V planes (uint8; U and V at half width and half height), kept in one
    buffer laid out as PyAV's ``yuv420p`` arrays: ``height * 3 // 2`` rows of ``width`` bytes, the
    whole Y plane first, then U, then V. ``y``, ``u`` and ``v`` are views into ``data``."""

    __slots__ = ("data",)

    def __init__(self, data: np.ndarray) -> None:
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise TypeError("Yuv420 data is a 2-D uint8 array")
        rows, width = data.shape
        if rows % 3 or width % 2 or (rows * 2 // 3) % 2 or not data.flags.c_contiguous:
            raise ValueError(f"Yuv420 data must be a contiguous (height * 3 // 2, width) array of an even size, got {data.shape}")
        self.data = data

    @classmethod
    def from_planes(cls, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> Yuv420:
        h, w = y.shape
        if u.shape != (h // 2, w // 2) or v.shape != u.shape:
            raise ValueError(f"chroma planes must be {(h // 2, w // 2)} for a {w}x{h} frame, got {u.shape} and {v.shape}")
        frame = cls(np.empty((h * 3 // 2, w), np.uint8))
        frame.y[...], frame.u[...], frame.v[...] = y, u, v
        return frame

    @property
    def width(self) -> int:
        return self.data.shape[1]

    @property
    def height(self) -> int:
        return self.data.shape[0] * 2 // 3

    @property
    def y(self) -> np.ndarray:
        return self.data[: self.height]

    @property
    def u(self) -> np.ndarray:
        return self._chroma(0)

    @property
    def v(self) -> np.ndarray:
        return self._chroma(1)

    def _chroma(self, k: int) -> np.ndarray:
        # The chroma planes are flat runs after Y (a plane of h/2 rows of w/2 is not whole rows of w).
        w, h = self.width, self.height
        size = (w // 2) * (h // 2)
        start = w * h + k * size
        return self.data.reshape(-1)[start : start + size].reshape(h // 2, w // 2)

    def copy(self) -> Yuv420:
        return Yuv420(self.data.copy())

    def to_rgb(self) -> np.ndarray:
        """RGB uint8 H x W x 3, converted back with the same matrix and range."""
        import av

        frame = av.VideoFrame.from_ndarray(self.data, format="yuv420p")
        rgb = frame.reformat(format="rgb24", src_colorspace="itu709", src_color_range="MPEG")
        return rgb.to_ndarray()


class RgbToYuv420:
    """RGB uint8 H x W x 3 -> BT.709 limited-range yuv420p, with swscale: the conversion the
    encoder applies to every RGB frame. It keeps its swscale context from frame to frame (set up
    once per size instead of once per frame), so use one per video and per thread."""

    def __init__(self) -> None:
        from av.video.reformatter import VideoReformatter

        self._reformatter = VideoReformatter()

    def video_frame(self, rgb: np.ndarray) -> Any:
        """The converted frame as a PyAV ``VideoFrame`` (what the encoder hands to libx264)."""
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        return self._reformatter.reformat(frame, **_CONVERSION)  # type: ignore[arg-type]  # PyAV takes the names too

    def __call__(self, rgb: np.ndarray) -> Yuv420:
        return Yuv420(self.video_frame(rgb).to_ndarray())
