"""The official ``volcengine-ark-runtime`` SDK (pinned in pyproject) against a live server: what
an application written for Seedance on BytePlus ModelArk / Volcengine Ark does, pointed at
opendance's ``/api/v3``."""

from __future__ import annotations

import json
import time
from importlib.metadata import version

import httpx
import pytest
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import (
    ArkAuthenticationError,
    ArkBadRequestError,
    ArkNotFoundError,
)

from opendance.media.encode import probe_mp4
from opendance.testing.media import audio_bytes, data_uri, image_bytes, video_bytes
from opendance.testing.server import LiveServer

KEY = "ark-test-key"
MODELS = """
[models."seedance-480p"]
resolution = "480p"
fps = 8
[models."seedance-480p".default]
engine = "scenario"
steps = 2
step_seconds = 0.02

[models."seedance-720p"]
resolution = "720p"
fps = 8
[models."seedance-720p".default]
engine = "scenario"
steps = 2
step_seconds = 0.02

[models."seedance-preview"]
resolution = "480p"
fps = 8
[models."seedance-preview".default]
engine = "preview"

[models."busy"]
resolution = "480p"
fps = 8
[models."busy".default]
engine = "scenario"
steps = 400
step_seconds = 0.05
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ark-sdk")
    (root / "models.toml").write_text(MODELS)
    # One cpu slot: the flex test needs a task that really waits in the queue behind another.
    env = {
        "OPENDANCE_API_KEYS": KEY,
        "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0",
        "OPENDANCE_ALLOW_HOSTS": "127.0.0.1",
        "OPENDANCE_CPU_SLOTS": "1",
    }
    with LiveServer(root / "data", env=env, config=root / "models.toml") as s:
        yield s


@pytest.fixture(scope="module")
def ark(server):
    client = Ark(base_url=server.url + "/api/v3", api_key=KEY, max_retries=0)
    yield client
    client.close()


def wait(ark: Ark, task_id: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        task = ark.content_generation.tasks.get(task_id=task_id)
        if task.status not in ("queued", "running"):
            return task
        assert time.monotonic() < deadline, f"{task_id} still {task.status}"
        time.sleep(0.1)


def download(url: str, path) -> dict:
    r = httpx.get(url, timeout=60.0)  # no key: video_url is a signed link
    assert r.status_code == 200, r.text
    path.write_bytes(r.content)
    return probe_mp4(path)


def test_the_documented_create_body_is_self_contained(server):
    """The create body's schema is written out in the OpenAPI document (a pointer into
    pydantic's $defs made ReDoc fail on the whole document)."""
    document = httpx.get(server.url + "/openapi.json").json()
    body = document["paths"]["/api/v3/contents/generations/tasks"]["post"]["requestBody"]["content"]["application/json"]
    assert "$defs" not in json.dumps(document)
    assert body["schema"]["properties"]["content"]["items"]["properties"]["role"]


def test_pinned_version():
    assert version("volcengine-ark-runtime") == "5.0.54"


def test_text_to_video_round_trip(ark, server, tmp_path):
    created = ark.content_generation.tasks.create(
        model="seedance-720p",
        content=[{"type": "text", "text": "a lighthouse at dusk"}],
        ratio="9:16",
        duration=6,
        seed=11,
        watermark=False,
    )
    assert created.id.startswith("task_")
    task = wait(ark, created.id)
    assert task.status == "succeeded" and task.error is None
    assert (task.model, task.resolution, task.ratio, task.duration, task.framespersecond, task.seed) == (
        "seedance-720p",
        "720p",
        "9:16",
        6,
        8,
        11,
    )
    assert task.service_tier == "default" and task.execution_expires_after == 172800 and task.generate_audio is True
    assert task.usage.completion_tokens == 720 * 1280 * 8 * 6 // 1024  # docs/ark.md: Ark's token count
    assert task.updated_at >= task.created_at
    info = download(task.content.video_url, tmp_path / "t2v.mp4")
    assert (info["width"], info["height"]) == (720, 1280)
    assert abs(info["duration"] - 6.0) <= 1 / info["fps"] + 1e-6
    # The same task through the legacy route: one task, two shapes.
    with server.client(KEY) as c:
        legacy = c.get(f"/v1/video/generations/{task.id}").json()
    assert legacy["status"] == "completed" and legacy["mode"] == "text-to-video"


def test_first_frame_from_a_data_uri_and_adaptive_ratio(ark, tmp_path):
    frame = data_uri(image_bytes(300, 300, seed=3), "image/png")
    created = ark.content_generation.tasks.create(
        model="seedance-480p",
        content=[{"type": "text", "text": "the square comes alive"}, {"type": "image_url", "image_url": {"url": frame}}],
        ratio="adaptive",
        duration=-1,
        return_last_frame=True,
    )
    task = wait(ark, created.id)
    assert task.status == "succeeded" and task.ratio == "1:1" and task.duration == 5  # -1: the default length
    info = download(task.content.video_url, tmp_path / "i2v.mp4")
    assert (info["width"], info["height"]) == (640, 640)
    assert abs(info["duration"] - 5.0) <= 1 / info["fps"] + 1e-6
    png = httpx.get(task.content.last_frame_url, timeout=60.0)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_first_and_last_frame(ark, server):
    first, last = (data_uri(image_bytes(320, 180, seed=s), "image/png") for s in (1, 2))
    created = ark.content_generation.tasks.create(
        model="seedance-480p",
        content=[
            {"type": "image_url", "image_url": {"url": first}, "role": "first_frame"},
            {"type": "image_url", "image_url": {"url": last}, "role": "last_frame"},
        ],
    )
    task = wait(ark, created.id)
    assert task.status == "succeeded" and task.ratio == "16:9"
    with server.client(KEY) as c:
        assert c.get(f"/v1/video/generations/{task.id}").json()["mode"] == "first-and-last-frame"


def test_references_with_audio(ark, server, tmp_path):
    content = [
        {"type": "text", "text": "a montage"},
        {
            "type": "image_url",
            "image_url": {"url": data_uri(image_bytes(200, 360, seed=4), "image/png")},
            "role": "reference_image",
        },
        {"type": "video_url", "video_url": {"url": data_uri(video_bytes(3, 160, 90), "video/mp4")}, "role": "reference_video"},
        {"type": "audio_url", "audio_url": {"url": data_uri(audio_bytes(4), "audio/wav")}, "role": "reference_audio"},
    ]
    created = ark.content_generation.tasks.create(model="seedance-preview", content=content, generate_audio=False, duration=5)
    task = wait(ark, created.id)
    assert task.status == "succeeded", task.error
    assert task.ratio == "9:16" and task.generate_audio is False
    info = download(task.content.video_url, tmp_path / "omni.mp4")
    assert (info["width"], info["height"]) == (480, 864)
    assert abs(info["duration"] - 5.0) <= 1 / info["fps"] + 1e-6
    assert info["audio_codec"] == "aac" and abs(info["audio_duration"] - 5.0) < 0.1  # the reference audio, mixed in
    with server.client(KEY) as c:
        assert c.get(f"/v1/video/generations/{task.id}").json()["mode"] == "omni-reference"


def test_list_with_filters_and_delete(ark):
    tasks = ark.content_generation.tasks
    made = [
        tasks.create(model=m, content=[{"type": "text", "text": f"list {i}"}]).id
        for i, m in enumerate(["seedance-480p", "seedance-720p", "seedance-480p"])
    ]
    for task_id in made:
        wait(ark, task_id)
    page = tasks.list(task_ids=made, page_size=10)
    assert page.total == 3 and [t.id for t in page.items] == made[::-1]  # newest first
    only = tasks.list(task_ids=made, model="seedance-480p", status="succeeded")
    assert only.total == 2 and {t.id for t in only.items} == {made[0], made[2]}
    paged = tasks.list(task_ids=made, page_num=2, page_size=2)
    assert paged.total == 3 and [t.id for t in paged.items] == [made[0]]
    assert tasks.list(task_ids=made, status="failed").total == 0
    assert tasks.list(task_ids=made, service_tier="flex").total == 0
    tasks.delete(made[1])  # a finished task: deleted
    with pytest.raises(ArkNotFoundError) as err:
        tasks.get(task_id=made[1])
    assert err.value.code == "ResourceNotFound" and made[1] in err.value.body["message"]
    assert tasks.list(task_ids=made).total == 2


def test_bad_requests_are_the_sdks_own_errors_with_our_message(ark):
    tasks = ark.content_generation.tasks
    with pytest.raises(ArkBadRequestError) as err:
        tasks.create(model="seedance-480p", content=[{"type": "text", "text": "x"}], duration=3)
    e = err.value
    assert (e.status_code, e.code, e.param, e.type) == (400, "InvalidParameter", "duration", "BadRequest")
    assert e.body["message"] == "duration must be between 5 and 15 seconds; got 3" and e.body["message"] in e.message
    cases = [
        (dict(draft=True), "draft", "draft videos are not made here"),
        (dict(frames=121), "frames", "give duration"),
        (dict(tools=[{"type": "web_search"}]), "tools", "not supported"),
        (dict(resolution="1080p"), "resolution", "makes 480p videos"),
        (dict(ratio="21:9"), "ratio", "ratio must be one of 16:9, 1:1, 9:16, adaptive"),
        (dict(seed=-2), "seed", "seed must be between -1"),
        (dict(service_tier="batch"), "service_tier", "service_tier must be one of default, flex"),
        (dict(execution_expires_after=0), "execution_expires_after", "execution_expires_after must be between 1"),
    ]
    for extra, param, words in cases:
        with pytest.raises(ArkBadRequestError) as err:
            tasks.create(model="seedance-480p", content=[{"type": "text", "text": "x"}], **extra)
        assert err.value.param == param and words in err.value.body["message"], (extra, err.value.body)
    content_cases = [
        ([{"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}], "content[0].image_url.url", "scheme 'ftp'"),
        (
            [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
            "content[0].image_url.url",
            "is not a decodable image",
        ),
        ([{"type": "image_url", "image_url": {"url": "https://10.0.0.1/a.png"}}], "content[0].image_url.url", ""),
        (
            [{"type": "image_url", "image_url": {"url": "https://a/b.png"}, "role": "last_frame"}],
            "content[0]",
            "needs a first_frame",
        ),
        (
            [
                {"type": "image_url", "image_url": {"url": "https://a/b.png"}},
                {"type": "image_url", "image_url": {"url": "https://a/c.png"}, "role": "reference_image"},
            ],
            "content[1]",
            "cannot be combined",
        ),
        (
            [
                {"type": "text", "text": "x"},
                {"type": "audio_url", "audio_url": {"url": "https://a/b.wav"}, "role": "reference_audio"},
            ],
            "content[1]",
            "audio alone is not a mode",
        ),
        (
            [{"type": "video_url", "video_url": {"url": "https://a/b.mp4"}, "role": "first_frame"}],
            "content[0].role",
            "reference_video",
        ),
        ([{"type": "draft_task", "draft_task": {"id": "x"}}], "content[0].type", "draft_task"),
        ([{"type": {}, "text": "x"}], "content[0].type", "got {}"),  # found by the schema fuzzing: once a 500
        ([], "content", "non-empty"),
        (
            [{"type": "image_url", "image_url": {"url": "https://a/b.png"}, "role": "reference_image"}] * 10,
            "content",
            "1 to 9 reference_image items; got 10",
        ),
    ]
    for content, param, words in content_cases:
        with pytest.raises(ArkBadRequestError) as err:
            tasks.create(model="seedance-480p", content=content)
        assert err.value.param == param and words in err.value.body["message"], (content, err.value.body)
    with pytest.raises(ArkBadRequestError) as err:
        tasks.create(model="no-such-model", content=[{"type": "text", "text": "x"}])
    assert err.value.code == "InvalidEndpointOrModel.NotFound" and "no-such-model" in err.value.body["message"]
    with pytest.raises(ArkBadRequestError) as err:
        tasks.create(model="seedance-480p", content=None)
    assert err.value.code == "MissingParameter" and err.value.param == "content"
    with pytest.raises(ArkBadRequestError) as err:
        tasks.list(page_size=501)
    assert err.value.param == "page_size"
    with pytest.raises(ArkBadRequestError) as err:
        tasks.list(task_ids=["task_" + "a" * 32, "-2.8e16"])
    assert err.value.param == "filter.task_ids[1]"
    assert tasks.list(task_ids=["task_" + "a" * 32]).total == 0


def test_callbacks_carry_the_ark_task(ark, media_host):
    """An app written for Ark parses its callbacks as Ark tasks: a task made through /api/v3
    gets those, one per status change."""
    created = ark.content_generation.tasks.create(
        model="seedance-480p", content=[{"type": "text", "text": "call me"}], callback_url=media_host.url + "/ark-hook"
    )
    assert wait(ark, created.id).status == "succeeded"
    deadline = time.monotonic() + 20
    while True:
        posts = [json.loads(b) for p, b in media_host.posts if p == "/ark-hook" and json.loads(b)["id"] == created.id]
        if posts and posts[-1]["status"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [p["status"] for p in posts] == ["queued", "running", "succeeded"]
    assert posts[-1]["content"]["video_url"] and posts[-1]["usage"]["completion_tokens"] > 0 and "raw_status" not in posts[-1]


def test_a_wrong_key_is_the_sdks_authentication_error(server):
    with Ark(base_url=server.url + "/api/v3", api_key="not-a-key", max_retries=0) as wrong:
        with pytest.raises(ArkAuthenticationError) as err:
            wrong.content_generation.tasks.list()
    assert (err.value.code, err.value.type, err.value.body["message"]) == (
        "AuthenticationError",
        "Unauthorized",
        "invalid API key",
    )


def test_flex_task_expires_while_queued(ark):
    tasks = ark.content_generation.tasks
    blocker = tasks.create(model="busy", content=[{"type": "text", "text": "holds the only worker"}]).id
    try:
        deadline = time.monotonic() + 60
        while tasks.get(task_id=blocker).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        flex = tasks.create(
            model="seedance-480p", content=[{"type": "text", "text": "cheap"}], service_tier="flex", execution_expires_after=2
        ).id
        assert tasks.get(task_id=flex).status == "queued"
        task = wait(ark, flex, timeout=30)
        assert task.status == "expired" and task.service_tier == "flex" and task.execution_expires_after == 2
        assert task.error.code == "expired" and "2 s" in task.error.message
        assert task.content is None and task.usage.completion_tokens == 0
        assert tasks.get(task_id=blocker).status == "running"  # the expiry stopped only the flex task
        assert tasks.list(task_ids=[flex], service_tier="flex", status="expired").total == 1
    finally:
        tasks.delete(blocker)  # running: cancelled
    assert tasks.get(task_id=blocker).status == "cancelled"
    tasks.delete(blocker)  # finished now: deleted
    with pytest.raises(ArkNotFoundError):
        tasks.get(task_id=blocker)
