"""Memory and storage per create, through HTTP against a real server: fetched media is spooled
to disk (not held in memory), the media bytes in flight have a budget (503 with Retry-After),
decoding has a memory budget counted from the headers, and each key has a cap on the bytes of
inputs its tasks store (429).

Memory is the API process's peak resident size (``VmHWM``, reset through ``clear_refs`` before
each case); everything else is counted (statuses, codes), never timed."""

from __future__ import annotations

import concurrent.futures
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from opendance.testing import media
from opendance.testing.server import LiveServer, wait_for_task
from opendance.testing.tasks import add_task

M = "jisudance2.0-480p"
MiB = 1024 * 1024


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := the current resident size


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def rgba_zeros_png(width: int, height: int) -> bytes:
    """A real 8-bit RGBA PNG of zeros: ~140 kB for 6000x6000, 144 MB once decoded."""
    row = b"\0" * (1 + 4 * width)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def noise_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(160, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    return buf.getvalue()


def post_all(server: LiveServer, bodies: list[dict], key: str | None = None) -> list:
    def post(body: dict):
        with server.client(key) as c:
            return c.post("/v1/video/generations", json=body)

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    env = {"OPENDANCE_ALLOW_HOSTS": "127.0.0.1", "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(tmp_path_factory.mktemp("spool"), env=env) as server:
        yield server


@pytest.mark.timeout(180)
def test_fetched_media_is_spooled_to_disk_not_held_in_memory(plain, make_host, find_leftovers):
    """Three creates at once, each fetching a 100 MiB video: the server's peak grows by far less
    than one of them (held in memory, they grew it by 300-600 MiB)."""
    host = make_host()
    urls = [host.add(f"/big{i}.mp4", b"\0" * (100 * MiB), "video/mp4") for i in range(3)]
    pid = plain.process.pid
    reset_peak(pid)
    before = resident_mib(pid)
    responses = post_all(plain, [{"model": M, "prompt": "x", "videos": [url]} for url in urls])
    grown = peak_mib(pid) - before
    assert [r.status_code for r in responses] == [400] * 3, [r.text for r in responses]
    assert {r.json()["error"]["param"] for r in responses} == {"videos[0]"}
    assert sum(1 for r in host.requests if r["path"].startswith("/big")) == 3  # each was fetched
    assert grown < 48, f"the server's peak memory grew by {grown:.0f} MiB"
    assert find_leftovers(plain.data_dir) == []  # the spool is empty again


@pytest.mark.timeout(120)
def test_media_bytes_past_the_budget_are_a_503_with_retry_after(tmp_path_factory, make_host):
    """A 3 MiB budget: two creates each fetching a 2.5 MiB image from a host that stalls. One holds
    its 2.5 MiB until the read deadline (a 400), the other cannot get its share (a 503), and once
    both are over a create goes through."""
    env = {
        "OPENDANCE_ALLOW_HOSTS": "127.0.0.1",
        "OPENDANCE_MEDIA_INFLIGHT_BYTES": str(3 * MiB),
        "OPENDANCE_MEDIA_WAIT": "1",
        "OPENDANCE_FETCH_READ_TIMEOUT": "4",
    }
    host = make_host()
    png = media.image_bytes(320, 240)
    stalls = [host.stall(f"/stall{i}.png", png[:100], length=5 * MiB // 2) for i in range(2)]
    with LiveServer(tmp_path_factory.mktemp("inflight"), env=env) as server:
        responses = post_all(server, [{"model": M, "prompt": "x", "image": url} for url in stalls])
        codes = sorted((r.status_code, r.json()["error"]["code"]) for r in responses)
        assert codes == [(400, "media_fetch_failed"), (503, "media_budget_exhausted")], [r.text for r in responses]
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["Retry-After"] == "5" and "in flight" in busy.json()["error"]["message"]
        with server.client() as c:
            ok = c.post("/v1/video/generations", json={"model": M, "prompt": "x", "image": media.data_uri(png, "image/png")})
            assert ok.status_code == 200, ok.text
            assert len(c.get("/v1/video/generations").json()["data"]) == 1  # refused creates left no task


@pytest.mark.timeout(180)
def test_decoding_holds_at_most_the_decode_budget(tmp_path_factory):
    """Nine tiny-compressed 6000x6000 RGBA PNGs (1.3 MB in all) in one create, with a budget of
    160 MiB and four media threads: one decode (137 MiB) at a time, so the peak grows by about
    one picture (decoded together, nine grew it by over a GB)."""
    env = {"OPENDANCE_DECODE_BUDGET_BYTES": str(160 * MiB), "OPENDANCE_MEDIA_THREADS": "4", "OPENDANCE_MEDIA_WAIT": "120"}
    uri = media.data_uri(rgba_zeros_png(6000, 6000), "image/png")
    # A bad video after the images: every image is decoded (in field order), then the create is refused.
    body = {"model": M, "prompt": "x", "images": [uri] * 9, "videos": [media.data_uri(b"not a video", "video/mp4")]}
    with LiveServer(tmp_path_factory.mktemp("decode"), env=env) as server:
        pid = server.process.pid
        reset_peak(pid)
        before = resident_mib(pid)
        with server.client() as c:
            r = c.post("/v1/video/generations", json=body)
        grown = peak_mib(pid) - before
    assert r.status_code == 400 and r.json()["error"]["param"] == "videos[0]", r.text
    assert grown < 2.2 * 137, f"the server's peak memory grew by {grown:.0f} MiB"


@pytest.mark.timeout(180)
def test_stored_inputs_per_key_are_capped(tmp_path_factory):
    """A cap of two and a half images: key A's third create is a 429 until it deletes a task;
    key B is not affected."""
    images = [noise_png(i) for i in range(4)]
    size = max(len(image) for image in images)
    env = {
        "OPENDANCE_API_KEYS": "k-a,k-b",
        "OPENDANCE_MAX_INPUT_BYTES_PER_KEY": str(size * 5 // 2),
        "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0",
    }

    def body(i: int) -> dict:
        return {"model": M, "prompt": "x", "image": media.data_uri(images[i], "image/png")}

    with LiveServer(tmp_path_factory.mktemp("quota"), env=env) as server, server.client("k-a") as a, server.client("k-b") as b:
        first = a.post("/v1/video/generations", json=body(0))
        assert first.status_code == 200, first.text
        assert a.post("/v1/video/generations", json=body(1)).status_code == 200
        refused = a.post("/v1/video/generations", json=body(2))
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == ("input_storage_quota_exceeded", "rate_limit_error")
        assert "delete finished tasks" in error["message"]
        assert a.post("/v1/video/generations", json={"model": M, "prompt": "text needs no storage"}).status_code == 200
        assert b.post("/v1/video/generations", json=body(2)).status_code == 200  # B's own cap
        wait_for_task(a, first.json()["id"])
        assert a.delete(f"/v1/video/generations/{first.json()['id']}").status_code == 200
        again = a.post("/v1/video/generations", json=body(3))
        assert again.status_code == 200, again.text


def test_the_store_sums_a_keys_stored_input_bytes(tmp_path):
    """Tasks made before input bytes were recorded count 0; sums pass 2**31 (a cast, not INTEGER)."""
    from opendance.store.migrate import upgrade
    from opendance.store.repo import TaskStore

    store = TaskStore.from_url(f"sqlite:///{tmp_path / 'tasks.db'}")
    upgrade(store.engine)
    for i, (owner, job) in enumerate(
        [("a", {"input_bytes": 3 << 30}), ("a", {"input_bytes": 1 << 30}), ("a", {}), ("b", {"input_bytes": 7})]
    ):
        add_task(store, id=f"task_{i}", owner=owner, engine="preview", job=job)
    assert (store.stored_input_bytes("a"), store.stored_input_bytes("b"), store.stored_input_bytes("c")) == (4 << 30, 7, 0)
    store.close()
