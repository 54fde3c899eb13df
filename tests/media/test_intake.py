"""intake_media: every item fetched or decoded and checked; the first bad item by field order wins."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest

from opendance.config import Settings
from opendance.engines.base import MediaRef
from opendance.errors import MediaError
from opendance.media.budget import MediaWork
from opendance.media.fetch import SafeFetcher
from opendance.media.intake import IntakeResult, MediaRequest, intake_media
from opendance.testing.media import audio_bytes, data_uri, image_bytes, video_bytes

PNG = data_uri(image_bytes(320, 240, "PNG"), "image/png")
JPEG = data_uri(image_bytes(200, 200, "JPEG", seed=1), "image/jpeg")
BROKEN = data_uri(b"GIF89a not really", "image/gif")


def intake(
    req: MediaRequest, settings: Settings | None = None, spooled: dict[str, bytes] | None = None, **fetcher_options: Any
) -> IntakeResult:
    """Run ``intake_media`` in a create's scope; the spooled bytes of each blob go to ``spooled``
    (read before the scope ends, which removes them: checked too)."""
    options: dict[str, Any] = dict(
        allow_hosts=["127.0.0.1"], connect_timeout=2.0, read_timeout=2.0, total_timeout=10.0, max_redirects=3
    )
    options.update(fetcher_options)
    settings = settings or Settings()

    async def main(spool: Path) -> IntakeResult:
        fetcher = SafeFetcher(**options)
        work = MediaWork(spool, threads=2, decode_bytes=256 << 20, inflight_bytes=1 << 30, wait=5.0)
        try:
            async with work.intake("owner", "task_x") as scope:
                result = await intake_media(req, fetcher=fetcher, settings=settings, key_prefix="inputs/task_x/", scope=scope)
                for blob in result.blobs:
                    assert blob.size == blob.path.stat().st_size
                    if spooled is not None:
                        spooled[blob.key] = blob.path.read_bytes()
            return result
        finally:
            assert list(work.spool_dir.iterdir()) == [] and work.inflight_budget.used == 0 and work.decode_budget.used == 0
            work.close()
            await fetcher.aclose()

    with tempfile.TemporaryDirectory() as spool:
        return asyncio.run(main(Path(spool)))


def refused(req: MediaRequest, settings: Settings | None = None, **options: Any) -> MediaError:
    with pytest.raises(MediaError) as info:
        intake(req, settings, None, **options)
    assert info.value.status == 400
    return info.value


def test_first_and_last_frame_from_data_uris():
    spooled: dict[str, bytes] = {}
    result = intake(MediaRequest(image=PNG, last_image=JPEG), spooled=spooled)
    assert result.image == MediaRef("inputs/task_x/image.png", "image", 320, 240, format="png")
    assert result.last_image == MediaRef("inputs/task_x/last_image.jpg", "image", 200, 200, format="jpeg")
    assert [(b.key, b.content_type) for b in result.blobs] == [
        ("inputs/task_x/image.png", "image/png"),
        ("inputs/task_x/last_image.jpg", "image/jpeg"),
    ]
    assert spooled["inputs/task_x/image.png"] == image_bytes(320, 240, "PNG")
    assert result.input_bytes == sum(len(data) for data in spooled.values())
    assert (result.images, result.videos, result.audios) == ([], [], [])


def test_references_from_urls(upstream):
    urls = {
        "images": [upstream.add("/a.webp", image_bytes(300, 200, "WEBP")), JPEG],
        "videos": [upstream.add("/v.mov", video_bytes(3.0, container="mov", with_audio=True))],
        "audios": [upstream.add("/s", audio_bytes(2.5, "mp3"))],  # no extension: the bytes decide
    }
    result = intake(MediaRequest(**urls))
    assert [r.key for r in result.images] == ["inputs/task_x/images_0.webp", "inputs/task_x/images_1.jpg"]
    (video,) = result.videos
    assert (video.key, video.kind, video.format, video.width, video.height, video.has_audio) == (
        "inputs/task_x/videos_0.mov",
        "video",
        "mov",
        160,
        96,
        True,
    )
    assert video.duration == pytest.approx(3.0, abs=0.01)
    (audio,) = result.audios
    assert (audio.key, audio.kind, audio.format) == ("inputs/task_x/audios_0.mp3", "audio", "mp3")
    assert [b.content_type for b in result.blobs] == ["image/webp", "image/jpeg", "video/quicktime", "audio/mpeg"]
    assert {r["path"] for r in upstream.requests} == {"/a.webp", "/v.mov", "/s"}


def test_extension_and_type_come_from_the_bytes_not_the_label():
    result = intake(MediaRequest(images=[data_uri(image_bytes(100, 100, "PNG"), "image/jpeg")]))
    assert (result.blobs[0].key, result.blobs[0].content_type) == ("inputs/task_x/images_0.png", "image/png")


def test_video_too_short():
    req = MediaRequest(videos=[data_uri(video_bytes(3.0), "video/mp4"), data_uri(video_bytes(1.2), "video/mp4")])
    err = refused(req)
    assert (err.param, err.code) == ("videos[1]", "invalid_media_duration")
    assert err.message == "videos[1] is 1.2 s long; each reference video must be 2-15 s"


def test_audio_too_long():
    err = refused(MediaRequest(audios=[data_uri(audio_bytes(16.0, "wav", sample_rate=8000), "audio/wav")]))
    assert err.param == "audios[0]" and err.message == "audios[0] is 16 s long; each reference audio must be 2-15 s"


def test_a_full_15_s_aac_is_within_the_limit():
    # Measured 15.10 s (priming and padding to whole 64 ms AAC frames): still "15 s".
    result = intake(MediaRequest(audios=[data_uri(audio_bytes(15.0, "aac", sample_rate=16000), "audio/aac")]))
    assert 15.05 < result.audios[0].duration < 15.15


def test_videos_together_too_long():
    videos = [data_uri(video_bytes(6.0, seed=i, width=64, height=64, fps=8), "video/mp4") for i in range(3)]
    err = refused(MediaRequest(videos=videos))
    assert (err.param, err.code) == ("videos", "invalid_media_duration")
    assert err.message == "the reference videos are 18 s long together; together they must be at most 15 s"


def test_audios_together_too_long():
    audios = [data_uri(audio_bytes(6.0, "wav", sample_rate=8000), "audio/wav") for _ in range(3)]
    err = refused(MediaRequest(images=[PNG], audios=audios))
    assert err.param == "audios" and "18 s long together" in err.message


def test_first_bad_item_by_field_order_wins():
    short = data_uri(video_bytes(1.0), "video/mp4")
    req = MediaRequest(images=[PNG, BROKEN, BROKEN], videos=[short], audios=["file:///etc/passwd"])
    assert refused(req).param == "images[1]"
    req = MediaRequest(image=BROKEN, last_image=BROKEN, images=[BROKEN])
    assert refused(req).param == "image"


def test_a_videos_total_is_reported_before_a_bad_audio():
    videos = [data_uri(video_bytes(8.0, seed=i, width=64, height=64, fps=8), "video/mp4") for i in range(2)]
    err = refused(MediaRequest(videos=videos, audios=[data_uri(b"noise", "audio/wav")]))
    assert err.param == "videos"


@pytest.mark.timeout(30)
def test_a_slow_earlier_failure_still_wins(upstream):
    """images[0] fails late (a read timeout); images[1] fails at once. images[0] is reported."""
    slow = upstream.stall("/slow.png", after=b"\x89PNG")
    err = refused(MediaRequest(images=[slow, BROKEN]), read_timeout=0.5)
    assert (err.param, err.code) == ("images[0]", "media_fetch_failed")


@pytest.mark.timeout(30)
def test_a_failure_cancels_the_downloads_after_it(upstream):
    """images[0] is bad at once; images[1] would stall for 60 s: intake answers without waiting."""
    slow = upstream.stall("/slow.png", after=b"\x89PNG")
    err = refused(MediaRequest(images=[BROKEN, slow]), read_timeout=60.0, total_timeout=120.0)
    assert err.param == "images[0]"


def test_per_kind_byte_caps_from_settings(upstream):
    settings = Settings(image_max_bytes=1000, video_max_bytes=2000, audio_max_bytes=3000)
    err = refused(MediaRequest(image=PNG), settings)
    assert (err.param, err.code, err.message) == ("image", "media_too_large", "image is larger than 1000 bytes")
    url = upstream.add("/v.mp4", video_bytes(3.0))
    assert refused(MediaRequest(videos=[url]), settings).message == "videos[0] is larger than 2000 bytes"
    err = refused(
        MediaRequest(images=[PNG], audios=[data_uri(audio_bytes(3.0, "wav"), "audio/wav")]), Settings(audio_max_bytes=3000)
    )
    assert (err.param, err.code) == ("audios[0]", "media_too_large")


def test_ssrf_refusal_names_the_item(upstream):
    url = upstream.add("/a.png", image_bytes())
    err = refused(MediaRequest(images=[PNG, url]), allow_hosts=[])
    assert (err.param, err.code) == ("images[1]", "url_not_allowed")
    assert upstream.requests == []


def test_wrong_kinds_name_the_item():
    err = refused(MediaRequest(images=[PNG], videos=[data_uri(audio_bytes(3.0, "m4a"), "video/mp4")]))
    assert err.param == "videos[0]" and "no video stream" in err.message
    err = refused(MediaRequest(images=[PNG], audios=[PNG]))
    assert err.param == "audios[0]" and "does not open as an audio file" in err.message
    err = refused(MediaRequest(image="data:image/png,notbase64"))
    assert (err.param, err.code) == ("image", "invalid_data_uri")
