"""The relay engine against a real upstream: another opendance server on 127.0.0.1, which speaks
both protocols the relay knows (the legacy task API and OpenAI's /v1/videos) and keeps its own
tasks, so every test can see what reached the upstream."""

from __future__ import annotations

import numpy as np
import pytest

from opendance.domain import Mode
from opendance.engines.base import Inputs, Job, StepContext
from opendance.engines.relay import RelayEngine
from opendance.errors import Cancelled, EngineError
from opendance.media.encode import probe_mp4
from opendance.media.frames import fit_cover, to_array
from opendance.runner.checkpoints import TaskCheckpoints
from opendance.storage import LocalStorage
from opendance.testing import media
from opendance.testing.server import LiveServer, wait_for_task

KEY, KEY_ENV = "upstream-key", "OPENDANCE_TEST_UPSTREAM_KEY"
UPSTREAM_MODELS = """
[models."up-480p"]
resolution = "480p"
fps = 8
[models."up-480p".default]
engine = "preview"

[models."up-slow"]
resolution = "480p"
fps = 8
[models."up-slow".default]
engine = "scenario"
behaviour = "sleep"
steps = 200
step_seconds = 0.1
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    (root / "models.toml").write_text(UPSTREAM_MODELS)
    env = {"OPENDANCE_API_KEYS": KEY, "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(root / "data", env=env, config=root / "models.toml") as server:
        yield server


@pytest.fixture
def relay(upstream, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    made = []

    def make(protocol: str = "legacy", model: str = "up-480p", **options) -> RelayEngine:
        spec = dict(
            engine="relay",
            protocol=protocol,
            base_url=upstream.url,
            upstream_model=model,
            api_key_env=KEY_ENV,
            poll_interval=0.1,
            **options,
        )
        made.append(RelayEngine(spec))
        return made[-1]

    yield make
    for engine in made:
        engine.close()


def upstream_tasks(upstream) -> list[dict]:
    with upstream.client(KEY) as c:
        return c.get("/v1/video/generations", params={"limit": 100}).json()["data"]


def job(mode: Mode, task_id: str, **kw) -> Job:
    return Job(
        task_id=task_id,
        model="relayed",
        mode=mode,
        prompt=kw.pop("prompt", "a fox in the snow"),
        width=864,
        height=480,
        fps=8,
        duration=5,
        seed=3,
        engine={"engine": "relay"},
        **kw,
    )


def run(engine, j: Job, inputs: Inputs, **ctx):
    steps: list[int] = []
    out = engine.generate(j, inputs, StepContext(progress=lambda done, total: steps.append(done), **ctx))
    return out, steps


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("protocol", ["legacy", "openai"])
def test_text_and_image_to_video(protocol, relay):
    engine = relay(protocol)
    out, steps = run(engine, job(Mode.TEXT_TO_VIDEO, f"task_t2v_{protocol}"), Inputs())
    assert len(out.frames) == 40 and {f.shape for f in out.frames} == {(480, 864, 3)}
    assert steps and steps == sorted(steps) and steps[-1] <= 99  # the upstream's progress, never down
    assert out.audio is None

    image = media.gradient_image(640, 480, seed=5)
    out, _ = run(engine, job(Mode.IMAGE_TO_VIDEO, f"task_i2v_{protocol}"), Inputs(image=image))
    assert psnr(out.frames[0], to_array(fit_cover(image, 864, 480))) >= 30  # the upstream started on our image


def test_every_mode_over_the_legacy_protocol_with_sound(relay, media_files):
    engine = relay()
    a, b = media.gradient_image(640, 480, seed=1), media.gradient_image(480, 480, seed=2)
    out, _ = run(engine, job(Mode.FIRST_AND_LAST_FRAME, "task_fl"), Inputs(image=a, last_image=b))
    assert psnr(out.frames[0], to_array(fit_cover(a, 864, 480))) >= 30
    assert psnr(out.frames[-1], to_array(fit_cover(b, 864, 480))) >= 30
    inputs = Inputs(images=[a, b], videos=media_files("video", [3]), audios=media_files("audio", [3]))
    out, _ = run(engine, job(Mode.OMNI_REFERENCE, "task_omni"), inputs)
    assert len(out.frames) == 40
    assert out.audio is not None and out.audio.samples.shape == (2, 5 * 48000)  # the reference audio, mixed upstream
    assert float(np.abs(out.audio.samples).max()) > 0.01


def test_a_run_that_starts_again_follows_the_same_upstream_task(relay, upstream, tmp_path):
    engine = relay()
    checkpoints = TaskCheckpoints(LocalStorage(tmp_path / "files"), "task_again", every=5)
    before = len(upstream_tasks(upstream))
    first, _ = run(engine, job(Mode.TEXT_TO_VIDEO, "task_again"), Inputs(), checkpoints=checkpoints)
    # Another Idempotency-Key, so only the checkpoint (the upstream task's id) can keep the
    # second run from creating a second upstream task.
    again, _ = run(engine, job(Mode.TEXT_TO_VIDEO, "task_again_other_key"), Inputs(), checkpoints=checkpoints)
    assert len(upstream_tasks(upstream)) == before + 1  # paid for once
    assert all(np.array_equal(x, y) for x, y in zip(first.frames, again.frames, strict=True))


def test_the_same_task_is_created_upstream_once_even_without_checkpoints(relay, upstream):
    """The create carries ``Idempotency-Key: <our task id>``."""
    engine = relay()
    before = len(upstream_tasks(upstream))
    run(engine, job(Mode.TEXT_TO_VIDEO, "task_idem"), Inputs())
    run(engine, job(Mode.TEXT_TO_VIDEO, "task_idem"), Inputs())
    assert len(upstream_tasks(upstream)) == before + 1


def test_cancel_cancels_the_upstream_task(relay, upstream):
    engine = relay(model="up-slow")
    steps: list[int] = []
    ctx = StepContext(progress=lambda done, total: steps.append(done), cancelled=lambda: len(steps) >= 2)
    with pytest.raises(Cancelled):
        engine.generate(job(Mode.TEXT_TO_VIDEO, "task_cancel"), Inputs(), ctx)
    (cancelled,) = [t for t in upstream_tasks(upstream) if t["model"] == "up-slow"]
    assert (cancelled["status"], cancelled["raw_status"]) == ("failed", "CANCELLED")


def test_upstream_refusals_are_engine_errors_with_the_upstream_message(relay, upstream, monkeypatch):
    with pytest.raises(EngineError, match=r"HTTP 400.*no-such-model"):
        relay(model="no-such-model").generate(job(Mode.TEXT_TO_VIDEO, "task_bad_model"), Inputs(), StepContext())
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    with pytest.raises(EngineError, match="HTTP 401"):
        relay().generate(job(Mode.TEXT_TO_VIDEO, "task_bad_key"), Inputs(), StepContext())
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ValueError, match=f"api_key_env = '{KEY_ENV}'.*not set"):
        relay()
    unreachable = RelayEngine(dict(engine="relay", protocol="legacy", base_url="http://127.0.0.1:9", upstream_model="m"))
    with pytest.raises(EngineError, match="cannot be reached"):
        unreachable.generate(job(Mode.TEXT_TO_VIDEO, "task_nowhere"), Inputs(), StepContext())


def test_openai_protocol_takes_text_and_one_first_frame_only(relay, tmp_path):
    a = media.gradient_image(640, 480, seed=1)
    with pytest.raises(EngineError, match="cannot relay first-and-last-frame"):
        relay("openai").generate(job(Mode.FIRST_AND_LAST_FRAME, "task_oa_fl"), Inputs(image=a, last_image=a), StepContext())
    from opendance.config import load_models

    path = tmp_path / "models.toml"
    path.write_text(
        '[models."r"]\nresolution = "480p"\n[models."r".default]\nengine = "relay"\nprotocol = "openai"\n'
        'base_url = "http://127.0.0.1:1"\nupstream_model = "x"\n'
    )
    with pytest.raises(ValueError, match=r"models\.r \(first-and-last-frame, engine relay\).*cannot relay"):
        load_models(path)


def test_a_relayed_model_through_a_real_server(upstream, tmp_path):
    """opendance in front of opendance: the task and its MP4 come out as from any engine."""
    config = tmp_path / "models.toml"
    config.write_text(
        f'[models."relayed"]\nresolution = "480p"\nfps = 8\n[models."relayed".default]\nengine = "relay"\n'
        f'protocol = "legacy"\nbase_url = "{upstream.url}"\nupstream_model = "up-480p"\n'
        f'api_key_env = "{KEY_ENV}"\npoll_interval = 0.1\n'
    )
    with LiveServer(tmp_path / "data", config=config, env={KEY_ENV: KEY}) as front, front.client() as c:
        tid = c.post("/v1/video/generations", json={"model": "relayed", "prompt": "x", "aspect_ratio": "9:16"}).json()["id"]
        task = wait_for_task(c, tid, timeout=60)
        assert task["status"] == "completed", task
        path = tmp_path / "out.mp4"
        path.write_bytes(c.get(f"/v1/video/generations/{tid}/content").content)
    info = probe_mp4(path)
    assert (info["width"], info["height"], info["num_frames"]) == (480, 864, 40)


def test_relay_options_are_checked_with_the_models_file(tmp_path):
    from opendance.config import load_models

    path = tmp_path / "models.toml"
    path.write_text(
        '[models."r"]\nresolution = "480p"\n[models."r".default]\nengine = "relay"\nprotocol = "grpc"\nbase_url = "ftp://x"\n'
    )
    with pytest.raises(ValueError) as caught:
        load_models(path)
    for problem in (
        "protocol: Input should be 'legacy', 'openai' or 'ark'",
        "base_url: String should match pattern",
        "upstream_model: Field required",
    ):
        assert problem in str(caught.value)
