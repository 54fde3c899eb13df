"""Fixtures shared by the whole suite: real servers in subprocesses and a media host."""

from __future__ import annotations

import os

import pytest

from opendance.testing.http import MediaHost
from opendance.testing.server import LiveServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
