"""The memory plan (``engines.memory_plan``, ``opendance models check``) on tiny real pipelines
saved to folders: the bytes come from the safetensors headers, identical weights in different
folders are one component, and a plan over a device's stated memory refuses to start."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from opendance.config import load_models
from opendance.engines.memory_plan import SIZES, build_plan, parse_size, plan_mode, read_weights
from opendance.testing import tiny_pipelines
from opendance.testing.server import free_port

FLOATS = ("F32", "F16", "BF16")


def tensor_bytes(folder: Path, dtype: str) -> int:
    """The sum over the component's tensors, read from the files (safetensors), at ``dtype``."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                total += t.numel() * (SIZES[dtype] if t.is_floating_point() else t.element_size())
    return total


def test_the_plan_s_bytes_are_the_sum_of_the_tensors_at_the_configured_dtypes(tiny_folders):
    spec = dict(checkpoint=str(tiny_folders["wan-i2v"]), extend_checkpoint=str(tiny_folders["wan-vace"]), dtype="bfloat16")
    plan = plan_mode("m", "image-to-video", "wan", spec)
    got = {(c.pipeline.name, c.name): (c.dtype, c.bytes) for c in plan.components}
    assert set(got) == {(f, n) for f in ("wan-i2v", "wan-vace") for n in ("text_encoder", "transformer", "vae")}
    for (folder, name), (dtype, n) in got.items():
        assert dtype == ("float32" if name == "vae" else "bfloat16")  # Wan's VAE stays float32
        assert n == tensor_bytes(tiny_folders[folder] / name, dtype) > 0
    table = plan_mode("m", "image-to-video", "wan", dict(spec, dtype={"default": "float32", "vae": "float16"}))
    vae = next(c for c in table.components if c.name == "vae")
    assert (vae.dtype, vae.bytes) == ("float16", tensor_bytes(tiny_folders["wan-i2v"] / "vae", "float16"))


def test_identical_weights_in_different_folders_are_one_component(tiny_folders, tmp_path):
    copy = shutil.copytree(tiny_folders["wan-t2v"], tmp_path / "elsewhere")
    assert read_weights(copy / "text_encoder").key == read_weights(tiny_folders["wan-t2v"] / "text_encoder").key
    # Same shapes, other values: another key.
    changed = shutil.copytree(tiny_folders["wan-t2v"], tmp_path / "finetuned")
    weights = next((changed / "transformer").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert read_weights(changed / "transformer").key != read_weights(tiny_folders["wan-t2v"] / "transformer").key

    # The 480p text-to-video mode reads the copy; omni-reference reads the VACE folder.
    plan = build_plan(
        load_models(tiny_pipelines.write_models_toml(tmp_path / "m.toml", {**tiny_folders, "wan-t2v": copy})), ["cpu"]
    )
    t2v = next(m for m in plan.modes if m.model == "jisudance2.0-480p" and m.mode == "text-to-video")
    vace = next(m for m in plan.modes if m.model == "jisudance2.0-480p" and m.mode == "omni-reference")
    t2v_te = next(c for c in t2v.components if c.name == "text_encoder")
    vace_te = next(c for c in vace.components if c.name == "text_encoder")
    assert t2v_te.pipeline != vace_te.pipeline and t2v_te.identity == vace_te.identity
    lines = "\n".join(plan.lines())
    assert "elsewhere/text_encoder" in lines and "shared" in lines


def test_offload_keeps_one_copy_per_pipeline_in_host_ram(tiny_folders):
    spec = dict(checkpoint=str(tiny_folders["wan-t2v"]), extend_checkpoint=str(tiny_folders["wan-vace"]), cpu_offload=True)
    plan = plan_mode("m", "text-to-video", "wan", spec)
    by_name = {(c.pipeline.name, c.name): c.bytes for c in plan.components}
    assert plan.host == sum(by_name.values())  # the two text encoders are two copies
    assert plan.device_weights == max(by_name.values())


def test_parse_size():
    assert parse_size("80GiB") == 80 * 1024**3
    assert parse_size("80GB") == 80 * 10**9
    assert parse_size("0.5MiB") == 512 * 1024
    with pytest.raises(ValueError, match="not a memory size"):
        parse_size("lots")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opendance", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_models_check_prints_the_plan_and_says_whether_it_fits(tiny_folders, tmp_path):
    config = tiny_pipelines.write_models_toml(tmp_path / "models.toml", tiny_folders)
    done = cli("models", "check", "--config", str(config), "--device-memory", "1GiB", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "jisudance2.0-480p / text-to-video (wan)" in done.stdout
    assert "wan-vace/transformer" in done.stdout and "cpu: 1.0 GiB; largest mode" in done.stdout and "fits" in done.stdout
    small = cli("models", "check", "--config", str(config), "--device-memory", "0.2MiB", cwd=tmp_path)
    assert small.returncode == 1 and "does not fit: models.jisudance2.0-480p (text-to-video) needs" in small.stdout


def test_serve_and_worker_refuse_a_plan_over_the_device_s_memory(tiny_folders, tmp_path):
    config = tiny_pipelines.write_models_toml(tmp_path / "models.toml", tiny_folders)
    common = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--device-memory", "0.2MiB"]
    serve = cli("serve", "--port", str(free_port()), *common, cwd=tmp_path)
    assert serve.returncode == 2, (serve.stdout, serve.stderr)
    assert "opendance serve: models.jisudance2.0-480p (text-to-video) needs" in serve.stderr
    assert "on cpu (weights" in serve.stderr and "which has 0.20 MiB" in serve.stderr
    worker = cli("worker", "--models", "ltx-video-480p", "--temporal-address", f"127.0.0.1:{free_port()}", *common, cwd=tmp_path)
    assert worker.returncode == 2, (worker.stdout, worker.stderr)
    assert "opendance worker: models.ltx-video-480p (text-to-video) needs" in worker.stderr
    assert "jisudance" not in worker.stderr  # only the models it serves
