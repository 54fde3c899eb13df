"""``opendance.AsyncClient`` against a live server: the same operations, awaited."""

from __future__ import annotations

import asyncio

import pytest

import opendance
from opendance.media.encode import probe_mp4


def test_create_wait_download(live, png, tmp_path):
    async def main() -> tuple[opendance.Task, list[int]]:
        progress: list[int] = []

        async def on_progress(task: opendance.Task) -> None:  # a coroutine callback is awaited
            progress.append(task.progress)

        async with opendance.AsyncClient(live.url) as c:
            task = await c.create("slow", "async fox", image=png, seed=11)
            assert task.mode == "image-to-video" and task.status == "queued"
            done = await c.wait(task.id, poll_interval=0.1, max_interval=0.3, on_progress=on_progress)
            await c.download(done, tmp_path / "fox.mp4")
            return done, progress

    done, progress = asyncio.run(main())
    assert done.is_completed and done.seed == 11
    assert progress == sorted(progress) and progress[-1] == 100 and any(0 < p < 100 for p in progress)
    info = probe_mp4(tmp_path / "fox.mp4")
    assert (info["width"], info["height"]) == (864, 480)


def test_list_cancel_delete_and_errors(live):
    async def main() -> None:
        async with opendance.AsyncClient(live.url) as c:
            ids = [(await c.create("pager", f"async page {i}")).id for i in range(3)]
            for tid in ids:
                await c.wait(tid, poll_interval=0.05)
            listed = [t.id async for t in c.list(model="pager", page_size=1)]
            assert listed[:3] == ids[::-1]  # newest first; older pager tasks may follow

            running = await c.create("slow", "to cancel")
            assert (await c.cancel(running)).raw_status == "CANCELLED"
            with pytest.raises(opendance.TaskFailedError) as failed:
                await c.wait(running)
            assert failed.value.code == "cancelled"
            await c.delete(running)
            with pytest.raises(opendance.NotFoundError):
                await c.get(running.id)
            with pytest.raises(opendance.BadRequestError) as bad:
                await c.create("no-such-model", "x")
            assert bad.value.param == "model" and bad.value.code == "model_not_found"
            with pytest.raises(opendance.TimeoutError):
                slow = await c.create("slow", "too slow")
                await c.wait(slow, timeout=0.2, poll_interval=0.05)
            await c.cancel(slow)
            assert [m["id"] for m in await c.models()][0] == "jisudance2.0-480p"

    asyncio.run(main())
