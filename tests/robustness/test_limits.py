"""Limits through HTTP: request rate per key (429), unfinished tasks per key (429) and on the
whole server (503), both with ``Retry-After``; the body limit (413); ``Idempotency-Key``.

The server allows 1 request a minute after a burst of 10, so a refused request stays refused for
the whole test whatever the machine's speed; each test uses its own keys, so buckets never mix.
Tasks run on a scenario model that sleeps for a minute and stop when cancelled.
"""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from opendance.testing.server import LiveServer
from opendance.testing.tasks import add_task

BURST = 10
KEYS = ["k-rate", "k-other", "k-a", "k-b", "k-race", "k-idem", "k-body"]
CONFIG = """
[models."slow"]
resolution = "480p"
fps = 8
[models."slow".default]
engine = "scenario"
behaviour = "sleep"
steps = 240
step_seconds = 0.25
"""
BODY = {"model": "slow", "prompt": "x"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    (root / "models.toml").write_text(CONFIG)
    env = {
        "OPENDANCE_API_KEYS": ",".join(KEYS),
        "OPENDANCE_RATE_LIMIT_PER_MINUTE": "1",
        "OPENDANCE_RATE_LIMIT_BURST": str(BURST),
        "OPENDANCE_MAX_QUEUED_PER_KEY": "2",
        "OPENDANCE_MAX_QUEUED_TOTAL": "3",
        "OPENDANCE_MAX_BODY_BYTES": "100000",
    }
    with LiveServer(root / "data", env=env, config=root / "models.toml") as server:
        yield server


def refused(r: httpx.Response, status: int, code: str, error_type: str) -> int:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["type"]) == (code, error_type), error
    retry_after = int(r.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def test_request_rate_is_limited_per_key(limited):
    with limited.client("k-rate") as c, limited.client("k-other") as other, limited.client("k-nobody") as stranger:
        for _ in range(BURST):
            assert c.get("/v1/models").status_code == 200
        r = c.get("/v1/models")
        assert refused(r, 429, "rate_limited", "rate_limit_error") <= 60
        assert "at most 1 a minute" in r.json()["error"]["message"]
        assert c.get("/v1/video/generations").status_code == 429  # every route, not just one
        assert other.get("/v1/models").status_code == 200  # another key has its own bucket
        assert stranger.get("/v1/models").status_code == 401  # a bad key is refused, not counted as k-rate
    assert httpx.get(limited.url + "/healthz").status_code == 200  # probes are not limited


def test_guessing_keys_is_rate_limited_per_address(limited):
    """Failed attempts spend the client address's bucket (shared by every bad key from it)."""
    statuses = []
    for i in range(BURST + 1):
        with limited.client(f"k-guess-{i}") as guess:
            statuses.append(guess.get("/v1/models").status_code)
            if statuses[-1] == 429:
                refused(guess.get("/v1/models"), 429, "rate_limited", "rate_limit_error")
                break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}, statuses
    with limited.client("k-other") as other:
        assert other.get("/v1/models").status_code == 200  # a valid key is not slowed by the guesser


def test_unfinished_tasks_per_key_and_in_all(limited):
    with limited.client("k-a") as a, limited.client("k-b") as b:
        first, second = (a.post("/v1/video/generations", json=BODY) for _ in range(2))
        assert first.status_code == second.status_code == 200
        r = a.post("/v1/video/generations", json=BODY)
        refused(r, 429, "too_many_queued_tasks", "rate_limit_error")
        assert "at most 2 may be queued or running" in r.json()["error"]["message"]
        third = b.post("/v1/video/generations", json=BODY)
        assert third.status_code == 200, third.text  # B has its own allowance ...
        refused(b.post("/v1/video/generations", json=BODY), 503, "queue_full", "server_error")  # ... but the server is full
        assert a.post(f"/v1/video/generations/{first.json()['id']}/cancel").status_code == 200
        again = a.post("/v1/video/generations", json=BODY)  # a finished task frees its place
        assert again.status_code == 200, again.text
        for client, task in ((a, second), (b, third), (a, again)):
            assert client.post(f"/v1/video/generations/{task.json()['id']}/cancel").status_code == 200


def test_concurrent_creates_cannot_pass_the_limit_together(limited):
    with limited.client("k-race") as c:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: c.post("/v1/video/generations", json=BODY), range(6)))
        made = [r.json()["id"] for r in answers if r.status_code == 200]
        assert len(made) == 2, [r.text for r in answers]
        assert {r.json()["error"]["code"] for r in answers if r.status_code != 200} == {"too_many_queued_tasks"}
        for task_id in made:
            c.post(f"/v1/video/generations/{task_id}/cancel")


def test_idempotency_key(limited):
    with limited.client("k-idem") as c:
        body = {"model": "slow", "prompt": "once"}
        first = c.post("/v1/video/generations", json=body, headers={"Idempotency-Key": "order-17"})
        assert first.status_code == 200, first.text
        other = c.post("/v1/video/generations", json={"model": "slow", "prompt": "other"})
        assert other.status_code == 200  # the key is now at its limit of 2 unfinished tasks ...
        replay = c.post("/v1/video/generations", json=body, headers={"Idempotency-Key": "order-17"})
        assert replay.status_code == 200, replay.text  # ... yet a retry of the first create is answered
        assert replay.json()["id"] == first.json()["id"]
        r = c.post("/v1/video/generations", json={"model": "slow", "prompt": "changed"}, headers={"Idempotency-Key": "order-17"})
        assert r.status_code == 409, r.text
        assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("idempotency_key_reused", "Idempotency-Key")
        listed = c.get("/v1/video/generations").json()["data"]
        assert sorted(t["id"] for t in listed) == sorted([first.json()["id"], other.json()["id"]])  # nothing doubled
        for task in (first, other):
            c.post(f"/v1/video/generations/{task.json()['id']}/cancel")


def test_body_limit(limited):
    with limited.client("k-body") as c:

        def body_of(size: int) -> bytes:
            head = b'{"model": "none", "prompt": "'
            return head + b"a" * (size - len(head) - 2) + b'"}'

        at_limit = c.post("/v1/video/generations", content=body_of(100_000), headers={"Content-Type": "application/json"})
        assert at_limit.status_code == 400 and at_limit.json()["error"]["param"] == "model"  # read and parsed
        over = c.post("/v1/video/generations", content=body_of(100_001), headers={"Content-Type": "application/json"})
        assert over.status_code == 413 and over.json()["error"]["code"] == "body_too_large"

        def chunks():  # no Content-Length: the server must count as it reads
            yield b'{"model": "slow", "prompt": "'
            for _ in range(50):
                yield b"a" * 10_000

        streamed = c.post("/v1/video/generations", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413 and "larger than 100000 bytes" in streamed.json()["error"]["message"]


def test_token_bucket_arithmetic():
    """The bucket with a clock the test moves: refill rate, burst cap, Retry-After, pruning."""
    from opendance.api.limits import PRUNE_AT, RateLimiter
    from opendance.errors import RateLimited

    now = [0.0]
    limiter = RateLimiter(per_minute=30, burst=3, clock=lambda: now[0])  # a token every 2 s
    for _ in range(3):
        limiter.check("k")
    with pytest.raises(RateLimited) as info:
        limiter.check("k")
    assert info.value.retry_after == 2 and info.value.code == "rate_limited"
    now[0] = 1.0  # half a token: still refused, one more second to wait
    with pytest.raises(RateLimited) as info:
        limiter.check("k")
    assert info.value.retry_after == 1
    now[0] = 2.0
    limiter.check("k")  # the refilled token
    now[0] = 1000.0
    for _ in range(3):  # a long pause refills the burst, never more
        limiter.check("k")
    with pytest.raises(RateLimited):
        limiter.check("k")
    limiter.check("other")  # buckets are per caller
    for i in range(PRUNE_AT):
        limiter._buckets[f"idle-{i}"] = type(limiter._buckets["k"])(tokens=3.0, stamp=0.0)
    limiter.check("newcomer")  # full (idle) buckets are dropped before a new one is added
    assert "idle-0" not in limiter._buckets and "k" in limiter._buckets
    assert RateLimiter(per_minute=0, burst=1).enabled is False


def test_a_create_that_is_just_storing_its_task_is_counted_once(tmp_path):
    """The window the HTTP race above can hit only by luck, held open on purpose: the first
    create's row is written while its place is still reserved; a second create of the same key
    must still fit under a limit of 2 (and a third must not)."""
    import asyncio

    from opendance.api.limits import QueueAdmission
    from opendance.domain import new_task_id
    from opendance.errors import RateLimited
    from opendance.store.migrate import upgrade
    from opendance.store.repo import TaskStore

    store = TaskStore.from_url(f"sqlite:///{tmp_path / 'tasks.db'}")
    upgrade(store.engine)
    admission = QueueAdmission(
        2, 0, lambda owner, leave_out: (store.count_unfinished(owner, leave_out), store.count_unfinished(None, leave_out))
    )

    def stored(task_id):
        return add_task(store, id=task_id, owner="k", model="slow", mode="text", job={})

    async def main():
        first_id, second_id = new_task_id(), new_task_id()
        async with admission.admit("k", first_id):
            stored(first_id)  # written, place not yet given back
            async with admission.admit("k", second_id):
                stored(second_id)
        with pytest.raises(RateLimited):
            async with admission.admit("k", new_task_id()):
                pass
        assert admission._reserved == {}

    try:
        asyncio.run(main())
    finally:
        store.close()
