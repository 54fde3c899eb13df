"""API servers and workers on a set of backing servers, for the scale-out tests and benchmark.

::

    cluster = Cluster(root, env, config, models=["steady"], apis=2, workers=2).start()
    task_id = cluster.create("steady")
    wait_until(lambda: cluster.get(task_id)["status"] == "completed", 60, "completed")
    cluster.stop()
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx

from .server import LiveServer
from .servers import SeaweedS3, ServerProcess, TemporalServer, opendance_command, opendance_env


def wait_until(predicate, timeout: float, what: str, poll: float = 0.1):
    """Poll ``predicate`` until it returns something truthy (a bounded wait, never a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s")
        time.sleep(poll)


def read_runs(records: Path) -> list[dict]:
    """The scenario engine's ``runs.jsonl``: which process ran which steps of which task when."""
    path = Path(records) / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def cluster_env(database_url: str, temporal: TemporalServer, s3: SeaweedS3, **extra: str) -> dict[str, str]:
    """``OPENDANCE_*`` variables that point API servers and workers at the same three servers."""
    env = {
        "OPENDANCE_DATABASE_URL": database_url,
        "OPENDANCE_RUNNER": "temporal",
        "OPENDANCE_TEMPORAL_ADDRESS": temporal.address,
        "OPENDANCE_STORAGE": "s3",
        "OPENDANCE_S3_BUCKET": s3.bucket,
        "OPENDANCE_S3_ENDPOINT_URL": s3.endpoint,
        "OPENDANCE_S3_REGION": "us-east-1",
        "OPENDANCE_S3_ACCESS_KEY_ID": s3.access_key,
        "OPENDANCE_S3_SECRET_ACCESS_KEY": s3.secret_key,
        "OPENDANCE_S3_ADDRESSING_STYLE": "path",
    }
    env.update({k.upper() if k.startswith("OPENDANCE_") else f"OPENDANCE_{k.upper()}": v for k, v in extra.items()})
    return env


class WorkerProcess(ServerProcess):
    """``opendance worker --models ...`` as a child process; ``kill()`` is a machine dying."""

    name = "opendance-worker"

    def __init__(
        self, data_dir: Path, models: list[str], *, env: dict[str, str], config: Path | None = None, devices: str = "cpu"
    ) -> None:
        self.data_dir = Path(data_dir)
        super().__init__(self.data_dir / "worker.log")
        self.models, self.env, self.config, self.devices = models, env, config, devices

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = opendance_command("worker", "--models", *self.models, "--devices", self.devices, "--data-dir", str(self.data_dir))
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        start_at = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._spawn(cmd, env=opendance_env({**os.environ, "HF_HUB_OFFLINE": "1", **self.env}))
        assert self.process is not None, "started"
        deadline = time.monotonic() + timeout
        while b"serving" not in self.log_path.read_bytes()[start_at:]:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"worker not serving after {timeout}s:\n{self.log()}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its device processes at once (its whole process group)."""
        assert self.process is not None, "started"
        if self.running():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, sig: int | None = None) -> None:
        if sig == signal.SIGKILL:
            return self.kill()
        super().stop(sig)


class Cluster:
    def __init__(
        self, root: Path, env: dict[str, str], config: Path, *, models: list[str], apis: int = 2, workers: int = 2
    ) -> None:
        self.root = Path(root)
        self.env = env
        self.config = config
        self.models = models
        self.apis = [LiveServer(self.root / f"api-{i + 1}", env=env, config=config, startup_timeout=120) for i in range(apis)]
        self._made = 0
        self.workers = [self._worker() for _ in range(workers)]

    def _worker(self) -> WorkerProcess:
        self._made += 1  # a new folder (and log) per worker, also for one replacing a dead one
        return WorkerProcess(self.root / f"worker-{self._made}", self.models, env=self.env, config=self.config)

    def start(self) -> Cluster:
        for api in self.apis:
            api.start()
        for w in self.workers:
            w.start(timeout=120)
        return self

    def add_worker(self) -> WorkerProcess:
        w = self._worker()
        self.workers.append(w.start(timeout=120))
        return w

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        for api in self.apis:
            api.stop()

    @property
    def url(self) -> str:
        return self.apis[0].url

    def create(self, model: str, prompt: str = "a test", *, api: int = 0, **body) -> str:
        r = httpx.post(f"{self.apis[api].url}/v1/video/generations", json={"model": model, "prompt": prompt, **body}, timeout=30)
        if r.status_code != 200:
            raise AssertionError(f"create failed: {r.status_code} {r.text}")
        return r.json()["id"]

    def get(self, task_id: str, *, api: int = 0) -> dict:
        r = httpx.get(f"{self.apis[api].url}/v1/video/generations/{task_id}", timeout=10)
        r.raise_for_status()
        return r.json()

    def wait_done(self, task_ids: list[str], timeout: float, *, api: int = 0) -> dict[str, dict]:
        """Every task's final object (completed or failed), polling through ``api``."""
        final: dict[str, dict] = {}

        def all_done() -> bool:
            for tid in task_ids:
                if tid not in final:
                    task = self.get(tid, api=api)
                    if task["status"] in ("completed", "failed"):
                        final[tid] = task
            return len(final) == len(task_ids)

        wait_until(all_done, timeout, f"{len(task_ids) - len(final)} of {len(task_ids)} tasks finished", poll=0.2)
        return final

    def content(self, task_id: str, *, api: int = 0) -> bytes:
        r = httpx.get(f"{self.apis[api].url}/v1/video/generations/{task_id}/content", follow_redirects=True, timeout=60)
        r.raise_for_status()
        return r.content
