"""``opendance.Client`` against live servers: every method, local files as data: URIs, typed
errors, waiting (progress, failure, timeout) and downloads."""

from __future__ import annotations

import json

import pytest

import opendance
from opendance.client._core import create_body
from opendance.media.encode import probe_mp4
from opendance.testing.http import MediaHost
from opendance.testing.media import image_bytes


@pytest.fixture
def oc(live):
    with opendance.Client(live.url) as c:
        yield c


def test_create_wait_download_a_valid_mp4(oc, tmp_path):
    seen: list[opendance.Task] = []
    task = oc.create("slow", "a fox in the snow", duration=5, aspect_ratio="9:16", seed=7)
    assert isinstance(task, opendance.Task) and task.status == "queued" and task.id.startswith("task_")
    assert (task.width, task.height, task.seed, task.duration) == (480, 864, 7, 5)
    done = oc.wait(task, poll_interval=0.1, max_interval=0.3, on_progress=seen.append)
    assert done.is_completed and done.progress == 100 and done.video_url
    assert seen[-1] == done
    progress = [t.progress for t in seen]
    assert progress == sorted(progress) and any(0 < p < 100 for p in progress), progress
    path = oc.download(done, tmp_path / "out" / "fox.mp4")
    assert path == tmp_path / "out" / "fox.mp4" and not (tmp_path / "out" / "fox.mp4.part").exists()
    info = probe_mp4(path)
    assert (info["width"], info["height"]) == (480, 864) and info["video_codec"] == "h264"
    assert abs(info["duration"] - 5.0) <= 1 / info["fps"] + 1e-6


def test_local_files_become_data_uris_and_urls_pass_through(oc, png, media_host, finished):
    # A path (str or Path) and bytes are read here; a URL is fetched by the server.
    task = oc.create("quick-480p", "", image=str(png))
    assert task.mode == "image-to-video" and (task.width, task.height) == (864, 480)
    url = media_host.add("/client/square.png", image_bytes(300, 300, seed=5), "image/png")
    refs = oc.create("quick-480p", "a collage", images=[png, url, image_bytes(200, 400, seed=6)])
    assert refs.mode == "omni-reference" and refs.aspect_ratio == "16:9"
    assert any(path == "/client/square.png" for _, path, _ in media_host.requests)
    first_last = oc.create("quick-480p", "morph", image=png, last_image=url)
    assert first_last.mode == "first-and-last-frame"
    for t in (task, refs, first_last):
        assert finished(t.id)["status"] == "completed"


def test_a_missing_local_file_fails_before_any_request(oc, tmp_path):
    with pytest.raises(FileNotFoundError, match="images\\[1\\]"):
        oc.create("quick-480p", "x", images=["https://example.com/a.png", tmp_path / "nope.png"])


def test_typed_errors_carry_the_servers_fields(oc):
    with pytest.raises(opendance.BadRequestError) as bad:
        oc.create("quick-480p", "x", duration=4)
    assert bad.value.status == 400 and bad.value.param == "duration" and bad.value.type == "invalid_request_error"
    assert "between 5 and 15" in bad.value.message
    with pytest.raises(opendance.BadRequestError) as scheme:
        oc.create("quick-480p", "x", image="ftp://example.com/a.png")  # passed through; the server names it
    assert scheme.value.param == "image" and scheme.value.code == "unsupported_url_scheme"
    with pytest.raises(opendance.NotFoundError) as missing:
        oc.get("task_" + "x" * 32)
    assert missing.value.code == "task_not_found"


def test_loras_go_into_extra_body_and_the_server_names_a_bad_one(oc):
    body = create_body("m", "x", loras=["grain", {"name": "style", "scale": 0.5}], seed=3)
    assert body["extra_body"] == {"seed": 3, "loras": [{"name": "grain"}, {"name": "style", "scale": 0.5}]}
    with pytest.raises(TypeError, match="list of names"):
        create_body("m", "x", loras="grain")
    # This server's models allow no LoRAs: the server refuses the first item by its path.
    with pytest.raises(opendance.BadRequestError) as bad:
        oc.create("quick-480p", "x", loras=["grain"])
    assert bad.value.param == "extra_body.loras[0]" and bad.value.code == "lora_not_found"
    task = oc.create("quick-480p", "x")
    assert task.loras == () and opendance.Task.from_dict({**task.raw, "loras": [{"name": "g", "scale": 1.0}]}).loras == (
        {"name": "g", "scale": 1.0},
    )


def test_cancel_delete_and_conflicts(oc, tmp_path):
    task = oc.create("slow", "to be cancelled")
    with pytest.raises(opendance.ConflictError) as early:
        oc.download(task, tmp_path / "early.mp4")  # not completed yet: the server says 409
    assert early.value.code == "task_not_completed" and not (tmp_path / "early.mp4").exists()
    with pytest.raises(opendance.ConflictError):
        oc.delete(task)  # still running: cancel first
    cancelled = oc.cancel(task.id)
    assert cancelled.status == "failed" and cancelled.raw_status == "CANCELLED"
    with pytest.raises(opendance.TaskFailedError) as failed:
        oc.wait(task)
    assert failed.value.code == "cancelled" and failed.value.task.error.code == "cancelled"
    assert oc.wait(task, raise_on_failure=False).raw_status == "CANCELLED"
    with pytest.raises(opendance.ConflictError) as again:
        oc.cancel(task)
    assert again.value.code == "task_not_cancellable"
    oc.delete(task)
    with pytest.raises(opendance.NotFoundError):
        oc.get(task)


def test_a_failing_engine_raises_task_failed(oc):
    task = oc.create("broken", "x")
    with pytest.raises(opendance.TaskFailedError) as failed:
        oc.wait(task, poll_interval=0.1)
    assert failed.value.code == "scenario_failure" and failed.value.task.is_failed


def test_wait_times_out_with_the_task_still_running(oc):
    task = oc.create("slow", "slow")
    with pytest.raises(opendance.TimeoutError) as late:
        oc.wait(task, timeout=0.3, poll_interval=0.1)
    assert late.value.task.id == task.id and not late.value.task.is_terminal
    assert isinstance(late.value, TimeoutError)  # the built-in catches it too
    oc.cancel(task)


def test_list_pages_through_everything(oc, finished):
    ids = [oc.create("pager", f"page {i}").id for i in range(5)]
    for tid in ids:
        finished(tid)
    # Other tests may have made older pager tasks: these five are the newest, in order.
    newest_first = [t.id for t in oc.list(model="pager", page_size=2)]
    assert newest_first[:5] == ids[::-1] and len(set(newest_first)) == len(newest_first)
    oldest_first = [t.id for t in oc.list(model="pager", order="asc", page_size=2)]
    assert oldest_first == newest_first[::-1]
    assert {t.status for t in oc.list(model="pager", status="completed", page_size=3)} == {"completed"}


def test_models(oc):
    names = [m["id"] for m in oc.models()]
    assert names[:2] == ["jisudance2.0-480p", "quick-480p"] and "broken" in names


def test_last_frame_download(oc, tmp_path):
    done = oc.wait(oc.create("quick-480p", "x", return_last_frame=True))
    assert done.last_frame_url
    path = oc.download(done.id, tmp_path / "last.png", variant="last_frame")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_base_url_and_key_from_the_environment(keyed_server, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENDANCE_BASE_URL", keyed_server.url + "/v1/")  # a trailing /v1 is fine
    monkeypatch.setenv("OPENDANCE_API_KEY", "k-alice")
    with opendance.Client() as alice:
        assert alice.base_url == keyed_server.url
        task = alice.wait(alice.create("jisudance2.0-480p", "mine"))
        # The signed video_url needs no key; the download works either way.
        alice.download(task, tmp_path / "mine.mp4")
        assert probe_mp4(tmp_path / "mine.mp4")["video_codec"] == "h264"
    with opendance.Client(api_key="k-bob") as bob:
        with pytest.raises(opendance.NotFoundError):
            bob.get(task.id)
    with opendance.Client(api_key="wrong") as stranger:
        with pytest.raises(opendance.AuthenticationError) as denied:
            stranger.models()
    assert denied.value.status == 401 and denied.value.code == "invalid_api_key"


def test_any_server_speaking_the_api(media_host, tmp_path):
    """Another server's shapes: a task object with only the seed's fields, errors in FastAPI's
    ``detail`` shape, and a video_url on another origin (a CDN), which never gets the key."""
    with MediaHost() as cdn:
        video_url = cdn.add("/v.mp4", b"not really an mp4", "video/mp4")
        task = {
            "id": "task_other",
            "task_id": "task_other",
            "object": "video.generation.job",
            "model": "m",
            "status": "completed",
            "raw_status": "COMPLETED",
            "progress": 100,
            "created_at": 1,
            "error": None,
            "result": {"outputs": [video_url], "video_url": video_url},
            "video_url": video_url,
        }
        media_host.add("/other/v1/video/generations/task_other", json.dumps(task).encode(), "application/json")
        media_host.add("/other/v1/video/generations/task_gone", b'{"detail": "Not Found"}', "application/json", status=404)
        with opendance.Client(media_host.url + "/other", api_key="secret-key") as c:
            got = c.get("task_other")
            assert got.is_completed and got.outputs == (video_url,) and got.width is None
            assert c.download(got, tmp_path / "v.mp4").read_bytes() == b"not really an mp4"
            with pytest.raises(opendance.NotFoundError, match="Not Found"):
                c.get("task_gone")
    assert cdn.requests and all("authorization" not in {k.lower() for k in h} for _, _, h in cdn.requests)
    api = [headers for _, path, headers in media_host.requests if path.startswith("/other/")]
    assert len(api) == 2 and all(h.get("Authorization") == "Bearer secret-key" for h in api)
