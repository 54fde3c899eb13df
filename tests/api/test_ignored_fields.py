"""A misspelt top-level field (``durration``) is still ignored, as the spec says, but no longer
silently: the task object lists it in ``ignored_fields`` (create, get, list, both APIs'
readers) and the server logs it."""

from __future__ import annotations

import pytest

from opendance.testing.server import LiveServer, wait_for_task

M = "jisudance2.0-480p"


@pytest.fixture(scope="module")
def info_server(tmp_path_factory):
    with LiveServer(tmp_path_factory.mktemp("ignored"), env={"OPENDANCE_LOG_LEVEL": "info"}) as server:
        yield server


def test_a_misspelt_field_is_ignored_and_listed(info_server):
    with info_server.client() as c:
        created = c.post("/v1/video/generations", json={"model": M, "prompt": "x", "durration": 8, "aspectratio": "1:1"}).json()
        assert created["ignored_fields"] == ["durration", "aspectratio"]
        assert (created["duration"], created["aspect_ratio"]) == (5, "16:9")  # ignored: the defaults
        done = wait_for_task(c, created["id"])
        assert done["status"] == "completed", done  # the engine's job does not carry the list
        assert done["ignored_fields"] == ["durration", "aspectratio"]
        listed = next(t for t in c.get("/v1/video/generations", params={"limit": 100}).json()["data"] if t["id"] == created["id"])
        assert listed["ignored_fields"] == ["durration", "aspectratio"]
        assert c.get(f"/v1/videos/{created['id']}").json()["ignored_fields"] == ["durration", "aspectratio"]
        clean = c.post("/v1/video/generations", json={"model": M, "prompt": "x", "duration": 6}).json()
        assert clean["ignored_fields"] == [] and clean["duration"] == 6
    assert f"task {created['id']}: ignored the unknown fields durration, aspectratio" in info_server.log()


def test_the_list_is_bounded(info_server):
    body = {"model": M, "prompt": "x", **{f"f{i:02d}": i for i in range(30)}, "n" * 200: 1}
    with info_server.client() as c:
        created = c.post("/v1/video/generations", json=body).json()
    assert created["ignored_fields"] == [f"f{i:02d}" for i in range(20)]
    body = {"model": M, "prompt": "x", "n" * 200: 1}
    with info_server.client() as c:
        assert c.post("/v1/video/generations", json=body).json()["ignored_fields"] == ["n" * 64 + "..."]
