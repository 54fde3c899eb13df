"""Fixtures of the client, CLI and OpenAI tests: one live server whose models cover every
behaviour they need (a real preview video, quick runs at 480p and 720p, a slow run to watch,
a failing engine, a model used only by the pagination tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from opendance.testing.media import image_bytes
from opendance.testing.server import LiveServer, wait_for_task

MODELS_TOML = """
[models."jisudance2.0-480p"]
resolution = "480p"
[models."jisudance2.0-480p".default]
engine = "preview"

[models."quick-480p"]
resolution = "480p"
fps = 8
[models."quick-480p".default]
engine = "scenario"
steps = 4
step_seconds = 0.05

[models."quick-720p"]
resolution = "720p"
fps = 8
[models."quick-720p".default]
engine = "scenario"
steps = 4
step_seconds = 0.05

[models."slow"]
resolution = "480p"
fps = 8
[models."slow".default]
engine = "scenario"
steps = 40
step_seconds = 0.1

[models."broken"]
resolution = "480p"
fps = 8
[models."broken".default]
engine = "scenario"
behaviour = "fail"

[models."pager"]
resolution = "480p"
fps = 8
[models."pager".default]
engine = "scenario"
steps = 1
step_seconds = 0.01
"""


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    """An open server (no keys) with the models above; media may come from 127.0.0.1."""
    d = tmp_path_factory.mktemp("client-server")
    cfg = d / "models.toml"
    cfg.write_text(MODELS_TOML)
    with LiveServer(d / "data", config=cfg, env={"OPENDANCE_ALLOW_HOSTS": "127.0.0.1"}) as s:
        yield s


@pytest.fixture
def http(live):
    with live.client() as c:
        yield c


@pytest.fixture
def png(tmp_path) -> Path:
    """A 400x240 PNG on disk (its nearest aspect ratio is 16:9)."""
    path = tmp_path / "first frame.png"
    path.write_bytes(image_bytes(400, 240, seed=3))
    return path


@pytest.fixture
def run_cli(tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli("generate", "a fox", env={...})``: the ``opendance`` command as a user runs
    it (a subprocess, stderr not a terminal), in ``tmp_path``."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
        base = {k: v for k, v in os.environ.items() if not k.startswith("OPENDANCE_")}
        return subprocess.run(
            [sys.executable, "-m", "opendance", *args],
            cwd=tmp_path,
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def finished(http) -> Callable[[str], dict]:
    """``finished(task_id)``: poll the legacy route until the task is terminal."""
    return lambda task_id: wait_for_task(http, task_id, timeout=60.0)
