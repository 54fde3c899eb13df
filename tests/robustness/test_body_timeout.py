"""A request body has a deadline (``body_timeout``): a client that sends its headers and then
trickles the body is answered 408 in the one error shape, naming the limit, and closed; a body
that comes in time, at once or in a few quick pieces, is served as before.

Each check is whether the server answered and closed a real socket, never how fast it did."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from opendance.testing.server import LiveServer

BODY_TIMEOUT = 1.0


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def answer(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    env = {"OPENDANCE_BODY_TIMEOUT": str(BODY_TIMEOUT), "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(tmp_path_factory.mktemp("bodies"), env=env) as server:
        yield server


def trickle(server: LiveServer, path: str, content_type: str, body: bytes) -> bytes:
    """Send the head, then the body a byte every 0.2 s (for a minute if let); what the server
    answered once it stopped waiting."""
    sock = connect(server)
    sock.settimeout(0.2)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    try:
        sock.sendall(head.encode())
        for i in range(300):
            sock.sendall(body[i : i + 1])
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue  # still held: trickle on
            sock.settimeout(30)
            return data + (read_until_closed(sock) if data else b"")
        raise AssertionError("the trickled body was never cut off")
    except (BrokenPipeError, ConnectionResetError):
        return b""
    finally:
        sock.close()


@pytest.mark.timeout(120)
def test_trickled_bodies_are_cut_off_with_a_408_naming_the_limit(strict):
    json_body = json.dumps({"model": "jisudance2.0-480p", "prompt": "p" * 400}).encode()
    boundary = "b0undary"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n{"q" * 400}\r\n--{boundary}--\r\n').encode()
    cases = [
        ("/v1/video/generations", "application/json", json_body),
        ("/v1/videos", f"multipart/form-data; boundary={boundary}", form),
        ("/api/v3/contents/generations/tasks", "application/json", json_body),
    ]
    answers: list[bytes] = []
    threads = [threading.Thread(target=lambda c=c: answers.append(trickle(strict, *c))) for c in cases for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 9
    for raw in answers:
        assert raw, "closed without an answer"
        status, body = answer(raw)
        error = body["error"]
        assert (status, error["code"], error["type"]) == (408, "request_timeout", "invalid_request_error"), raw
        assert "body_timeout" in error["message"] and f"{BODY_TIMEOUT:g} s" in error["message"], error
    with strict.client() as c:  # still serving, and nothing was made from a cut-off body
        assert c.get("/readyz").status_code == 200
        assert c.get("/v1/video/generations").json()["data"] == []
    assert "unhandled error" not in strict.log()


@pytest.mark.timeout(60)
def test_a_body_sent_in_time_in_pieces_is_served(strict):
    body = json.dumps({"model": "jisudance2.0-480p", "prompt": "in pieces"}).encode()
    sock = connect(strict)
    try:
        head = f"POST /v1/video/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode())
        for i in range(0, len(body), 8):
            sock.sendall(body[i : i + 8])
        data = sock.recv(65536)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
