"""``video_url`` and ``last_frame_url`` point where the reader can reach: at OPENDANCE_PUBLIC_URL
when it is set, else at the host and port of the request being answered (not of the request
that created the task, which may have come through another name or port)."""

from __future__ import annotations

import httpx

from opendance.testing.server import LiveServer, wait_for_task

M = "jisudance2.0-480p"


def links(task: dict) -> list[str]:
    return [task["video_url"], *task["result"]["outputs"], task["result"]["video_url"], task["result"]["last_frame_url"]]


def test_links_follow_the_host_the_task_is_read_through(server):
    with server.client() as c:
        created = c.post(
            "/v1/video/generations",
            json={"model": M, "prompt": "links", "extra_body": {"return_last_frame": True}},
            headers={"Host": "creator.example:1111"},
        ).json()
        wait_for_task(c, created["id"])
        other = {"Host": f"localhost:{server.port}"}
        reads = [
            c.get(f"/v1/video/generations/{created['id']}", headers=other).json(),
            c.get(f"/v1/videos/generations/{created['id']}", headers=other).json(),
            c.get(f"/v1/videos/{created['id']}", headers=other).json(),
            next(
                t
                for t in c.get("/v1/video/generations", params={"limit": 100}, headers=other).json()["data"]
                if t["id"] == created["id"]
            ),
        ]
    for task in reads:
        assert all(
            link.startswith(f"http://localhost:{server.port}/v1/video/generations/{created['id']}/content")
            for link in links(task)
        ), task
    # and the links work through that name
    assert httpx.get(reads[0]["video_url"]).status_code == 200
    assert httpx.get(reads[0]["result"]["last_frame_url"]).headers["content-type"] == "image/png"


def test_public_url_wins_over_every_request(tmp_path):
    with LiveServer(tmp_path, env={"OPENDANCE_PUBLIC_URL": "https://videos.example.com/"}) as server, server.client() as c:
        task_id = c.post("/v1/video/generations", json={"model": M, "prompt": "public"}, headers={"Host": "a.example"}).json()[
            "id"
        ]
        wait_for_task(c, task_id)
        task = c.get(f"/v1/video/generations/{task_id}", headers={"Host": "b.example"}).json()
    assert task["video_url"] == f"https://videos.example.com/v1/video/generations/{task_id}/content"
