"""Real local upstreams for the media tests (127.0.0.x only, no patching) and small helpers.

``upstream`` is a ``HostileHost``: a threaded HTTP server whose routes can serve bytes, redirect,
stall, trickle or stream forever; it records every request with the local address it arrived at,
so tests can see which address a fetch really connected to.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opendance.media.fetch import SafeFetcher
from opendance.testing.http import HostileHost


@pytest.fixture
def upstream():
    up = HostileHost()
    yield up
    up.close()


@pytest.fixture
def make_upstream():
    """Start more upstreams (other loopback addresses, TLS); all closed at the end."""
    made: list[HostileHost] = []

    def make(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> HostileHost:
        made.append(HostileHost(host, tls=tls))
        return made[-1]

    yield make
    for up in made:
        up.close()


class NameMap:
    """A resolver test double: host name -> answers, each call answered by the next one
    (the last repeats), every call recorded. Lets a test play DNS rebinding for real."""

    def __init__(self, answers: dict[str, list[list[str]]], delay: float = 0.0) -> None:
        self.answers = answers
        self.delay = delay
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if self.delay:
            await asyncio.sleep(self.delay)
        seq = self.answers.get(host)
        if not seq:
            raise OSError(f"{host} not found")
        n = sum(1 for c in self.calls if c == host) - 1
        return seq[min(n, len(seq) - 1)]


@pytest.fixture
def name_map():
    """``name_map({"a.test": [["127.0.0.2"], ["10.0.0.1"]]})``: a ``NameMap`` resolver."""
    return NameMap


@pytest.fixture
def run_fetcher():
    """``run_fetcher(lambda f: f.fetch(...), allow_hosts=[...])``: build a SafeFetcher with short
    test timeouts inside a fresh event loop, run the coroutine, close the fetcher."""

    def run(use: Callable[[SafeFetcher], Any], **overrides: Any) -> Any:
        options: dict[str, Any] = dict(allow_hosts=[], connect_timeout=2.0, read_timeout=2.0, total_timeout=10.0, max_redirects=3)
        options.update(overrides)

        async def main() -> Any:
            fetcher = SafeFetcher(**options)
            try:
                return await use(fetcher)
            finally:
                await fetcher.aclose()

        return asyncio.run(main())

    return run


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for the name ``media.test`` (made with the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=media.test",
            "-addext",
            "subjectAltName=DNS:media.test",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
