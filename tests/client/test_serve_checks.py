"""``opendance serve`` (and ``worker``) refuse to start, with exit code 2 and the fix, when the
models file needs what this machine does not have: the diffusers packages (the message gives
the pip command) or a checkpoint folder (the message gives its path). Before, the server
started "ready" and failed every task with ``No module named 'torch'``.

The machine without torch is real: a Python started with ``-S`` whose path holds every package
of the test environment except torch, diffusers and transformers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import opendance
from opendance.testing.server import free_port

ROOT = Path(opendance.__file__).resolve().parent.parent
LEFT_OUT = ("torch", "torchgen", "functorch", "diffusers", "transformers")


def wan_config(tmp_path: Path, checkpoint: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        f"""
[models."wan-480p"]
resolution = "480p"
[models."wan-480p".default]
engine = "wan"
checkpoint = "{checkpoint}"
steps = 2
"""
    )
    return path


def diffusers_folder(where: Path) -> Path:
    """A folder that looks like a diffusers checkpoint (enough for the start-up check)."""
    where.mkdir(parents=True)
    (where / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    return where


@pytest.fixture(scope="module")
def without_torch(tmp_path_factory) -> dict[str, str]:
    """The environment of a Python that has opendance and its core dependencies, not the diffusers extra."""
    import fastapi

    site = Path(fastapi.__file__).resolve().parent.parent
    shadow = tmp_path_factory.mktemp("site-without-torch")
    for entry in site.iterdir():
        if entry.name.split("-")[0].split(".")[0].lower() not in LEFT_OUT and not entry.name.endswith(".pth"):
            (shadow / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{shadow}"
    proof = subprocess.run([sys.executable, "-S", "-c", "import torch"], env=env, capture_output=True, text=True)
    assert proof.returncode != 0 and "No module named 'torch'" in proof.stderr, proof
    return env


def serve(
    args: list[str], env: dict[str, str] | None, tmp_path: Path, python_flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        *python_flags,
        "-m",
        "opendance",
        "serve",
        "--port",
        str(free_port()),
        "--data-dir",
        str(tmp_path / "data"),
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_serve_without_the_diffusers_extra_exits_2_naming_the_pip_command(tmp_path, without_torch):
    config = wan_config(tmp_path, diffusers_folder(tmp_path / "wan"))
    done = serve(["--config", str(config)], without_torch, tmp_path, ("-S",))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "models.wan-480p (engine wan) needs torch, diffusers, transformers" in done.stderr
    assert "pip install 'opendance[diffusers]'" in done.stderr
    assert done.stderr.count("needs torch") == 1  # once per model, not once per mode


@pytest.mark.timeout(120)
def test_a_preview_config_starts_without_torch(tmp_path, without_torch):
    """The check asks only what the configured engines need: the preview engine needs no torch."""
    config = tmp_path / "preview.toml"
    config.write_text('[models."p"]\nresolution = "480p"\n[models."p".default]\nengine = "preview"\n')
    proc = subprocess.Popen(
        [
            sys.executable,
            "-S",
            "-m",
            "opendance",
            "serve",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "d"),
            "--config",
            str(config),
        ],
        env=without_torch,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        out = ""
        for line in proc.stdout:  # type: ignore[union-attr]
            out += line
            if "ready" in line or proc.poll() is not None:
                break
        assert "ready" in out, out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker processes
        proc.wait(30)


def test_a_missing_checkpoint_folder_exits_2_naming_its_path(tmp_path):
    missing = tmp_path / "weights" / "Wan2.1-T2V-1.3B-Diffusers"
    done = serve(["--config", str(wan_config(tmp_path, missing))], None, tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"the checkpoint folder {missing} does not exist" in done.stderr


def test_a_checkpoint_folder_that_is_not_a_diffusers_folder_exits_2(tmp_path):
    empty = tmp_path / "downloading"
    empty.mkdir()
    done = serve(["--config", str(wan_config(tmp_path, empty))], None, tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"the checkpoint folder {empty} is not a diffusers folder (it has no model_index.json)" in done.stderr


def test_a_worker_checks_the_models_it_serves(tmp_path):
    missing = tmp_path / "nowhere"
    cmd = [
        sys.executable,
        "-m",
        "opendance",
        "worker",
        "--models",
        "wan-480p",
        "--config",
        str(wan_config(tmp_path, missing)),
        "--data-dir",
        str(tmp_path / "data"),
        "--temporal-address",
        f"127.0.0.1:{free_port()}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"opendance worker: models.wan-480p (engine wan): the checkpoint folder {missing} does not exist" in done.stderr
