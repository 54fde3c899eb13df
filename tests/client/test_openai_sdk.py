"""The official ``openai`` package (pinned in pyproject) against a live server: exactly what an
application written for OpenAI's Videos API does, pointed at opendance."""

from __future__ import annotations

import asyncio
import io

import openai
import pytest
from PIL import Image

from opendance.media.encode import probe_mp4
from opendance.testing.media import image_bytes


@pytest.fixture
def sdk(live):
    with openai.OpenAI(base_url=live.url + "/v1", api_key="anything", max_retries=0) as c:
        yield c


def test_strict_schema_validation_passes_for_openais_own_sizes(live):
    """The SDK's (private) strict mode validates every field against its models. It passes for
    OpenAI's sizes; our other sizes (480x864 ...) are reported as they are, which the SDK's
    default, lenient parsing accepts (the other tests)."""
    with openai.OpenAI(base_url=live.url + "/v1", api_key="x", _strict_response_validation=True, max_retries=0) as strict:
        video = strict.videos.create(prompt="strict", model="quick-720p", size="1280x720", seconds="8")
        done = strict.videos.poll(video.id, poll_interval_ms=100)
        assert (done.status, done.size, done.seconds) == ("completed", "1280x720", "8")
        assert strict.videos.list(limit=1).data[0].id == video.id  # one page: older videos have other sizes
        assert strict.videos.delete(video.id).deleted


def test_pinned_version():
    assert openai.__version__ == "3.54.0"


def test_create_poll_download_round_trip(sdk, tmp_path):
    video = sdk.videos.create(prompt="a lighthouse at dusk", model="jisudance2.0-480p", seconds="8", size="480x864")
    assert isinstance(video, openai.types.Video)
    assert video.object == "video" and video.status == "queued" and video.progress == 0
    assert (video.seconds, video.size, video.prompt, video.model) == ("8", "480x864", "a lighthouse at dusk", "jisudance2.0-480p")
    polled = sdk.videos.retrieve(video.id)
    assert polled.object == "video" and polled.id == video.id
    done = sdk.videos.poll(video.id)  # the SDK's own poll loop, paced by openai-poll-after-ms
    assert done.status == "completed" and done.progress == 100 and done.error is None
    assert done.completed_at is not None and done.completed_at >= done.created_at
    content = sdk.videos.download_content(video.id)
    content.write_to_file(tmp_path / "lighthouse.mp4")
    info = probe_mp4(tmp_path / "lighthouse.mp4")
    assert f"{info['width']}x{info['height']}" == done.size == "480x864"
    assert abs(info["duration"] - 8.0) <= 1 / info["fps"] + 1e-6
    thumb = Image.open(io.BytesIO(sdk.videos.download_content(video.id, variant="thumbnail").read()))
    assert thumb.format == "WEBP" and thumb.size == (480, 864)
    deleted = sdk.videos.delete(video.id)
    assert deleted.deleted and deleted.object == "video.deleted" and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(video.id)


def test_create_and_poll_with_an_uploaded_first_frame(sdk, live):
    upload = ("frame.png", image_bytes(300, 300, seed=9), "image/png")
    done = sdk.videos.create_and_poll(prompt="", model="quick-720p", input_reference=upload, size="960x960", poll_interval_ms=100)
    assert done.status == "completed" and done.size == "960x960" and done.seconds == "5"
    legacy = sdk.get(f"/video/generations/{done.id}", cast_to=object)
    assert legacy["mode"] == "image-to-video" and legacy["aspect_ratio"] == "1:1"
    # A file object works as well as a tuple; the SDK itself cannot send {"image_url": ...}
    # (its multipart encoder refuses a dict), which test_openai_routes sends as JSON instead.
    portrait = sdk.videos.create(
        prompt="", model="quick-480p", input_reference=io.BytesIO(image_bytes(200, 360, seed=2)), extra_body={"seed": 7}
    )
    assert portrait.size == "480x864"  # 9:16, nearest to the image's shape
    assert sdk.get(f"/video/generations/{portrait.id}", cast_to=object)["seed"] == 7  # an opendance extension


def test_seconds_4_is_made_as_5_and_the_object_says_so(sdk):
    video = sdk.videos.create(prompt="short", model="quick-480p", seconds="4")
    assert video.seconds == "5"


def test_errors_are_the_sdks_typed_errors_naming_the_field(sdk):
    with pytest.raises(openai.BadRequestError) as size:
        sdk.videos.create(prompt="x", size="1792x1024")
    assert size.value.status_code == 400 and size.value.body["param"] == "size" and size.value.code == "unsupported_size"
    with pytest.raises(openai.BadRequestError) as seconds:
        sdk.videos.create(prompt="x", model="quick-480p", seconds="12.5")  # type: ignore[arg-type]
    assert seconds.value.body["param"] == "seconds"
    with pytest.raises(openai.BadRequestError) as model:
        sdk.videos.create(prompt="x", model="sora-2")
    assert model.value.body["param"] == "model" and "jisudance2.0-480p" in model.value.message
    with pytest.raises(openai.BadRequestError) as bad_image:
        sdk.videos.create(prompt="x", model="quick-480p", input_reference=("x.png", b"not an image", "image/png"))
    assert bad_image.value.body["param"] == "input_reference"


def test_a_failed_video_reports_its_error(sdk):
    done = sdk.videos.create_and_poll(prompt="x", model="broken", poll_interval_ms=100)
    assert done.status == "failed" and done.error is not None
    assert done.error.code == "scenario_failure" and done.error.message
    with pytest.raises(openai.ConflictError):
        sdk.videos.download_content(done.id)


def test_list_auto_pagination(sdk):
    ids = [sdk.videos.create(prompt=f"sdk page {i}", model="pager").id for i in range(3)]
    first = sdk.videos.list(limit=2)
    assert [v.id for v in first.data] == ids[::-1][:2] and first.has_more
    everything = [v.id for v in sdk.videos.list(limit=2)]  # the SDK follows `after` itself
    assert everything[:3] == ids[::-1] and len(everything) == len(set(everything))
    oldest_first = [v.id for v in sdk.videos.list(limit=2, order="asc")]
    assert oldest_first == everything[::-1]
    assert all(v.object == "video" for v in sdk.videos.list(limit=100).data)


def test_async_sdk(live, tmp_path):
    async def main() -> bytes:
        async with openai.AsyncOpenAI(base_url=live.url + "/v1", api_key="x") as c:
            done = await c.videos.create_and_poll(prompt="async", model="quick-480p", poll_interval_ms=100)
            assert done.status == "completed"
            return (await c.videos.download_content(done.id)).read()

    (tmp_path / "a.mp4").write_bytes(asyncio.run(main()))
    assert probe_mp4(tmp_path / "a.mp4")["video_codec"] == "h264"


def test_keys_are_checked(keyed_server):
    with openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="k-alice", max_retries=0) as alice:
        video = alice.videos.create(prompt="alice's", model="jisudance2.0-480p")
        with openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="k-bob", max_retries=0) as bob:
            with pytest.raises(openai.NotFoundError):
                bob.videos.retrieve(video.id)
            assert video.id not in [v.id for v in bob.videos.list(limit=100).data]
        with openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="wrong", max_retries=0) as stranger:
            with pytest.raises(openai.AuthenticationError):
                stranger.videos.list()
        assert alice.videos.poll(video.id, poll_interval_ms=100).status == "completed"
