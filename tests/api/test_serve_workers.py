"""``opendance serve --workers N`` in local mode: refused before anything starts (exit 2, one
line naming Temporal mode), since the local runner runs the tasks inside the API process and a
second process would run them again. Temporal mode: tests/scaleout/test_serve_workers.py."""

from __future__ import annotations

import os
import subprocess
import sys


def serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "opendance", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_several_workers_in_local_mode_are_refused_naming_temporal(tmp_path):
    done = serve(tmp_path, "--workers", "2")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers 2 needs Temporal mode (--runner temporal)" in lines[0], done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_workers_must_be_at_least_one(tmp_path):
    done = serve(tmp_path, "--workers", "0")
    assert done.returncode == 2 and "--workers must be at least 1; got 0" in done.stderr
