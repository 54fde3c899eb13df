"""Run a real opendance server in a subprocess, for tests, benchmarks and client CI.

::

    with LiveServer(tmp_path, env={"OPENDANCE_API_KEYS": "k1"}) as server:
        httpx.get(server.url + "/healthz")

The server is a separate process (``python -m opendance serve``) on 127.0.0.1 and a free port;
``kill()`` sends SIGKILL (a crash), ``stop()`` SIGTERM (a graceful stop), ``start()`` starts it
again on the same port and data directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(
        self,
        data_dir: Path,
        *,
        env: dict[str, str] | None = None,
        config: Path | None = None,
        args: list[str] | None = None,
        port: int | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config
        self.args = args or []
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENDANCE_LOG_LEVEL": "warning", **(env or {})}
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir / "server.log"

    def start(self) -> LiveServer:
        from .servers import opendance_command, opendance_env

        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = opendance_command("serve", "--port", str(self.port), "--data-dir", str(self.data_dir))
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        cmd += self.args
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            cmd, env=opendance_env(self.env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None, "started"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server not ready after {self.startup_timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None, "started"
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the server and its workers at once, as a crash or power loss would."""
        if self.process is not None and self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(10)

    def worker_pids(self) -> list[int]:
        """The server's spawned worker processes (its children running multiprocessing's spawn_main)."""
        if self.process is None:
            return []
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True).stdout
        found = []
        for pid in (int(p) for p in out.split()):
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except FileNotFoundError:  # it ended meanwhile
                pass
        return found

    def kill_server_only(self) -> None:
        """SIGKILL the API process alone; its workers notice the closed pipe and exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait(10)

    def client(self, key: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0, **kw)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_task(client: httpx.Client, task_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict:
    """Poll a task until it is completed or failed; returns the task object."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/video/generations/{task_id}")
        r.raise_for_status()
        task = r.json()
        if task["status"] in ("completed", "failed"):
            return task
        if time.monotonic() > deadline:
            raise TimeoutError(f"{task_id} still {task['status']} ({task['progress']}%) after {timeout}s")
        time.sleep(poll)
