"""A bounded load test in CI: 200 tasks created and polled by 16 concurrent clients (each with its
own key), every one completed exactly once: seen by its client, listed once under its key, one
row run once in the store, one video on disk, one ``completed`` callback, counted once by the
server. The full-size run (2,000 tasks, 32 clients) is ``bench/bench_load.py``; its figures are
in docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_load.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(420)
def test_no_task_lost_or_duplicated_under_load():
    result = load_bench().run_load(tasks=200, clients=16, engine="scenario", workers=2, poll=1.0, window=4, timeout=360)
    figures = result["figures"]
    print(f"\nload: {figures}")
    assert result["problems"] == [], result["problems"]
    assert result["partial_files"] == []
    assert (result["lost"], result["duplicated"]) == (0, 0)
    assert figures["requests"] > 200  # the clients really polled
