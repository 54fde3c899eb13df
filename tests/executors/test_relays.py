"""Relays on the upstream executor of one ``opendance serve``: hundreds at once with no worker
process, a SIGKILL that pays for nothing twice, and failover between channels."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from opendance.media.encode import probe_mp4
from opendance.testing.cluster import wait_until
from opendance.testing.server import LiveServer, free_port, wait_for_task
from opendance.testing.upstream import FakeUpstream

OPEN = {"OPENDANCE_RATE_LIMIT_PER_MINUTE": "0", "OPENDANCE_MAX_QUEUED_PER_KEY": "0", "OPENDANCE_MAX_QUEUED_TOTAL": "0"}


def relay_model(name: str, channels: list[dict], **options) -> str:
    lines = [f'[models."{name}"]', 'resolution = "480p"', "fps = 24", f'[models."{name}".default]', 'engine = "relay"']
    lines += [f"{k} = {v!r}" for k, v in options.items()]
    for channel in channels:
        lines.append(f'[[models."{name}".default.channels]]')
        lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in channel.items()]
    return "\n".join(lines) + "\n"


def legacy(url: str, **more) -> dict:
    return {"protocol": "legacy", "base_url": url, "upstream_model": "up-480p", **more}


def create_many(c: httpx.Client, n: int, model: str = "relayed") -> list[str]:
    def one(i: int) -> str:
        r = c.post("/v1/video/generations", json={"model": model, "prompt": f"relay {i}"})
        assert r.status_code == 200, r.text
        return r.json()["id"]

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(n)))


def statuses(c: httpx.Client) -> dict[str, str]:
    """Every task's status, through the list (two pages of 100 instead of 200 GETs)."""
    out: dict[str, str] = {}
    after = None
    while True:
        page = c.get("/v1/video/generations", params={"limit": 100, **({"after": after} if after else {})}).json()
        out.update({t["id"]: t["status"] for t in page["data"]})
        if not page["has_more"]:
            return out
        after = page["data"][-1]["id"]


def test_two_hundred_relays_at_once_hold_no_worker_process(tmp_path):
    """Each upstream task takes 10 s; one by one they would take 2000 s."""
    with FakeUpstream(seconds=10.0) as up:
        config = tmp_path / "models.toml"
        config.write_text(relay_model("relayed", [legacy(up.url)], poll_interval=1.0))
        with LiveServer(tmp_path / "data", config=config, env=OPEN) as server, server.client() as c:
            started = time.monotonic()
            ids = create_many(c, 200)
            assert server.worker_pids() == []  # the relays wait upstream as asyncio tasks of the API process
            wait_until(lambda: len(up.tasks) == 200, 40, "all 200 created upstream")
            assert server.worker_pids() == [] and c.get("/readyz").json()["checks"]["runner"]["workers_alive"] == 0
            wait_until(lambda: set(statuses(c).values()) == {"completed"}, 60 - (time.monotonic() - started), "200 completed")
            elapsed = time.monotonic() - started
            busy = c.get("/readyz").json()["checks"]["runner"]["executors"]["upstream"]
            path = tmp_path / "one.mp4"
            path.write_bytes(c.get(f"/v1/video/generations/{ids[0]}/content").content)
        # Most were upstream at one moment (the creates themselves take a while on a busy machine).
        assert up.peak_in_flight >= 50, up.peak_in_flight
        assert sorted(up.creates.values()) == [1] * 200 and set(up.creates) == set(ids)
        assert busy["busy"] == 0 and busy["slots"] == 256
    info = probe_mp4(path)
    assert (info["width"], info["height"], info["num_frames"], info["fps"]) == (864, 480, 120, 24.0)
    print(
        f"200 relay tasks of 10 s upstream: all completed {elapsed:.1f} s after the first create, "
        f"{up.peak_in_flight} upstream at once"
    )


def test_sigkill_while_relays_wait_upstream_pays_for_nothing_twice(tmp_path):
    with FakeUpstream(seconds=8.0) as up:
        config = tmp_path / "models.toml"
        config.write_text(relay_model("relayed", [legacy(up.url)], poll_interval=0.5))
        server = LiveServer(tmp_path / "data", config=config, env=OPEN).start()
        try:
            with server.client() as c:
                ids = create_many(c, 20)

                def all_polled() -> bool:  # a poll comes after the upstream id is checkpointed
                    polled = {path.rsplit("/", 1)[1] for method, path in list(up.requests) if method == "GET"}
                    return len(up.tasks) == 20 and set(up.tasks) <= polled

                wait_until(all_polled, 30, "every upstream task followed")
                assert all(t != "completed" for t in statuses(c).values())
            server.kill()  # SIGKILL: every relay is cut off mid-wait
            server.start()
            with server.client() as c:
                final = {tid: wait_for_task(c, tid, timeout=60) for tid in ids}
        finally:
            server.kill()
    assert {t["status"] for t in final.values()} == {"completed"}, [t["error"] for t in final.values()]
    assert sorted(up.creates.values()) == [1] * 20 and set(up.creates) == set(ids)  # one create per task, ever
    assert len(up.tasks) == 20


def test_failover_and_the_breaker(tmp_path):
    """Channel 1 answers 503 to every create, channel 2 serves: every task completes on channel
    2; after two failures channel 1 is skipped, and tried again once its cool-down is over."""
    env = {**OPEN, "OPENDANCE_RELAY_BREAKER_FAILURES": "2", "OPENDANCE_RELAY_BREAKER_COOLDOWN": "4"}
    with FakeUpstream(seconds=0.5, create_status=503) as sick, FakeUpstream(seconds=0.5) as well:
        config = tmp_path / "models.toml"
        config.write_text(
            relay_model("relayed", [legacy(sick.url, name="sick"), legacy(well.url, name="well", priority=1)], poll_interval=0.2)
        )
        with LiveServer(tmp_path / "data", config=config, env=env) as server, server.client() as c:
            ids = [
                wait_for_task(
                    c, c.post("/v1/video/generations", json={"model": "relayed", "prompt": str(i)}).json()["id"], timeout=60
                )
                for i in range(4)
            ]
            assert {t["status"] for t in ids} == {"completed"}
            assert set(well.creates) == {t["id"] for t in ids}
            assert sum(sick.creates.values()) == 2  # then skipped
            channels = c.get("/readyz").json()["checks"]["runner"]["executors"]["upstream"]["channels"]
            assert channels["sick"]["state"] == "open" and channels["sick"]["failures_in_a_row"] == 2
            assert channels["well"]["state"] == "closed"
            metrics = c.get("/metrics").text
            assert 'opendance_relay_failures_total{channel="sick",op="create"} 2.0' in metrics
            assert 'opendance_relay_channel_open{channel="sick"} 1.0' in metrics
            assert 'opendance_relay_requests_total{channel="well",op="create"} 4.0' in metrics
            assert 'opendance_relay_request_seconds_count{channel="well",op="status"}' in metrics
            time.sleep(4.5)  # the cool-down
            late = c.post("/v1/video/generations", json={"model": "relayed", "prompt": "after"}).json()["id"]
            assert wait_for_task(c, late, timeout=60)["status"] == "completed"
            assert sick.creates[late] == 1 and well.creates[late] == 1  # tried again, failed over again
            assert c.get("/readyz").json()["checks"]["runner"]["executors"]["upstream"]["channels"]["sick"]["state"] == "open"


@pytest.mark.parametrize("trouble", ["refused", "503"])
def test_every_create_fails_over_from_a_channel_in_trouble(tmp_path, trouble):
    """The same through the relay job alone, for a channel that refuses connections too."""
    import asyncio

    from opendance.domain import Mode
    from opendance.engines.base import Inputs, Job
    from opendance.engines.options import RelayOptions
    from opendance.engines.relay import RelayContext, RelayJob
    from opendance.engines.relay.channels import ChannelBoard

    class Ctx(RelayContext):
        state = None

        def cancelled(self) -> bool:
            return False

        async def wait(self, seconds: float) -> bool:
            await asyncio.sleep(seconds)
            return False

        def progress(self, percent: int) -> None:
            pass

        async def load_state(self):
            return self.state

        async def save_state(self, state):
            self.state = state

    async def main(first_url: str, well: FakeUpstream):
        clock = [0.0]
        board = ChannelBoard(failures=2, cooldown=30.0, clock=lambda: clock[0])
        opts = RelayOptions(
            engine="relay",
            poll_interval=0.05,
            channels=[legacy(first_url, name="first"), legacy(well.url, name="second", priority=1)],
        )
        used = []
        async with httpx.AsyncClient() as http:
            for i in range(4):
                job = Job(
                    task_id=f"task_f{i}",
                    model="m",
                    mode=Mode.TEXT_TO_VIDEO,
                    prompt="p",
                    width=864,
                    height=480,
                    fps=24,
                    duration=5,
                    seed=1,
                    engine={"engine": "relay"},
                )
                ctx = Ctx()
                await RelayJob(job, opts, {}, http, board).run(Inputs(), ctx, tmp_path)
                used.append(ctx.state["channel"])
                if i == 2:
                    clock[0] += 31.0  # past the cool-down
        return used, board

    with FakeUpstream(seconds=0.2, create_status=503 if trouble == "503" else None) as sick, FakeUpstream(seconds=0.2) as well:
        first = sick.url if trouble == "503" else f"http://127.0.0.1:{free_port()}"  # nothing listens there
        used, board = asyncio.run(main(first, well))
    assert used == ["second"] * 4
    assert board.health("first").requests == 3  # two, then skipped, then one trial after the cool-down
    assert board.state("first") == "open"


def test_cancel_and_expiry_reach_the_upstream_task(tmp_path):
    with FakeUpstream(seconds=120.0) as up:
        config = tmp_path / "models.toml"
        config.write_text(relay_model("relayed", [legacy(up.url)], poll_interval=0.2))
        with (
            LiveServer(tmp_path / "data", config=config, env={**OPEN, "OPENDANCE_TASK_TIMEOUT": "4"}) as server,
            server.client() as c,
        ):

            def upstream_task(tid: str) -> dict:
                return up.tasks[up._by_key[tid]]

            cancelled = c.post("/v1/video/generations", json={"model": "relayed", "prompt": "stop me"}).json()["id"]
            wait_until(lambda: cancelled in up._by_key, 30, "created upstream")
            assert c.post(f"/v1/video/generations/{cancelled}/cancel").json()["raw_status"] == "CANCELLED"
            wait_until(lambda: upstream_task(cancelled)["cancelled"], 10, "cancelled upstream")
            expired = c.post("/v1/video/generations", json={"model": "relayed", "prompt": "too slow"}).json()["id"]
            task = wait_for_task(c, expired, timeout=60)
            assert (task["raw_status"], task["error"]["code"]) == ("EXPIRED", "expired"), task
            wait_until(lambda: upstream_task(expired)["cancelled"], 10, "expired task cancelled upstream")
            wait_until(
                lambda: c.get("/readyz").json()["checks"]["runner"]["executors"]["upstream"]["busy"] == 0,
                10,
                "both slots given back",
            )
