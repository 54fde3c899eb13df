"""``bench/bench_gpu.py --tiny`` runs on CPU: the GPU benchmark's code path (real Wan transformer
class, CFG loop, the levers applied by ``opendance.engines.levers``) at a tiny size.

The compile levers (and ``combined``, which compiles) are left out here: inductor takes tens of
seconds per graph on two cores. ``tests/diffusers/test_levers.py`` runs compile end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_gpu_tiny_runs_on_cpu(tmp_path):
    out = tmp_path / "bench_gpu.json"
    levers = "bare,attention,fp8_layerwise,int8_weight_only,fp8_weight_only,fp8_dynamic,offload"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--tiny", "--levers", levers, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["lever"].split(" ")[0]: r for r in result["results"]}
    assert result["size"] == "tiny" and result["device"] == "cpu"
    assert {"bare", "attention", "fp8_layerwise", "int8_weight_only", "fp8_weight_only"} <= set(rows)
    assert rows["bare"]["ratio"] == 1.0 and rows["bare"]["drift"] == 0.0
    for row in rows.values():
        assert row["s_per_step"] > 0 and math.isfinite(row["drift"])
    assert rows["attention"]["drift"] < 1e-2  # another kernel for the same attention
    assert 0 < rows["fp8_layerwise"]["drift"] < 0.2 and 0 < rows["int8_weight_only"]["drift"] < 0.2
    # What cannot run on a CPU is listed with its reason, not lost.
    assert any(s.startswith("fp8_dynamic (needs a CUDA GPU") for s in result["skipped"])
    assert any(s.startswith("offload group (needs an accelerator") for s in result["skipped"])
    assert "| lever | s/step | ratio to bare |" in done.stdout
