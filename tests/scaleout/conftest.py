"""Real servers for the scale-out tests, started once per session on 127.0.0.1 and stopped by
PID: a private PostgreSQL, the Temporal dev server, SeaweedFS S3. A test that needs its own
corner gets a fresh database, S3 prefix and Temporal task queues (``ScaleOutEnv``)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from opendance.store import TaskStore
from opendance.store.migrate import upgrade
from opendance.testing.cluster import cluster_env, read_runs
from opendance.testing.servers import PostgresServer, SeaweedS3, TemporalServer

MODELS = """
[models."steady"]
resolution = "480p"
fps = 8
[models."steady".default]
engine = "scenario"
behaviour = "sleep"
steps = 4
step_seconds = 0.1
record_dir = "{records}"

[models."long"]
resolution = "480p"
fps = 8
[models."long".default]
engine = "scenario"
behaviour = "sleep"
steps = 20
step_seconds = 0.25
record_dir = "{records}"

[models."fails"]
resolution = "480p"
fps = 8
[models."fails".default]
engine = "scenario"
behaviour = "fail"

[models."pv"]
resolution = "720p"
fps = 24
[models."pv".default]
engine = "preview"

[models."crashes"]
resolution = "480p"
fps = 8
[models."crashes".default]
engine = "scenario"
behaviour = "crash"
steps = 2
step_seconds = 0.05
record_dir = "{records}"
"""


@pytest.fixture(scope="session")
def pg():
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def temporal(tmp_path_factory):
    server = TemporalServer(tmp_path_factory.mktemp("temporal")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@dataclass
class ScaleOutEnv:
    """One isolated corner of the shared servers: database, S3 prefix, queues, models file."""

    root: Path
    database_url: str
    env: dict[str, str]
    config: Path
    records: Path

    def store(self) -> TaskStore:
        return TaskStore.from_url(self.database_url)

    def runs(self) -> list[dict]:
        return read_runs(self.records)


@pytest.fixture(scope="module")
def scaleout_env(pg, temporal, s3, tmp_path_factory) -> ScaleOutEnv:
    root = tmp_path_factory.mktemp("scaleout")
    name = "t" + secrets.token_hex(4)
    url = pg.create_database(name)
    store = TaskStore.from_url(url)
    upgrade(store.engine)
    store.close()
    records = root / "records"
    records.mkdir()
    config = root / "models.toml"
    config.write_text(MODELS.format(records=records))
    env = cluster_env(
        url,
        temporal,
        s3,
        s3_prefix=f"{name}/",
        temporal_control_queue=f"{name}-control",
        temporal_queue_prefix=f"{name}-model-",
        temporal_heartbeat_timeout="2",
        temporal_retry_interval="0.5",
        temporal_reconcile_interval="5",
        checkpoint_every="4",
        cpu_slots="1",  # one engine process per worker, as the tests count them
        max_attempts="4",
        content_serving="redirect",
        allow_hosts="127.0.0.1",  # callbacks to the test's receiver
        log_level="info",
    )
    return ScaleOutEnv(root, url, env, config, records)
