"""What reading keys from the store costs a request, side by side in one run.

    .venv/bin/python bench/bench_keys.py [--requests 400] [--rounds 3]

Three real servers (subprocesses, SQLite, local runner): one open (each request asks the store
whether any key exists yet), one with a key in ``OPENDANCE_API_KEYS`` (compared in memory, no
store read), one with a key made by ``opendance keys create`` (each request reads the key's
row by its hash). One client GETs one task on each server in turn, ``--requests`` at a time,
for ``--rounds`` rounds, so load on the machine falls on the three alike. Prints p50/p99 per
server and each p50 as a ratio of the env key's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from opendance.testing.server import LiveServer

MODELS = """
[models."bench"]
resolution = "480p"
fps = 8
[models."bench".default]
engine = "scenario"
steps = 1
step_seconds = 0.01
"""
NO_LIMITS = {"OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    config = root / "models.toml"
    config.write_text(MODELS)
    store_dir = root / "store"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "opendance",
            "keys",
            "create",
            "--name",
            "bench",
            "--data-dir",
            str(store_dir),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    servers = {
        "open": (LiveServer(root / "open", config=config, env=NO_LIMITS), None),
        "env key": (LiveServer(root / "env", config=config, env={**NO_LIMITS, "OPENDANCE_API_KEYS": "k-bench"}), "k-bench"),
        "store key": (LiveServer(store_dir, config=config, env=NO_LIMITS), made.stdout.strip()),
    }
    times: dict[str, list[float]] = {name: [] for name in servers}
    try:
        clients = {}
        for name, (server, key) in servers.items():
            server.start()
            c = server.client(key)
            tid = c.post("/v1/video/generations", json={"model": "bench", "prompt": "x"}).json()["id"]
            clients[name] = (c, f"/v1/video/generations/{tid}")
        for _ in range(args.rounds):
            for name, (c, path) in clients.items():
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    r = c.get(path)
                    times[name].append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
        base = statistics.median(times["env key"])
        print(f"{args.rounds} rounds x {args.requests} GETs per server, one client")
        print("| server | p50 ms | p99 ms | p50 / env key's |\n| --- | --- | --- | --- |")
        for name, values in times.items():
            print(
                f"| {name} | {statistics.median(values) * 1e3:.2f} | {pct(values, 99) * 1e3:.2f} | {statistics.median(values) / base:.2f} |"
            )
    finally:
        for server, _ in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
