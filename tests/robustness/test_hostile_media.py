"""A corpus of hostile media, made by the tests, sent through HTTP to a live server.

Every case must be answered with a 400 that names the field and says what is wrong, within a
bounded time (the pytest timeout below, and the server's short fetch deadlines), and must leave
nothing behind: no task, no stored input, no partial write, no temporary file (the server runs
with its own TMPDIR, which is checked too).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import av
import pytest
from PIL import Image

from opendance.testing import media
from opendance.testing.server import LiveServer

M = "jisudance2.0-480p"
PNG = media.image_bytes(320, 240)
CAP = 2 * 1024 * 1024  # the hostile server's byte cap for images


# -- the corpus ------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A real 1-bit PNG of ``width`` x ``height`` zeros: ~50 kB on the wire, 50 MB decoded."""
    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def big_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def gif_js_polyglot() -> bytes:
    """The classic GIF/JavaScript polyglot: ``GIF89a/*`` (the width bytes open a JS comment),
    a GIF comment block that closes it and runs script, then a real image. As a GIF its
    logical screen is 0x2a2f = 10799 px wide."""
    buf = io.BytesIO()
    Image.new("P", (64, 64), 1).save(buf, "GIF")
    gif = buf.getvalue()
    flags = gif[10]
    start = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    script = b"*/=1;alert(document.domain)//"
    comment = b"\x21\xfe" + bytes([len(script)]) + script + b"\x00"
    return b"GIF89a/*" + gif[8:start] + comment + gif[start:]


def lie_about_duration(mp4: bytes, seconds: float) -> bytes:
    """Rewrite the movie, track and media headers (mvhd, tkhd, mdhd, version 0) and the edit
    list so that the container claims ``seconds``; the packets stay as they are."""
    data = bytearray(mp4)

    def boxes(kind: bytes):
        i = 0
        while (i := data.find(kind, i + 1)) != -1:
            yield i - 4

    movie_scale = 1000
    for at in boxes(b"mvhd"):
        movie_scale = struct.unpack_from(">I", data, at + 20)[0]
        struct.pack_into(">I", data, at + 24, int(seconds * movie_scale))
    for at in boxes(b"tkhd"):
        struct.pack_into(">I", data, at + 28, int(seconds * movie_scale))
    for at in boxes(b"mdhd"):
        scale = struct.unpack_from(">I", data, at + 20)[0]
        struct.pack_into(">I", data, at + 24, int(seconds * scale))
    for at in boxes(b"elst"):
        for k in range(struct.unpack_from(">I", data, at + 12)[0]):
            struct.pack_into(">I", data, at + 16 + k * 12, int(seconds * movie_scale))
    return bytes(data)


def lying_video() -> bytes:
    lied = lie_about_duration(media.video_bytes(17.0, fps=8), 5.0)
    with av.open(io.BytesIO(lied)) as container:  # the lie works: FFmpeg's header reading says 5 s
        assert abs(container.duration / 1e6 - 5.0) < 0.1
    return lied


def hls_playlist(target: str) -> bytes:
    """An HLS playlist served as an MP4: FFmpeg would follow ``target`` if it were let open it."""
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{target}\n#EXT-X-ENDLIST\n".encode()


@dataclass
class Case:
    id: str
    field: str  # image, images, videos, audios
    make: Callable  # (host) -> URL or data: URI
    param: str
    code: str
    says: str  # a fragment the message must contain

    def body(self, source: str) -> dict:
        if self.field == "image":
            return {"model": M, "prompt": "x", "image": source}
        return {"model": M, "prompt": "x", self.field: [source]}


CASES = [
    Case(
        "decompression-bomb-png",
        "image",
        lambda h: h.add("/bomb.png", png_bomb(20000, 20000), "image/png"),
        "image",
        "invalid_image_dimensions",
        "decompression bomb",
    ),
    Case(
        "pixel-flood-png",
        "images",
        lambda h: h.add("/flood.png", png_bomb(10000, 10000), "image/png"),
        "images[0]",
        "invalid_image_dimensions",
        "10000x10000 px, too large to decode safely",
    ),
    Case(
        "huge-dimensions",
        "image",
        lambda h: h.add("/huge.png", big_png(7000, 3000), "image/png"),
        "image",
        "invalid_image_dimensions",
        "7000x3000 px; width and height must be 64-6000",
    ),
    Case(
        "huge-video-dimensions",
        "videos",
        lambda h: h.add("/wide.mp4", media.video_bytes(2.5, 8448, 64, fps=4), "video/mp4"),
        "videos[0]",
        "invalid_video_dimensions",
        "8448x64 px; width and height must be 64-6000 px",
    ),
    Case(
        "extreme-shape-video",
        "videos",
        lambda h: h.add("/strip.mp4", media.video_bytes(5.0, 8192, 16, fps=24), "video/mp4"),
        "videos[0]",
        "invalid_video_dimensions",
        "8192x16 px; width and height must be 64-6000 px",
    ),
    Case(
        "truncated-jpeg",
        "image",
        lambda h: h.add("/cut.jpg", media.image_bytes(640, 480, "JPEG")[:3000], "image/jpeg"),
        "image",
        "invalid_media",
        "not a decodable image",
    ),
    Case(
        "video-without-video-stream",
        "videos",
        lambda h: h.add("/sound.mp4", media.audio_bytes(3.0, "m4a"), "video/mp4"),
        "videos[0]",
        "invalid_media",
        "has no video stream",
    ),
    Case(
        "header-lies-about-duration",
        "videos",
        lambda h: h.add("/lies.mp4", lying_video(), "video/mp4"),
        "videos[0]",
        "invalid_media_duration",
        "videos[0] is 17 s long; each reference video must be 2-15 s",
    ),
    Case(
        "gif-js-polyglot",
        "image",
        lambda h: h.add("/poly.gif", gif_js_polyglot(), "image/gif"),
        "image",
        "invalid_image_dimensions",
        "10799x64 px",
    ),
    Case(
        "hls-playlist-posing-as-mp4",
        "videos",
        lambda h: h.add("/list.mp4", hls_playlist(h.url("/secret.ts")), "video/mp4"),
        "videos[0]",
        "invalid_media",
        "does not open as a video",
    ),
    Case(
        "zero-bytes-image",
        "image",
        lambda h: h.add("/empty.png", b"", "image/png"),
        "image",
        "invalid_media",
        "not a decodable image",
    ),
    Case(
        "zero-bytes-video",
        "videos",
        lambda h: h.add("/empty.mp4", b"", "video/mp4"),
        "videos[0]",
        "invalid_media",
        "videos[0] is empty",
    ),
    Case("zero-bytes-data-uri", "image", lambda h: "data:image/png;base64,", "image", "invalid_media", "not a decodable image"),
    Case(
        "mp4-labelled-image-png",
        "image",
        lambda h: h.add("/clip.png", media.video_bytes(2.5), "image/png"),
        "image",
        "invalid_media",
        "not a decodable image",
    ),
    Case(
        "png-labelled-video-mp4",
        "videos",
        lambda h: h.add("/still.mp4", PNG, "video/mp4"),
        "videos[0]",
        "invalid_media",
        "does not open as a video",
    ),
    Case(
        "html-labelled-image-png",
        "images",
        lambda h: h.add("/page.png", b"<html><script>alert(1)</script></html>", "image/png"),
        "images[0]",
        "invalid_media",
        "not a decodable image",
    ),
    Case(
        "slow-upstream-read-deadline",
        "image",
        lambda h: h.stall("/stall.png", PNG[:100]),
        "image",
        "media_fetch_failed",
        "sent nothing for 1 s",
    ),
    Case(
        "trickling-upstream-total-deadline",
        "image",
        lambda h: h.trickle("/trickle.png"),
        "image",
        "media_fetch_failed",
        "took longer than 4 s",
    ),
    Case(
        "endless-chunked-response", "image", lambda h: h.endless("/endless.png"), "image", "media_too_large", "larger than 2 MiB"
    ),
    Case(
        "content-length-over-cap",
        "image",
        lambda h: h.add("/big.bin", b"\0" * (CAP + 1), "image/png"),
        "image",
        "media_too_large",
        "larger than 2 MiB",
    ),
    Case(
        "gzip-bomb-despite-identity",
        "image",
        lambda h: h.gzip_bomb("/bomb.gz", 16 * CAP),
        "image",
        "media_too_large",
        "larger than 2 MiB",
    ),
    Case(
        "data-uri-over-cap",
        "image",
        lambda h: media.data_uri(b"\0" * (CAP + 3), "image/png"),
        "image",
        "media_too_large",
        "larger than 2 MiB",
    ),
    Case(
        "redirect-loop",
        "image",
        lambda h: (h.redirect("/loop-b", "/loop-a"), h.redirect("/loop-a", "/loop-b"))[1],
        "image",
        "too_many_redirects",
        "redirect loop",
    ),
    Case(
        "redirect-to-metadata-service",
        "image",
        lambda h: h.redirect("/meta", "http://169.254.169.254/latest/meta-data/"),
        "image",
        "url_not_allowed",
        "link-local address",
    ),
    Case(
        "upstream-error-status",
        "image",
        lambda h: h.add("/gone.png", b"gone", "text/plain", status=500),
        "image",
        "media_fetch_failed",
        "HTTP 500",
    ),
]


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    """Short deadlines and a 2 MiB image cap; its own TMPDIR, so stray temp files can be seen."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "tmp").mkdir()
    env = {
        "OPENDANCE_ALLOW_HOSTS": "127.0.0.1",
        "OPENDANCE_FETCH_CONNECT_TIMEOUT": "2",
        "OPENDANCE_FETCH_READ_TIMEOUT": "1",
        "OPENDANCE_FETCH_TOTAL_TIMEOUT": "4",
        "OPENDANCE_IMAGE_MAX_BYTES": str(CAP),
        "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0",
        "TMPDIR": str(root / "tmp"),
    }
    with LiveServer(root / "data", env=env) as server:
        server.tmpdir = root / "tmp"
        yield server


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_media_is_refused(case, hostile_server, hostile_host, find_leftovers, error_body):
    source = case.make(hostile_host)
    with hostile_server.client() as c:
        r = c.post("/v1/video/generations", json=case.body(source))
        assert r.status_code == 400, r.text
        error = error_body(r)
        assert (error["param"], error["code"], error["type"]) == (case.param, case.code, "invalid_request_error"), error
        assert case.says in error["message"], error["message"]
        assert len(error["message"]) < 400 and "base64," not in error["message"]
        assert c.get("/v1/video/generations").json()["data"] == []  # no task was made
        assert c.get("/readyz").status_code == 200  # and the server is fine
    assert find_leftovers(hostile_server.data_dir, hostile_server.tmpdir) == []
    assert "/secret.ts" not in hostile_host.paths()  # the playlist's target was never fetched
