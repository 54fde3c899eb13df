"""Every Pillow mode an accepted format decodes to is turned into RGB with its real tones.

Pillow's own ``convert("RGB")`` clips wide modes: a 16-bit grey PNG (``I;16``) came out all
white, and the task still said ``completed``. Each case here is a real file of that mode in an
accepted format, with a known grey ramp or colour, and the RGB picture must show those tones.
"""

from __future__ import annotations

import io
import struct
import zlib

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from opendance.media.images import inspect_image, load_image
from opendance.testing import media
from opendance.testing.server import wait_for_task

W, H = 128, 96
RAMP = np.tile(np.linspace(0.0, 1.0, W), (H, 1))  # black on the left to white on the right


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): grey 0, RGB 2, grey+alpha 4."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def grey16(mode: str) -> Image.Image:
    dtype = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, (W, H), np.rint(RAMP * 65535).astype(dtype).tobytes())


def palette_with_transparency() -> Image.Image:
    p = Image.new("P", (W, H), 1)
    p.putpalette([0, 0, 0, 200, 100, 50, 20, 220, 90] + [0] * 759)
    p.paste(2, (0, 0, W // 2, H))  # left half: colour 2, right half: colour 1 (transparent)
    return p


# (name, file bytes, the mode Pillow decodes it to, the RGB tones expected: an HxWx3 array)
RAMP_RGB = np.repeat(np.rint(RAMP * 255)[..., None], 3, axis=2)
CASES = [
    ("16-bit grey PNG", encode(grey16("I;16"), "PNG"), "I;16", RAMP_RGB),
    ("16-bit grey PNG, hand-written", png16(np.rint(RAMP * 65535), 0), "I;16", RAMP_RGB),
    ("16-bit grey TIFF", encode(grey16("I;16"), "TIFF"), "I;16", RAMP_RGB),
    ("16-bit big-endian grey TIFF", encode(grey16("I;16B"), "TIFF"), "I;16B", RAMP_RGB),
    (
        "32-bit integer TIFF holding 16-bit data",
        encode(Image.fromarray(np.rint(RAMP * 65535).astype(np.int32)), "TIFF"),
        "I",
        RAMP_RGB,
    ),
    (
        "32-bit integer TIFF past 16 bits",
        encode(Image.fromarray((np.rint(RAMP * 4_000_000) - 1_000_000).astype(np.int32)), "TIFF"),
        "I",
        RAMP_RGB,
    ),
    ("32-bit float TIFF 0-1", encode(Image.fromarray(RAMP.astype(np.float32)), "TIFF"), "F", RAMP_RGB),
    (
        "32-bit float TIFF of another range",
        encode(Image.fromarray((RAMP * 1000 - 500).astype(np.float32)), "TIFF"),
        "F",
        RAMP_RGB,
    ),
    ("grey + alpha PNG", encode(Image.new("LA", (W, H), (128, 255)), "PNG"), "LA", np.full((H, W, 3), 128)),
    (
        "palette PNG with a transparent colour",
        encode(palette_with_transparency(), "PNG", transparency=1),
        "P",
        np.concatenate([np.full((H, W // 2, 3), [20, 220, 90]), np.zeros((H, W - W // 2, 3))], axis=1),
    ),
    (
        "CMYK JPEG",
        encode(Image.new("CMYK", (W, H), (0, 128, 255, 0)), "JPEG", quality=95),
        "CMYK",
        np.full((H, W, 3), [255, 127, 0]),
    ),
    ("CMYK TIFF", encode(Image.new("CMYK", (W, H), (0, 128, 255, 0)), "TIFF"), "CMYK", np.full((H, W, 3), [255, 127, 0])),
    (
        "16-bit RGB PNG",
        png16(np.full((H, W, 3), [40000, 20000, 10000]), 2),
        "RGB",
        np.full((H, W, 3), [40000 / 257, 20000 / 257, 10000 / 257]),
    ),
    (
        "16-bit grey + alpha PNG",
        png16(np.dstack([np.full((H, W), 30000), np.full((H, W), 65535)]), 4),
        "RGBA",
        np.full((H, W, 3), 30000 / 257),
    ),
]


@pytest.mark.parametrize("name,data,mode,expected", CASES, ids=[c[0] for c in CASES])
def test_every_mode_keeps_its_tones(name, data, mode, expected):
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == mode  # the case is the mode it claims to be
    inspect_image(data, param="image")  # accepted at create time
    rgb = load_image(data)
    assert (rgb.mode, rgb.size) == ("RGB", (W, H))
    got = np.asarray(rgb).astype(np.float64)
    tolerance = 3 if mode == "CMYK" else 1.01  # JPEG's chroma rounding
    assert np.abs(got - expected).max() <= tolerance, (name, got.mean(axis=(0, 1)), np.asarray(expected).mean(axis=(0, 1)))


def test_a_float_image_with_nan_is_black_there():
    values = RAMP.astype(np.float32).copy()
    values[:, :8] = np.nan
    rgb = np.asarray(load_image(encode(Image.fromarray(values), "TIFF")))
    assert (rgb[:, :8] == 0).all() and rgb[:, -1].min() == 255


def test_a_16_bit_grey_png_makes_a_grey_video_not_a_white_one(server, tmp_path):
    """End to end: the preview engine shows the image itself as frame 0."""
    mid_grey = png16(np.full((240, 320), 0x6000), 0)  # 24576 / 65535 of white: 94 of 255
    with server.client() as c:
        r = c.post("/v1/video/generations", json={"model": "jisudance2.0-480p", "image": media.data_uri(mid_grey, "image/png")})
        assert r.status_code == 200, r.text
        task = wait_for_task(c, r.json()["id"])
    assert task["status"] == "completed", task
    path = tmp_path / "grey.mp4"
    path.write_bytes(httpx.get(task["video_url"]).content)
    with av.open(str(path)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert abs(first.mean() - 0x6000 / 257) < 6, first.mean()
