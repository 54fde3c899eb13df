"""The docs keep up with the code: every setting is documented, the two commands exist."""

from __future__ import annotations

from pathlib import Path

from opendance.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented():
    docs = (ROOT / "README.md").read_text() + (ROOT / "docs" / "scale-out.md").read_text()
    missing = [name for name in Settings.model_fields if f"OPENDANCE_{name.upper()}" not in docs]
    assert not missing, f"settings missing from README.md / docs/scale-out.md: {missing}"


def test_readme_opens_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme[: readme.index("## Make a video")]
    assert "./scripts/serve" in quick and "./scripts/test" in quick
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test" in ci
