"""The relay engine's ``ark`` protocol against ``opendance.testing.ark.FakeArk``: a stand-in for
BytePlus ModelArk / Volcengine Ark's content-generation task API on 127.0.0.1 (the real one is on
the internet), strict about the request shape."""

from __future__ import annotations

import numpy as np
import pytest

from opendance.domain import Mode
from opendance.engines.base import Inputs, Job, StepContext
from opendance.engines.relay import RelayEngine
from opendance.errors import Cancelled, EngineError
from opendance.testing import media
from opendance.testing.ark import FakeArk

KEY, KEY_ENV = "ark-key", "OPENDANCE_TEST_ARK_KEY"


@pytest.fixture
def ark():
    with FakeArk(KEY, polls_to_finish=3) as server:
        yield server


@pytest.fixture
def relay(ark, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    made = []

    def make(model: str = "doubao-seedance-2-0-260128") -> RelayEngine:
        made.append(
            RelayEngine(
                dict(
                    engine="relay",
                    protocol="ark",
                    base_url=ark.base_url,
                    upstream_model=model,
                    api_key_env=KEY_ENV,
                    poll_interval=0.05,
                )
            )
        )
        return made[-1]

    yield make
    for engine in made:
        engine.close()


def job(mode: Mode, task_id: str, **options) -> Job:
    return Job(
        task_id=task_id,
        model="relayed",
        mode=mode,
        prompt="a fox in the snow",
        width=720,
        height=1280,
        fps=8,
        duration=6,
        seed=42,
        engine={"engine": "relay"},
        options=options,
    )


def creates(ark) -> list[dict]:
    return [r["json"] for r in ark.requests if r["method"] == "POST"]


def test_text_to_video_request_and_result(relay, ark):
    out = relay().generate(job(Mode.TEXT_TO_VIDEO, "task_ark_t2v"), Inputs(), StepContext())
    (body,) = creates(ark)
    assert body["model"] == "doubao-seedance-2-0-260128"
    assert body["content"] == [{"type": "text", "text": "a fox in the snow"}]
    assert (body["duration"], body["ratio"], body["resolution"], body["seed"], body["generate_audio"]) == (
        6,
        "9:16",
        "720p",
        42,
        False,
    )
    assert len(out.frames) == 48 and {f.shape for f in out.frames} == {(1280, 720, 3)}  # fitted to the exact output
    assert out.audio is None
    create = next(r for r in ark.requests if r["method"] == "POST")
    assert create["headers"]["Authorization"] == f"Bearer {KEY}" and create["headers"]["Idempotency-Key"] == "task_ark_t2v"


def test_every_mode_sends_its_roles_and_sound_comes_back(relay, ark, tmp_path):
    a, b = media.gradient_image(640, 480, seed=1), media.gradient_image(480, 480, seed=2)
    engine = relay()
    engine.generate(job(Mode.IMAGE_TO_VIDEO, "task_ark_i2v"), Inputs(image=a), StepContext())
    engine.generate(job(Mode.FIRST_AND_LAST_FRAME, "task_ark_fl"), Inputs(image=a, last_image=b), StepContext())
    video, audio = tmp_path / "ref.mp4", tmp_path / "ref.wav"
    video.write_bytes(media.video_bytes(3))
    audio.write_bytes(media.audio_bytes(3))
    out = engine.generate(
        job(Mode.OMNI_REFERENCE, "task_ark_omni", generate_audio=True, camera_fixed=True),
        Inputs(images=[a, b], videos=[video], audios=[audio]),
        StepContext(),
    )
    roles = [[(c["type"], c.get("role")) for c in body["content"]] for body in creates(ark)]
    assert roles == [
        [("text", None), ("image_url", "first_frame")],
        [("text", None), ("image_url", "first_frame"), ("image_url", "last_frame")],
        [
            ("text", None),
            ("image_url", "reference_image"),
            ("image_url", "reference_image"),
            ("video_url", "reference_video"),
            ("audio_url", "reference_audio"),
        ],
    ]
    omni = creates(ark)[-1]
    assert omni["generate_audio"] is True and omni["camera_fixed"] is True
    assert omni["content"][3]["video_url"]["url"].startswith("data:video/mp4;base64,")
    assert omni["content"][4]["audio_url"]["url"].startswith("data:audio/wav;base64,")
    assert out.audio is not None and out.audio.samples.shape == (2, 6 * 48000)
    assert float(np.abs(out.audio.samples).max()) > 0.01


def test_a_failed_upstream_task_fails_with_its_message(relay):
    with pytest.raises(EngineError, match="upstream task cgt-.* failed: the output was refused"):
        relay("fail-model").generate(job(Mode.TEXT_TO_VIDEO, "task_ark_fail"), Inputs(), StepContext())


def test_cancel_deletes_the_upstream_task(relay, ark):
    ark.polls_to_finish = 10_000
    ctx = StepContext(cancelled=lambda: len([r for r in ark.requests if r["method"] == "GET"]) >= 2)
    with pytest.raises(Cancelled):
        relay().generate(job(Mode.TEXT_TO_VIDEO, "task_ark_cancel"), Inputs(), ctx)
    (task,) = ark.tasks.values()
    assert task["status"] == "cancelled"
    assert [r["method"] for r in ark.requests][-1] == "DELETE"


def test_a_wrong_key_is_the_upstreams_401(relay, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    with pytest.raises(EngineError, match="HTTP 401.*the API key is invalid"):
        relay().generate(job(Mode.TEXT_TO_VIDEO, "task_ark_key"), Inputs(), StepContext())
