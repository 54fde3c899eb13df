"""The preview engine's caption font: a model's ``font`` option, a system CJK font found for a
CJK prompt, the built-in font otherwise; a font that cannot be read is refused when the engine
loads, a wrong option when the models file is read.

The CJK font is built here with fontTools: one glyph, 猫, a solid square, so a caption set in it
is a row of white squares where the built-in font (Latin only) draws thin "missing glyph" boxes.
"""

from __future__ import annotations

import numpy as np
import pytest

from opendance.domain import Mode
from opendance.engines import preview
from opendance.engines.base import Inputs, StepContext
from opendance.engines.preview import PreviewEngine

PROMPT = "猫猫猫"


@pytest.fixture(scope="module")
def square_font(tmp_path_factory):
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    def glyph(box=None):
        pen = TTGlyphPen(None)
        if box is not None:
            x0, y0, x1, y1 = box
            pen.moveTo((x0, y0))
            pen.lineTo((x0, y1))
            pen.lineTo((x1, y1))
            pen.lineTo((x1, y0))
            pen.closePath()
        return pen.glyph()

    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder([".notdef", "cat"])
    fb.setupCharacterMap({ord("猫"): "cat"})
    fb.setupGlyf({".notdef": glyph(), "cat": glyph((50, -100, 950, 800))})
    fb.setupHorizontalMetrics({".notdef": (1000, 0), "cat": (1000, 50)})
    fb.setupHorizontalHeader(ascent=800, descent=-200)
    fb.setupNameTable({"familyName": "Opendance Test Square", "styleName": "Regular"})
    fb.setupOS2(sTypoAscender=800, sTypoDescender=-200, usWinAscent=800, usWinDescent=200)
    fb.setupPost()
    path = tmp_path_factory.mktemp("fonts") / "square.ttf"
    fb.save(str(path))
    return path


def white_pixels(spec, make_job, prompt=PROMPT) -> int:
    job = make_job(Mode.TEXT_TO_VIDEO, fps=8)
    job.prompt = prompt
    first = next(iter(PreviewEngine(spec).generate(job, Inputs(), StepContext()).frames))
    return int(np.all(np.asarray(first) >= 250, axis=-1).sum())


def test_font_option_sets_the_caption(square_font, make_job, monkeypatch):
    monkeypatch.setattr(preview, "CJK_FONTS", ())  # no system CJK font: the built-in one
    built_in = white_pixels({"engine": "preview"}, make_job)
    with_font = white_pixels({"engine": "preview", "font": str(square_font)}, make_job)
    assert with_font > built_in + 2000, (with_font, built_in)  # three solid squares, not three outlines


def test_a_cjk_prompt_finds_a_system_cjk_font(square_font, make_job, monkeypatch):
    monkeypatch.setattr(preview, "CJK_FONTS", ("/nonexistent/NotoSansCJK-Regular.ttc", str(square_font)))
    found = white_pixels({"engine": "preview"}, make_job)
    assert found == white_pixels({"engine": "preview", "font": str(square_font)}, make_job)
    # A Latin prompt keeps the built-in font.
    latin = white_pixels({"engine": "preview"}, make_job, prompt="cat cat cat")
    monkeypatch.setattr(preview, "CJK_FONTS", ())
    assert latin == white_pixels({"engine": "preview"}, make_job, prompt="cat cat cat")


def test_an_unreadable_font_is_refused_when_the_engine_loads(tmp_path):
    bad = tmp_path / "not-a-font.ttf"
    bad.write_bytes(b"hello")
    with pytest.raises(ValueError, match="font = .*not-a-font.ttf.*not a font"):
        PreviewEngine({"engine": "preview", "font": str(bad)})
    with pytest.raises(ValueError, match="font = .*missing.ttf"):
        PreviewEngine({"engine": "preview", "font": str(tmp_path / "missing.ttf")})


def test_preview_options_are_checked_with_the_models_file(tmp_path):
    from opendance.config import load_models

    path = tmp_path / "models.toml"
    path.write_text('[models."m"]\nresolution = "480p"\n[models."m".default]\nengine = "preview"\nfnt = "x.ttf"\n')
    with pytest.raises(ValueError, match=r"models\.m \(text-to-video, engine preview\): fnt: Extra inputs are not permitted"):
        load_models(path)
