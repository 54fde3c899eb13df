"""The models file is checked when the server starts: a diffusers engine's options with a typo,
a value out of range or a wrong type stop ``opendance serve`` with the model, the mode and the
key at fault, on a server without torch (the check imports neither torch nor diffusers)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from opendance.config import load_models

GOOD = """
[models."m"]
resolution = "480p"
fps = 16
[models."m".default]
engine = "preview"
[models."m".modes."text-to-video"]
engine = "wan"
checkpoint = "/models/Wan2.1-T2V-14B-Diffusers"
steps = 30
"""


def write(tmp_path, text):
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_valid_options_load(tmp_path):
    model = load_models(write(tmp_path, GOOD))["m"]
    assert model.modes["text-to-video"].options["steps"] == 30  # the weights need not be here (API server)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("stpes = 30", "models.m (text-to-video, engine wan): stpes: Extra inputs are not permitted"),
        ("guidance = -1", "guidance: Input should be greater than or equal to 0"),
        ('dtype = "fp8"', "dtype is 'fp8'; it must be 'float32', 'float16' or 'bfloat16'"),
        ('cache = {type = "FastCache"}', "cache.type: Input should be 'FirstBlockCache', 'MagCache' or 'TaylorSeer'"),
        ("frames = 9\noverlap = 9", "overlap (9) must be smaller than frames (9)"),
    ],
)
def test_bad_options_are_refused_by_name(tmp_path, change, message):
    with pytest.raises(ValueError) as caught:
        load_models(write(tmp_path, GOOD + change + "\n"))
    assert message in str(caught.value)


def test_a_missing_checkpoint_key_is_named(tmp_path):
    text = GOOD.replace('checkpoint = "/models/Wan2.1-T2V-14B-Diffusers"\n', "")
    with pytest.raises(ValueError, match=r"models\.m \(text-to-video, engine wan\): checkpoint: Field required"):
        load_models(write(tmp_path, text))


def test_serve_refuses_to_start_and_says_why(tmp_path):
    path = write(tmp_path, GOOD + "stpes = 30\n")
    code = (
        "import sys; from opendance.cli import main; "
        f"sys.argv = ['opendance', 'serve', '--config', {str(path)!r}, '--data-dir', {str(tmp_path / 'data')!r}, "
        "'--port', '1']; sys.exit(main())"
    )
    # The check must not need torch: the child refuses to import it.
    guard = "import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None; "
    done = subprocess.run([sys.executable, "-c", guard + code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "stpes" in done.stderr and "models.m (text-to-video, engine wan)" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr  # a message, not a crash


@pytest.mark.parametrize("engine", ["wan", "ltx", "ltx2"])
@pytest.mark.parametrize("change", ["guidance = -1", "native_fps = 0", "frames = 0", "max_area = 1", "steps = 0"])
def test_each_engine_keeps_the_limits_when_it_changes_a_default(tmp_path, engine, change):
    with pytest.raises(ValueError, match=change.split()[0]):
        text = GOOD.replace('engine = "wan"', f'engine = "{engine}"').replace("steps = 30\n", "")
        load_models(write(tmp_path, text + change + "\n"))
