"""``opendance dev-cluster`` as an operator runs it: from a folder that holds an ``opendance/``
directory of its own, with a worker killed by ``dev-cluster kill-worker``; and the one-line
messages of a command whose optional parts are not installed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from opendance.testing.cluster import read_runs, wait_until
from opendance.testing.server import free_port
from opendance.testing.servers import opendance_command, opendance_env

HEARTBEAT_TIMEOUT = 6.0

MODELS = """
[models."long"]
resolution = "480p"
fps = 8
[models."long".default]
engine = "scenario"
behaviour = "sleep"
steps = 20
step_seconds = 0.4
record_dir = "{records}"
"""


def two_free_ports() -> int:
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


@pytest.fixture(scope="module")
def dev_cluster(tmp_path_factory):
    """``opendance dev-cluster --workers 1`` started in a folder with a stray ``opendance/``."""
    tmp_path = tmp_path_factory.mktemp("devcluster")
    records = tmp_path / "records"
    records.mkdir()
    config = tmp_path / "models.toml"
    config.write_text(MODELS.format(records=records))
    cwd = tmp_path / "project"
    (cwd / "opendance").mkdir(parents=True)
    (cwd / "opendance" / "__init__.py").write_text("")  # would shadow the package for `python -m opendance`
    state = tmp_path / "cluster"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OPENDANCE_TEMPORAL_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "OPENDANCE_TEMPORAL_RETRY_INTERVAL": "0.5",
        "OPENDANCE_CHECKPOINT_EVERY": "4",
        "OPENDANCE_CPU_SLOTS": "1",
    }
    args = ["dev-cluster", "--dir", str(state), "--workers", "1", "--api-port", str(two_free_ports()), "--config", str(config)]
    log = open(tmp_path / "dev-cluster.log", "wb")
    proc = subprocess.Popen(
        opendance_command(*args), cwd=cwd, env=opendance_env(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )

    def fault(*words: str) -> subprocess.CompletedProcess:
        cmd = opendance_command("dev-cluster", *words, "--dir", str(state))
        return subprocess.run(cmd, cwd=cwd, env=opendance_env(env), capture_output=True, text=True, timeout=60)

    def output() -> str:
        return (tmp_path / "dev-cluster.log").read_text(errors="replace")

    try:
        wait_until(lambda: b"faults:" in (tmp_path / "dev-cluster.log").read_bytes() or proc.poll() is not None, 240, "started")
        assert proc.poll() is None, output()
        yield {**json.loads((state / "cluster.json").read_text()), "dir": str(state)}, fault, output, records
    finally:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def worker_ids(url: str) -> list[str]:
    return httpx.get(f"{url}/readyz", timeout=10).json()["checks"]["runner"]["queues"]["long"]["worker_ids"]


def test_a_killed_worker_is_restarted_and_its_task_completes(dev_cluster):
    state, fault, output, records = dev_cluster
    api1, api2 = state["api_urls"]
    old = f"{socket.gethostname()}:{state['processes']['worker-1']}"
    tid = httpx.post(f"{api1}/v1/video/generations", json={"model": "long", "prompt": "survive"}, timeout=30).json()["id"]
    wait_until(lambda: any(r["task"] == tid and r["step"] >= 5 for r in read_runs(records) if r["event"] == "step"), 60, "step 5")
    wait_until(lambda: old in worker_ids(api2), 30, "the worker listed")

    killed = fault("kill-worker", "1")
    assert killed.returncode == 0, killed.stderr
    assert "killed" in killed.stdout
    # Gone from the alive workers within 2 heartbeat timeouts.
    wait_until(lambda: old not in worker_ids(api2), 2 * HEARTBEAT_TIMEOUT, "the killed worker leaves /readyz")
    errors, final = [], None
    deadline = time.monotonic() + 120
    while final is None:  # both API servers answer all along
        for url in (api1, api2):
            try:
                task = httpx.get(f"{url}/v1/video/generations/{tid}", timeout=10).json()
            except httpx.HTTPError as exc:
                errors.append(f"{url}: {exc}")
                continue
            if task["status"] in ("completed", "failed"):
                final = task
        assert time.monotonic() < deadline, f"not finished: {output()[-3000:]}"
        time.sleep(0.2)
    assert errors == []
    assert final["status"] == "completed", final
    starts = [r for r in read_runs(records) if r["task"] == tid and r["event"] == "start"]
    assert len(starts) == 2 and starts[1]["pid"] != starts[0]["pid"] and starts[1]["step"] >= 4  # resumed
    log = output()
    assert f"worker-1 (pid {state['processes']['worker-1']}) exited" in log and "worker-1 is back" in log
    assert "cannot import" not in log  # the stray opendance/ folder shadowed nothing
    status = fault("status")
    assert status.returncode == 0 and "worker-1" in status.stdout and "running" in status.stdout


def ready(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=10).status_code


def test_b_a_killed_api_server_is_restarted(dev_cluster):
    state, fault, output, _ = dev_cluster
    api1, api2 = state["api_urls"]
    killed = fault("kill-api", "2")
    assert killed.returncode == 0 and "api-2" in killed.stdout, killed.stderr
    tid = httpx.post(f"{api1}/v1/video/generations", json={"model": "long", "prompt": "meanwhile"}, timeout=30).json()["id"]
    wait_until(lambda: "api-2 is back" in output(), 120, "api-2 started again")
    assert httpx.get(f"{api2}/v1/video/generations/{tid}", timeout=10).json()["id"] == tid  # the same task there


def test_c_temporal_stopped_and_frozen(dev_cluster):
    """``stop-temporal --for`` and ``freeze-temporal --for``: not ready while Temporal does not
    answer (stopped, or hung with its connections open), ready again when it is back."""
    state, fault, output, _ = dev_cluster
    api = state["api_urls"][0]
    stopped = fault("stop-temporal", "--for", "4")
    assert stopped.returncode == 0 and "starts it again in 4 s" in stopped.stdout, stopped.stderr
    wait_until(lambda: ready(api) == 503, 30, "not ready while Temporal is stopped")
    wait_until(lambda: ready(api) == 200, 60, "ready once the cluster started Temporal again")
    assert "temporal is stopped until" in output() and "temporal is back" in output()
    freeze = subprocess.Popen(
        opendance_command("dev-cluster", "freeze-temporal", "--for", "6", "--dir", state["dir"]),
        env=opendance_env(dict(os.environ)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: ready(api) == 503, 30, "not ready while Temporal is frozen")
    finally:
        out, _ = freeze.communicate(timeout=60)
    assert freeze.returncode == 0 and "running again" in out
    wait_until(lambda: ready(api) == 200, 30, "ready once Temporal runs again")


@pytest.mark.parametrize(
    ("hidden", "words", "says"),
    [
        ("temporalio", ["worker", "--models", "jisudance2.0-480p"], "opendance worker: needs temporalio"),
        ("psycopg", ["dev-cluster", "--dir", "unused"], "dev-cluster needs the psycopg package"),
        ("psycopg", ["db", "upgrade"], "opendance db upgrade: needs psycopg"),
    ],
)
def test_missing_parts_are_one_line(tmp_path, hidden, words, says):
    code = f"import sys; sys.modules[{hidden!r}] = None; from opendance.cli import main; sys.exit(main({words!r}))"
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none"  # never reached: the check comes first
    env = opendance_env({**os.environ, "OPENDANCE_DATA_DIR": str(tmp_path), "OPENDANCE_DATABASE_URL": url})
    r = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(says) and "pip install 'opendance[" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_ports_are_kept_across_restarts(tmp_path):
    from opendance.devcluster import _ports

    first = _ports(tmp_path)
    assert len(set(first.values())) == len(first)  # one port each
    assert _ports(tmp_path) == first == json.loads((tmp_path / "ports.json").read_text())
