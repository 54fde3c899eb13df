"""Fixtures shared by the whole suite: real servers in subprocesses and a media host."""

from __future__ import annotations

import os

import pytest

from opendance.testing.http import MediaHost
from opendance.testing.server import LiveServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Markers by where a test lives, so a run can pick or skip a kind: `-m "not scaleout and not load"`.
# (browser tests also carry the mark in their files.)
MARKS_BY_PATH = {
    "scaleout": ("tests/scaleout/",),
    "diffusers": ("tests/diffusers/",),
    "browser": ("tests/browser/",),
    "load": ("tests/robustness/test_load.py", "tests/executors/test_relays.py", "tests/robustness/test_callback_fairness.py"),
    "fuzz": ("tests/robustness/test_schema_fuzz.py", "tests/robustness/test_validator_properties.py"),
}


def pytest_collection_modifyitems(config, items):
    root = config.rootpath
    for item in items:
        where = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else item.path.as_posix()
        for mark, prefixes in MARKS_BY_PATH.items():
            if where.startswith(prefixes):
                item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture(scope="session")
def media_host():
    with MediaHost() as host:
        yield host


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """An open server (no keys) whose media fetcher may reach 127.0.0.1 (the media host)."""
    with LiveServer(tmp_path_factory.mktemp("server"), env={"OPENDANCE_ALLOW_HOSTS": "127.0.0.1"}) as s:
        yield s


@pytest.fixture(scope="session")
def strict_server(tmp_path_factory):
    """A server with the default SSRF policy (nothing private allowed)."""
    with LiveServer(tmp_path_factory.mktemp("strict")) as s:
        yield s


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory):
    """A server with two API keys, k-alice and k-bob, and a 2 MB body limit."""
    env = {"OPENDANCE_API_KEYS": "k-alice,k-bob", "OPENDANCE_ALLOW_HOSTS": "127.0.0.1", "OPENDANCE_MAX_BODY_BYTES": "2000000"}
    with LiveServer(tmp_path_factory.mktemp("keyed"), env=env) as s:
        yield s


@pytest.fixture
def client(server):
    with server.client() as c:
        yield c
