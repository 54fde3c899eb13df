"""Connection rules of ``opendance serve``: a request head has a deadline (slow or silent
clients are closed, a partial request with a 408), kept-alive connections still work, and a
connection beyond the cap is answered 503 and closed.

Each check is whether the server closed a socket (or answered it), never how fast it did."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from opendance.testing.server import LiveServer

HEAD_TIMEOUT = 1.0


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a TimeoutError if it never does)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def error_code(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]["code"]


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    env = {"OPENDANCE_HEADER_TIMEOUT": str(HEAD_TIMEOUT), "OPENDANCE_KEEP_ALIVE_TIMEOUT": "30"}
    with LiveServer(tmp_path_factory.mktemp("heads"), env=env) as server:
        yield server


@pytest.mark.timeout(120)
def test_trickled_headers_are_cut_off_with_a_408(strict):
    """Ten clients send a header byte every 0.2 s, for a minute if let: each is cut off, with a 408."""
    answers: list[bytes] = []

    def slowloris() -> None:
        sock = connect(strict)
        sock.settimeout(0.2)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            for sent in range(300):
                sock.sendall(b"X" if sent % 10 else b"\r\nX-Slow: ")  # never the blank line that ends a head
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue  # still held: trickle on
                sock.settimeout(30)
                answers.append(data + (read_until_closed(sock) if data else b""))
                return
        except (BrokenPipeError, ConnectionResetError):
            answers.append(b"")
        finally:
            sock.close()

    threads = [threading.Thread(target=slowloris) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 10, f"{10 - len(answers)} of 10 trickling clients were never cut off"
    assert all(error_code(a) == (408, "request_timeout") for a in answers if a), answers[:1]


def test_a_silent_connection_is_closed(strict):
    sock = connect(strict)
    try:
        assert read_until_closed(sock) == b""  # closed without a word: nothing was asked
    finally:
        sock.close()


def test_kept_alive_connections_still_serve_requests(strict):
    sock = connect(strict)
    try:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b'"ok"}' not in data:
                data += sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200 ")
            time.sleep(HEAD_TIMEOUT * 0.6)  # idle less than the deadline between requests
        time.sleep(HEAD_TIMEOUT * 2)  # then idle past it: the next request never comes, the server hangs up
        assert read_until_closed(sock) == b""
    finally:
        sock.close()


def test_connections_beyond_the_cap_are_refused(tmp_path_factory):
    env = {"OPENDANCE_MAX_CONNECTIONS": "8", "OPENDANCE_HEADER_TIMEOUT": "60", "OPENDANCE_KEEP_ALIVE_TIMEOUT": "60"}
    with LiveServer(tmp_path_factory.mktemp("cap"), env=env) as server:
        time.sleep(0.5)  # the readiness probes' connections are closed by now
        held = [connect(server) for _ in range(8)]
        try:
            extra = connect(server)
            response = read_until_closed(extra)
            extra.close()
            assert error_code(response) == (503, "too_many_connections"), response
            assert b"retry-after: 1" in response.lower()
            held.pop().close()  # one goes away: there is room again
            time.sleep(0.5)
            again = connect(server)
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_closed(again).startswith(b"HTTP/1.1 200 ")
            again.close()
        finally:
            for sock in held:
                sock.close()
