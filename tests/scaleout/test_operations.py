"""What an operator sees through a Temporal outage: readiness follows Temporal, a task that
finished while Temporal was away longer than the heartbeat timeout still gets its one
``completed`` callback, and its finish is counted once, the same on every API server."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from opendance.media.encode import probe_mp4
from opendance.runner.checkpoints import checkpoint_prefix, decode_state
from opendance.testing.cluster import Cluster, wait_until

RESEND_INTERVAL = 60  # seconds between an API server's sweeps for callbacks left pending


@pytest.fixture(scope="module")
def pair(scaleout_env):
    """Two API servers and one worker on a database of their own."""
    c = Cluster(scaleout_env.root / "ops", scaleout_env.env, scaleout_env.config, models=["long", "pv"], workers=1).start()
    yield c
    c.stop()


def finished_total(api, model: str, raw_status: str) -> float | None:
    text = httpx.get(f"{api.url}/metrics", timeout=10).text
    m = re.search(rf'^opendance_tasks_finished_total\{{model="{model}",raw_status="{raw_status}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def ready(api) -> int:
    return httpx.get(f"{api.url}/readyz", timeout=10).status_code


def test_temporal_away_longer_than_the_heartbeat_timeout(pair, scaleout_env, temporal, media_host):
    heartbeat_timeout = float(scaleout_env.env["OPENDANCE_TEMPORAL_HEARTBEAT_TIMEOUT"])
    path = f"/cb/outage-{id(pair)}"
    tid = pair.create("long", "finish while Temporal is away", extra_body={"callback_url": f"{media_host.url}{path}"})
    wait_until(lambda: any(r["task"] == tid and r["event"] == "step" for r in scaleout_env.runs()), 60, "first step")
    assert {ready(api) for api in pair.apis} == {200}
    temporal.stop()
    try:
        # Not ready while Temporal cannot be reached; reads go on.
        for api in pair.apis:
            wait_until(lambda: ready(api) == 503, 30, "not ready while Temporal is down")
        body = httpx.get(f"{pair.apis[0].url}/readyz", timeout=10).json()
        assert body["checks"]["runner"]["temporal"].startswith("unreachable")
        wait_until(lambda: pair.get(tid, api=1)["status"] == "completed", 60, "completed while Temporal is down")
        # Longer than the heartbeat timeout and than the SDK keeps retrying the completion: the
        # attempt times out when Temporal is back, and the retry finds the task finished.
        time.sleep(max(3 * heartbeat_timeout, 6.0))
    finally:
        temporal.start()
    for api in pair.apis:
        wait_until(lambda: ready(api) == 200, 30, "ready again once Temporal is back")

    def callbacks() -> list[str]:
        return [json.loads(body)["status"] for p, body in media_host.posts if p == path]

    wait_until(lambda: "completed" in callbacks(), RESEND_INTERVAL, "the completed callback")
    store = scaleout_env.store()
    try:
        wait_until(lambda: store.get(tid).callback_pending is None, 30, "the callback recorded as delivered")
        completed = store.finished_counts()[("long", "COMPLETED")]
    finally:
        store.close()
    assert callbacks() == ["queued", "in_progress", "completed"]
    # Counted once, from the store: every server gives the same number, the store's.
    assert completed == 1
    assert [finished_total(api, "long", "COMPLETED") for api in pair.apis] == [1.0, 1.0]


def test_preview_task_resumes_from_its_frames_on_another_worker(pair, scaleout_env, s3):
    """On workers the preview engine keeps its finished frames as checkpoint chunks: a task
    whose worker dies goes on after the last chunk on the next one."""
    tid = pair.create("pv", "a long preview", duration=12)
    # The checkpoint's state object, which is written after its parts (runner/checkpoints.py): once
    # it exists the first frame chunk is committed. (The chunk alone may be stored with the state
    # not yet written: a kill then leaves nothing to resume from.)
    state = scaleout_env.env["OPENDANCE_S3_PREFIX"] + checkpoint_prefix(tid) + "state"
    client = s3.client()

    def chunk_saved() -> bool:
        try:
            blob = client.get_object(Bucket=s3.bucket, Key=state)["Body"].read()
        except client.exceptions.ClientError:
            return False
        return decode_state(blob)[1] >= 24  # a state after the first chunk of 24 frames

    wait_until(chunk_saved, 120, "the first frame chunk's checkpoint in S3", poll=0.05)
    dead = pair.workers[0]
    dead.kill()
    pair.workers.remove(dead)
    successor = pair.add_worker()
    final = pair.wait_done([tid], timeout=180)[tid]
    assert final["status"] == "completed", final
    resumed = re.findall(rf"task {tid}: resuming after step (\d+)", successor.log(tail=200_000))
    assert resumed and int(resumed[0]) >= 24 and int(resumed[0]) % 24 == 0, successor.log()
    path = scaleout_env.root / "pv.mp4"
    path.write_bytes(pair.content(tid))
    info = probe_mp4(path)
    assert (info["width"], info["height"], info["num_frames"]) == (1280, 720, 288)
