"""Image checks: formats from the bytes, size rules before decoding, bombs and broken files refused."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from opendance.errors import MediaError
from opendance.media.images import ImageInfo, inspect_image, load_image
from opendance.testing.media import gradient_image, image_bytes, video_bytes

NOT_DECODABLE = "is not a decodable image (JPEG, PNG, WebP, BMP, GIF or TIFF)"


def refused(data: bytes, param: str = "image") -> MediaError:
    with pytest.raises(MediaError) as info:
        inspect_image(data, param=param)
    assert info.value.param == param and info.value.status == 400
    return info.value


def png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height``: no pixels need to exist to claim it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat or zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt, name", [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif"), ("TIFF", "tiff")]
)
def test_accepted_formats(fmt, name):
    assert inspect_image(image_bytes(320, 240, fmt), param="image") == ImageInfo(name, 320, 240)


@pytest.mark.parametrize("w, h", [(64, 64), (6000, 2400), (160, 400), (250, 100)])
def test_limits_are_inclusive(w, h):
    data = encode(Image.new("L", (w, h)), "PNG")
    assert (inspect_image(data, param="image").width, inspect_image(data, param="image").height) == (w, h)


@pytest.mark.parametrize(
    "w, h, words",
    [
        (63, 100, "63x100 px; width and height must be 64-6000"),
        (6001, 3000, "6001x3000"),
        (260, 100, "aspect 2.60"),
        (100, 260, "aspect 0.38"),
    ],
)
def test_size_and_aspect_rules(w, h, words):
    err = refused(encode(Image.new("L", (w, h)), "PNG"), "images[4]")
    assert err.code == "invalid_image_dimensions" and words in err.message and err.message.startswith("images[4] is ")


def test_sizes_are_checked_from_the_header_before_decoding():
    # The pixels are garbage: had they been decoded first, this would be "not decodable".
    err = refused(png_header(7000, 3000, idat=b"garbage"))
    assert err.code == "invalid_image_dimensions" and "7000x3000" in err.message


@pytest.mark.timeout(20)
def test_decompression_bomb_is_refused_not_decoded():
    err = refused(png_header(60000, 60000), "last_image")  # 3.6 billion pixels, over Pillow's hard limit
    assert err.code == "invalid_image_dimensions" and "decompression bomb" in err.message


@pytest.mark.timeout(20)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_in_pillows_warning_zone_is_refused():
    # 10000 x 10000 is past MAX_IMAGE_PIXELS, where Pillow only warns.
    err = refused(png_header(10000, 10000))
    assert err.code == "invalid_image_dimensions" and "decompression bomb" in err.message


def test_exif_orientation_swaps_width_and_height():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    data = encode(gradient_image(320, 200), "JPEG", exif=exif.tobytes())
    assert inspect_image(data, param="image") == ImageInfo("jpeg", 200, 320)
    assert load_image(data).size == (200, 320)


def test_aspect_is_judged_after_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(Image.new("RGB", (300, 100)), "JPEG", exif=exif.tobytes())  # displayed 100x300: aspect 0.33
    assert "100x300" in refused(data).message


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_jpeg(cut):
    jpeg = image_bytes(640, 480, "JPEG")
    err = refused(jpeg[: int(len(jpeg) * cut)], "images[0]")
    assert err.code == "invalid_media" and err.message.startswith(f"images[0] {NOT_DECODABLE}")
    assert "truncated" in err.message


def test_truncated_png():
    png = image_bytes(640, 480, "PNG")
    assert refused(png[: len(png) // 2]).message.startswith(f"image {NOT_DECODABLE}")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\0" * 100,
        b"GIF89a" + b"\xff" * 40,
        b"<svg xmlns='http://www.w3.org/2000/svg' width='100' height='100'/>",
        b"%PDF-1.4\n" + b"x" * 200,
        b"\x89PNG\r\n\x1a\n<script>alert(1)</script>",  # a PNG signature on an HTML body
    ],
    ids=["zero-bytes", "zeros", "gif-garbage", "svg", "pdf", "png-html-polyglot"],
)
def test_garbage_is_not_an_image(data):
    err = refused(data, "images[2]")
    assert err.code == "invalid_media" and err.message.startswith(f"images[2] {NOT_DECODABLE}")


def test_a_video_is_not_an_image():
    assert NOT_DECODABLE in refused(video_bytes(0.5)).message


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "PCX"])
def test_formats_outside_the_list_are_refused(fmt):
    # Pillow reads these, but the spec's list does not include them: their parsers never run.
    data = encode(gradient_image(128, 128), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt
    assert refused(data).code == "invalid_media"


def test_load_image_composites_alpha_on_black():
    rgba = Image.new("RGBA", (100, 80), (200, 100, 50, 0))
    rgba.paste((10, 20, 30, 255), (0, 0, 50, 80))
    img = load_image(encode(rgba, "PNG"))
    assert img.mode == "RGB" and img.size == (100, 80)
    assert img.getpixel((10, 10)) == (10, 20, 30)
    assert img.getpixel((90, 10)) == (0, 0, 0)


def test_load_image_takes_the_first_gif_frame_and_its_transparency():
    red = Image.new("RGB", (80, 80), (255, 0, 0)).convert("P")
    blue = Image.new("RGB", (80, 80), (0, 0, 255)).convert("P")
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100)
    assert np.asarray(load_image(data))[40, 40].tolist() == [255, 0, 0]
    p = Image.new("P", (80, 80), 1)
    p.putpalette([0, 255, 0, 255, 255, 255] + [0] * 762)
    assert load_image(encode(p, "GIF", transparency=1)).getpixel((5, 5)) == (0, 0, 0)


def test_load_image_of_every_accepted_format_is_rgb():
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"):
        img = load_image(image_bytes(120, 90, fmt))
        assert (img.mode, img.size) == ("RGB", (120, 90)), fmt
