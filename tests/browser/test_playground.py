"""The playground at ``/``, used as a person would: through its labelled controls, in Chromium,
against a real ``opendance serve``."""

from __future__ import annotations

import io

import av
import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from opendance.testing.media import gradient_image

pytestmark = pytest.mark.browser

FPS = 8  # of the test models (conftest.MODELS_TOML)


def row_of(page, task_id: str):
    return page.locator(f'li[data-task-id="{task_id}"]')


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def first_frame(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def test_text_to_video_from_the_form_plays_a_video_of_the_right_length(
    playground_server, open_page, created, tmp_path, screenshot_path
):
    page = open_page(playground_server)
    expect(page.locator("#server-status")).to_contain_text("This server is open")
    expect(page.get_by_label("API key")).to_be_hidden()
    page.get_by_label("Model").select_option("preview-480p")
    page.get_by_label("Prompt", exact=True).fill("a paper boat on a rainy street")
    page.get_by_label("Duration").fill("6")
    page.get_by_label("Aspect ratio").select_option("16:9")
    page.get_by_label("Seed").fill("7")
    expect(page.locator("#mode")).to_have_text("text-to-video")  # shown before sending

    task = created(page, lambda: page.get_by_role("button", name="Generate").click())
    assert (task["mode"], task["duration"], task["seed"], task["width"], task["height"]) == ("text-to-video", 6, 7, 864, 480)
    row = row_of(page, task["id"])
    expect(row).to_have_attribute("data-status", "completed", timeout=120_000)
    expect(row.locator(".status")).to_have_text("completed")
    expect(row.locator(".mode")).to_have_text("text-to-video")
    expect(row.locator(".model")).to_have_text("preview-480p")
    expect(row.locator(".time")).to_contain_text("took")
    expect(row.get_by_role("progressbar")).to_have_attribute("value", "100")

    video = row.locator("video")
    expect(video).to_have_count(1)
    video.evaluate(
        "v => new Promise((ok, fail) => v.readyState >= 1 ? ok() : (v.onloadedmetadata = ok, v.onerror = () => fail(v.error.message)))"
    )
    duration = video.evaluate("v => v.duration")
    assert abs(duration - 6) <= 1 / FPS + 1e-6, duration
    size = video.evaluate("v => [v.videoWidth, v.videoHeight]")
    assert size == [864, 480]
    # It plays: time moves on, and no media error.
    video.evaluate("v => { v.muted = true; return v.play(); }")
    page.wait_for_function("v => v.currentTime > 0.5 && !v.error", arg=video.element_handle())

    shot = page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    assert Image.open(io.BytesIO(shot)).size[0] == 1280
    if screenshot_path is not None:
        page.screenshot(path=str(screenshot_path), full_page=True)


def test_a_first_frame_from_the_file_chooser_starts_the_video(playground_server, open_page, created, tmp_path):
    picked = tmp_path / "harbour.png"
    gradient_image(864, 480, seed=3).save(picked)
    page = open_page(playground_server)
    page.get_by_label("Model").select_option("preview-480p")
    page.get_by_label("Prompt", exact=True).fill("slow zoom")
    with page.expect_file_chooser() as chooser:
        page.get_by_label("First frame", exact=True).click()
    chooser.value.set_files(picked)
    expect(page.locator(".media[data-field=image] .picked li")).to_contain_text("harbour.png")
    expect(page.locator("#mode")).to_have_text("image-to-video")

    task = created(page, lambda: page.get_by_role("button", name="Generate").click())
    assert task["mode"] == "image-to-video"
    row = row_of(page, task["id"])
    expect(row).to_have_attribute("data-status", "completed", timeout=120_000)
    expect(row.locator(".mode")).to_have_text("image-to-video")
    with page.expect_download() as download:
        row.get_by_role("link", name="Download MP4").click()
    saved = tmp_path / "download.mp4"
    download.value.save_as(saved)
    frame = first_frame(saved.read_bytes())
    assert frame.shape == (480, 864, 3)
    assert psnr(frame, np.asarray(gradient_image(864, 480, seed=3))) >= 30
    assert psnr(frame, np.asarray(gradient_image(864, 480, seed=4))) < 20  # the comparison can tell images apart


def test_a_bad_value_shows_the_servers_message_beside_its_field(playground_server, open_page):
    page = open_page(playground_server)
    page.get_by_label("Model").select_option("preview-480p")
    page.get_by_label("Prompt", exact=True).fill("a lighthouse")
    page.get_by_label("Duration").fill("16")
    page.get_by_role("button", name="Generate").click()
    said = httpx.post(
        playground_server.url + "/v1/video/generations", json={"model": "preview-480p", "prompt": "a lighthouse", "duration": 16}
    ).json()["error"]
    assert said["param"] == "duration"
    expect(page.locator("#duration-error")).to_have_text(said["message"])
    expect(page.get_by_label("Duration")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#form-error")).to_be_empty()
    page.get_by_label("Duration").fill("five")  # not a number: sent as typed, for the server to name
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#duration-error")).to_have_text("duration must be a whole number of seconds (5-15); got 'five'")

    # An indexed param (images[1]) goes beside its list; the earlier error is cleared.
    page.get_by_label("Duration").fill("5")
    page.get_by_label("Reference images URLs").fill("https://example.invalid/a.png\nftp://example.invalid/b.png")
    expect(page.locator("#mode")).to_have_text("omni-reference")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#images-error")).to_have_text(
        "images[1]: the URL scheme 'ftp' is not allowed; use http(s):// or a data: URI"
    )
    expect(page.locator("#duration-error")).to_be_empty()

    # An extra_body param (extra_body.seed) goes beside the field that fills it.
    page.get_by_label("Reference images URLs").fill("")
    page.get_by_label("Seed").fill("-5")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#seed-error")).to_have_text("extra_body.seed must be between -1 and 4294967295; got -5")


def test_cancel_and_delete_from_the_list(playground_server, open_page, created):
    page = open_page(playground_server)
    page.get_by_label("Model").select_option("slow")
    page.get_by_label("Prompt", exact=True).fill("a very long take")
    task = created(page, lambda: page.get_by_role("button", name="Generate").click())
    row = row_of(page, task["id"])
    expect(row).to_have_attribute("data-status", "in_progress", timeout=60_000)
    # The bar follows the server's progress.
    page.wait_for_function("bar => bar.value > 0", arg=row.get_by_role("progressbar").element_handle())
    shown = int(row.get_by_role("progressbar").get_attribute("value"))
    now = httpx.get(f"{playground_server.url}/v1/video/generations/{task['id']}").json()["progress"]
    assert 0 < shown <= now
    expect(row.get_by_role("button", name="Delete")).to_be_hidden()

    row.get_by_role("button", name="Cancel").click()
    expect(row.locator(".status")).to_have_text("cancelled")
    expect(row.locator(".error")).to_have_text("the task was cancelled by the client")
    assert httpx.get(f"{playground_server.url}/v1/video/generations/{task['id']}").json()["raw_status"] == "CANCELLED"
    expect(row.get_by_role("button", name="Cancel")).to_be_hidden()

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    assert httpx.get(f"{playground_server.url}/v1/video/generations/{task['id']}").status_code == 404
    page.reload()  # and it stays gone
    expect(page.locator("#task-list")).not_to_contain_text(task["id"])


def test_with_keys_the_page_asks_for_one_and_shows_only_its_tasks(keyed_server, open_page, created):
    def make(key: str) -> str:
        r = httpx.post(
            keyed_server.url + "/v1/video/generations",
            json={"model": "jisudance2.0-480p", "prompt": f"made by {key}"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200, r.text
        return r.json()["id"]

    alices, bobs = make("k-alice"), make("k-bob")
    page = open_page(keyed_server)
    expect(page.locator("#server-status")).to_contain_text("needs an API key")
    key_box = page.get_by_label("API key")
    expect(key_box).to_be_visible()
    expect(page.locator("li.task")).to_have_count(0)

    key_box.fill("k-mallory")
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#api-key-error")).to_contain_text("invalid API key")
    expect(page.locator("li.task")).to_have_count(0)

    key_box.fill("k-alice")
    page.get_by_role("button", name="Use key").click()
    expect(row_of(page, alices)).to_be_visible()
    expect(page.locator("#api-key-error")).to_be_empty()
    assert page.evaluate("localStorage.getItem('opendance.apiKey')") == "k-alice"
    expect(row_of(page, bobs)).to_have_count(0)
    ids = page.locator("li.task").evaluate_all("rows => rows.map(r => r.dataset.taskId)")
    visible_to_alice = httpx.get(
        keyed_server.url + "/v1/video/generations?limit=100", headers={"Authorization": "Bearer k-alice"}
    ).json()
    assert set(ids) <= {t["id"] for t in visible_to_alice["data"]}

    # A video made from the page plays through its signed link: a <video> sends no key.
    page.get_by_label("Prompt", exact=True).fill("alice's own")
    task = created(page, lambda: page.get_by_role("button", name="Generate").click())
    row = row_of(page, task["id"])
    expect(row).to_have_attribute("data-status", "completed", timeout=120_000)
    video = row.locator("video")
    assert "token=" in video.get_attribute("src")
    page.wait_for_function("v => v.readyState >= 1 && v.duration > 4", arg=video.element_handle())

    # The key is remembered in this browser.
    page.reload()
    expect(row_of(page, alices)).to_be_visible()
    expect(page.get_by_label("API key")).to_have_value("k-alice")
