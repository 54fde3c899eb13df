"""``fit_cover``: the one resize of inputs to the output size; its cost is bounded by the output."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from opendance.media.frames import fit_cover
from opendance.testing.media import gradient_image

MiB = 1024 * 1024


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_covers_and_crops_the_centre_without_stretching():
    image = gradient_image(320, 240, seed=3)
    out = fit_cover(image, 160, 160)
    assert (out.size, out.mode) == ((160, 160), "RGB")
    centre = image.crop((40, 0, 280, 240)).resize((160, 160), Image.Resampling.LANCZOS)
    assert psnr(np.asarray(out), np.asarray(centre)) > 40


def test_left_and_right_halves_stay_apart():
    image = Image.new("RGB", (400, 100), (255, 0, 0))
    image.paste((0, 0, 255), (200, 0, 400, 100))
    out = np.asarray(fit_cover(image, 200, 100))  # the centre 200x100: half red, half blue
    assert out[50, 10].tolist() == [255, 0, 0] and out[50, 190].tolist() == [0, 0, 255]


def test_other_modes_are_converted():
    assert fit_cover(Image.new("L", (100, 80), 128), 64, 48).getpixel((10, 10)) == (128, 128, 128)


def test_an_extreme_shape_costs_about_the_output_size():
    """8192x16 covering 864x480: scaling first would make a 245760x480 intermediate (~470 MiB).
    Measured as the peak memory of a fresh process, before and after the call."""
    code = (
        "import resource\n"
        "from PIL import Image\n"
        "from opendance.media.frames import fit_cover\n"
        "img = Image.new('RGB', (8192, 16), (10, 20, 30))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = fit_cover(img, 864, 480)\n"
        "assert out.size == (864, 480)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    grown_kib = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout)
    assert grown_kib * 1024 < 16 * MiB, f"fit_cover grew the process by {grown_kib // 1024} MiB"
