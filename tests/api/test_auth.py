"""Bearer keys: 401 without a valid key; another key's task is a 404 everywhere."""

from __future__ import annotations

import httpx

from opendance.testing.server import wait_for_task

M = "jisudance2.0-480p"


def test_missing_and_wrong_keys(keyed_server):
    with keyed_server.client() as anon, keyed_server.client("k-mallory") as wrong:
        for c in (anon, wrong):
            r = c.post("/v1/video/generations", json={"model": M, "prompt": "x"})
            assert r.status_code == 401, r.text
            assert r.json()["error"]["type"] == "authentication_error"
            assert c.get("/v1/video/generations").status_code == 401
            assert c.get("/v1/models").status_code == 401
        r = httpx.get(keyed_server.url + "/v1/models", headers={"Authorization": "Basic k-alice"})
        assert r.status_code == 401
    assert httpx.get(keyed_server.url + "/healthz").status_code == 200  # probes need no key


def test_other_keys_tasks_are_invisible(keyed_server):
    with keyed_server.client("k-alice") as alice, keyed_server.client("k-bob") as bob:
        tid = alice.post("/v1/video/generations", json={"model": M, "prompt": "mine"}).json()["id"]
        task = wait_for_task(alice, tid)
        assert task["status"] == "completed"
        for method, path in (
            ("GET", f"/v1/video/generations/{tid}"),
            ("GET", f"/v1/videos/{tid}"),
            ("GET", f"/v1/video/generations/{tid}/content"),
            ("POST", f"/v1/video/generations/{tid}/cancel"),
            ("DELETE", f"/v1/video/generations/{tid}"),
        ):
            r = bob.request(method, path)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["error"]["code"] == "task_not_found"
        assert tid not in {t["id"] for t in bob.get("/v1/video/generations").json()["data"]}
        assert tid in {t["id"] for t in alice.get("/v1/video/generations").json()["data"]}
        # A signed video_url works with no key at all, and only for its own task and variant.
        assert "token=" in task["video_url"]
        assert httpx.get(task["video_url"]).status_code == 200
        forged = task["video_url"].replace("token=", "token=0")
        assert httpx.get(forged).status_code == 404
        other = task["video_url"].replace(tid, "task_" + "a" * 32)
        assert httpx.get(other).status_code == 404
        # Bob's key with Alice's token is still Bob asking: 404.
        assert bob.get(task["video_url"]).status_code == 404
        assert alice.delete(f"/v1/video/generations/{tid}").status_code == 200
