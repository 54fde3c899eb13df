"""Media rules found at create time through HTTP: decoding, sizes, durations, SSRF."""

from __future__ import annotations

import pytest

from opendance.testing import media

M = "jisudance2.0-480p"


def err(r, param: str, text: str, code: str | None = None) -> None:
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["param"] == param, e
    assert text.lower() in e["message"].lower(), e
    if code:
        assert e["code"] == code, e


def png(w: int, h: int) -> str:
    return media.data_uri(media.image_bytes(w, h), "image/png")


def test_image_too_small(client):
    err(client.post("/v1/video/generations", json={"model": M, "image": png(40, 40)}), "image", "64")


def test_image_aspect_out_of_range(client):
    err(client.post("/v1/video/generations", json={"model": M, "image": png(300, 100)}), "image", "aspect")


def test_image_not_an_image(client):
    bad = media.data_uri(b"GIF89a not really", "image/gif")
    err(client.post("/v1/video/generations", json={"model": M, "images": [png(100, 100), bad]}), "images[1]", "image")


def test_image_data_uri_not_base64(client):
    err(client.post("/v1/video/generations", json={"model": M, "image": "data:image/png,abc"}), "image", "base64")


def test_last_image_bad(client):
    body = {"model": M, "image": png(100, 100), "last_image": media.data_uri(b"", "image/png")}
    err(client.post("/v1/video/generations", json=body), "last_image", "image")


def test_video_too_short(client, media_host):
    url = media_host.add("/short.mp4", media.video_bytes(1.2), "video/mp4")
    body = {"model": M, "videos": [media_host.add("/ok.mp4", media.video_bytes(3.0), "video/mp4"), url]}
    r = client.post("/v1/video/generations", json=body)
    err(r, "videos[1]", "s long; each reference video must be 2-15 s")
    assert r.json()["error"]["message"].startswith("videos[1] is 1.2")


def test_videos_together_too_long(client, media_host):
    urls = [media_host.add(f"/v{i}.mp4", media.video_bytes(6.0, seed=i), "video/mp4") for i in range(3)]
    err(
        client.post("/v1/video/generations", json={"model": M, "videos": urls}),
        "videos",
        "videos are 18 s long together; together they must be at most 15 s",
    )


def test_video_without_video_stream(client, media_host):
    url = media_host.add("/sound.mp4", media.audio_bytes(3.0, "m4a"), "video/mp4")
    err(client.post("/v1/video/generations", json={"model": M, "videos": [url]}), "videos[0]", "video")


def test_audio_too_long(client, media_host):
    url = media_host.add("/long.wav", media.audio_bytes(16.0, "wav", sample_rate=8000), "audio/wav")
    body = {"model": M, "images": [png(100, 100)], "audios": [url]}
    err(client.post("/v1/video/generations", json=body), "audios[0]", "2-15 s")


def test_audios_together_too_long(client, media_host):
    urls = [media_host.add(f"/a{i}.mp3", media.audio_bytes(6.0, "mp3"), "audio/mpeg") for i in range(3)]
    body = {"model": M, "images": [png(100, 100)], "audios": urls}
    err(client.post("/v1/video/generations", json=body), "audios", "s long together; together they must be at most 15 s")


def test_audio_not_audio(client, media_host):
    url = media_host.add("/noise.wav", b"RIFF....WAVEfmt garbage", "audio/wav")
    body = {"model": M, "images": [png(100, 100)], "audios": [url]}
    err(client.post("/v1/video/generations", json=body), "audios[0]", "audio")


def test_fetch_404(client, media_host):
    err(client.post("/v1/video/generations", json={"model": M, "image": media_host.url + "/missing.png"}), "image", "404")


SSRF = [
    ("loopback ip", "http://127.0.0.1:8000/a.png"),
    ("private ip", "http://10.0.0.1/a.png"),
    ("metadata service", "http://169.254.169.254/latest/meta-data/"),
    ("ipv6 loopback", "http://[::1]:8000/a.png"),
    ("name resolving to loopback", "http://localhost:8000/a.png"),
]


@pytest.mark.parametrize("url", [u for _, u in SSRF], ids=[n for n, _ in SSRF])
def test_ssrf_refused_by_default(strict_server, url):
    with strict_server.client() as c:
        err(c.post("/v1/video/generations", json={"model": M, "image": url}), "image", "", "url_not_allowed")


def test_ssrf_file_scheme_refused(strict_server):
    with strict_server.client() as c:
        err(
            c.post("/v1/video/generations", json={"model": M, "images": ["file:///etc/passwd"]}),
            "images[0]",
            "file",
            "unsupported_url_scheme",
        )


def test_ssrf_redirect_to_loopback_refused(client, media_host):
    """The first hop is allow-listed (127.0.0.1); its redirect to another loopback address is not."""
    target = f"http://127.0.0.2:{media_host.port}/a.png"
    media_host.add("/a.png", media.image_bytes(), "image/png")
    url = media_host.redirect("/hop", target)
    err(client.post("/v1/video/generations", json={"model": M, "image": url}), "image", "", "url_not_allowed")
    assert not any(path == "/a.png" for _, path, _ in media_host.requests)


def test_allow_listed_host_is_fetched(client, media_host):
    url = media_host.add("/allowed.png", media.image_bytes(200, 200), "image/png")
    r = client.post("/v1/video/generations", json={"model": M, "image": url})
    assert r.status_code == 200, r.text
    assert r.json()["aspect_ratio"] == "1:1"
