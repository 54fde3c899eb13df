"""Check input images at create time, and decode them for the worker.

The format comes from the bytes, never from a name or a MIME type. Only Pillow's plugins for the
six accepted formats are tried, so no other parser ever sees untrusted bytes. The size rules are
checked from the header before any pixel is decoded; then the whole image is decoded once, which
is the only reliable way to find a truncated or corrupt file.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MediaError

MIN_SIDE, MAX_SIDE = 64, 6000
MIN_ASPECT, MAX_ASPECT = 0.4, 2.5
NOT_AN_IMAGE = "is not a decodable image (JPEG, PNG, WebP, BMP, GIF or TIFF)"

# Pillow's format name -> ours. MPO is the JPEG plugin's name for multi-picture JPEGs (many
# phone cameras); it is a JPEG file and its first picture is used.
_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tiff"}
_PLUGINS = ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 or 270 degrees
# What Pillow's parsers raise on malformed input (a truncated file is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error, MemoryError)


@dataclass
class ImageInfo:
    format: str  # "jpeg", "png", "webp", "bmp", "gif", "tiff"
    width: int  # as displayed, after the EXIF orientation
    height: int


def _open(data: bytes | Path) -> Image.Image:
    return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data, formats=_PLUGINS)


# Pillow holds a decoded pixel in at most 4 bytes (RGB is stored as RGBX; I and F are 32-bit).
DECODED_BYTES_PER_PIXEL = 4


def decode_cost(data: bytes | Path) -> int:
    """The memory that ``inspect_image`` will need to decode ``data``, from its header alone
    (nothing is decoded): its first frame's pixels times 4 bytes. 0 when ``inspect_image`` will
    refuse it before decoding (not an image, too large a side, a decompression bomb)."""
    try:
        with _open(data) as img:
            width, height = img.size
    except Exception:
        return 0
    if max(width, height) > MAX_SIDE:
        return 0
    return width * height * DECODED_BYTES_PER_PIXEL


def inspect_image(data: bytes | Path, *, param: str) -> ImageInfo:
    """Refuse ``data`` unless it is an image the spec accepts; return its format and shape."""
    try:
        img = _open(data)
    except Image.DecompressionBombError as exc:
        # Raised by Image.open for more than twice MAX_IMAGE_PIXELS, before any decoding.
        message = f"{param} is too large to decode safely (a decompression bomb: {exc})"
        raise MediaError(message, param=param, code="invalid_image_dimensions") from None
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise MediaError(f"{param} {NOT_AN_IMAGE}", param=param) from exc
    with img:
        fmt = _FORMATS.get(img.format or "")
        if fmt is None:  # unreachable with formats=_PLUGINS, kept as the rule written down
            raise MediaError(f"{param} {NOT_AN_IMAGE}", param=param)
        width, height = img.size
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # a broken EXIF block does not make the picture unusable
            orientation = None
        if orientation in _SWAPS_SIDES:
            width, height = height, width
        limit = Image.MAX_IMAGE_PIXELS
        if limit and width * height > limit:
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse.
            message = f"{param} is {width}x{height} px, too large to decode safely (a decompression bomb)"
            raise MediaError(message, param=param, code="invalid_image_dimensions")
        _check_shape(width, height, param)
        try:
            img.load()  # the whole first frame: finds truncated and corrupt files
        except Image.DecompressionBombError as exc:
            raise MediaError(
                f"{param} is too large to decode safely ({exc})", param=param, code="invalid_image_dimensions"
            ) from None
        except _DECODE_ERRORS as exc:
            raise MediaError(f"{param} {NOT_AN_IMAGE}: {_reason(exc)}", param=param) from exc
    return ImageInfo(format=fmt, width=width, height=height)


def _check_shape(width: int, height: int, param: str) -> None:
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        message = f"{param} is {width}x{height} px; width and height must be {MIN_SIDE}-{MAX_SIDE} px"
        raise MediaError(message, param=param, code="invalid_image_dimensions")
    aspect = width / height
    if not MIN_ASPECT <= aspect <= MAX_ASPECT:
        message = f"{param} is {width}x{height} px (aspect {aspect:.2f}); the aspect ratio must be {MIN_ASPECT}-{MAX_ASPECT}"
        raise MediaError(message, param=param, code="invalid_image_dimensions")


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


def load_image(data: bytes) -> Image.Image:
    """Decode stored bytes (already checked by ``inspect_image``) to the RGB picture an engine
    uses: EXIF orientation applied, the first frame of a GIF, transparency composited on black,
    and every mode Pillow decodes to converted with its real tones (``to_rgb``)."""
    with _open(data) as img:
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. Pillow's own ``convert("RGB")`` clips wide modes (a 16-bit grey
    PNG, ``I;16``, becomes all white), so:

    - ``I;16*`` (16-bit grey): scaled from 0-65535. ``I`` (32-bit integers): the same 16-bit
      scale when its values fit in it (16-bit data is what it usually holds), else its own
      darkest-to-lightest range. ``F`` (32-bit float): 0-1 when its values are in it (the
      convention for float images), else its own range; NaN is black.
    - Alpha (``RGBA``, ``LA``, ``PA``, palette or colour-key transparency): composited on black.
    - The rest (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, 16-bit RGB, which Pillow reads
      as 8-bit ``RGB``) converts correctly as Pillow does it. An embedded ICC profile is not
      applied (a CMYK photo's colours are Pillow's plain CMYK conversion).
    """
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_grey_tones(np.asarray(img), mode), "L").convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")


def _grey_tones(values: np.ndarray, mode: str) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        low, high = 0.0, 65535.0
    elif mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    span = (high - low) or 1.0
    return np.clip(np.rint((values - low) * np.float32(255.0 / span)), 0, 255).astype(np.uint8)
