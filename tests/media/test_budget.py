"""The media budgets (bytes in flight, decode memory), the stored-bytes cap per key, the media
thread pool and the header-only decode costs. Counted in bytes and by who waits, never timed."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import zlib
from pathlib import Path

import pytest

from opendance.errors import RateLimited, ServiceUnavailable
from opendance.media import images, probe
from opendance.media.budget import ByteBudget, MediaWork
from opendance.testing.media import image_bytes, video_bytes

MiB = 1024 * 1024


def work(tmp_path: Path, **kw) -> MediaWork:
    options = dict(threads=2, decode_bytes=100, inflight_bytes=100, wait=0.2)
    options.update(kw)
    return MediaWork(tmp_path / "spool", **options)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def rgba_png_header(width: int, height: int) -> bytes:
    """An 8-bit RGBA PNG's signature and IHDR, then an IDAT of 8 bytes of garbage: nothing that
    could ever decode to pixels."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", b"garbage!") + _chunk(b"IEND", b"")


# -- ByteBudget --------------------------------------------------------------------------------


def test_a_budget_waits_for_room_and_wakes_on_release():
    async def main() -> None:
        budget = ByteBudget(100)
        assert await budget.acquire(60, timeout=0) and budget.used == 60
        assert not await budget.acquire(50, timeout=0.05)  # does not fit, and nobody gives back
        waiting = asyncio.create_task(budget.acquire(50, timeout=30))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        budget.release(60)
        assert await waiting and budget.used == 50

    asyncio.run(main())


def test_a_lone_holder_may_take_more_than_the_budget():
    """So an item larger than the budget still goes through on a quiet server."""

    async def main() -> None:
        budget = ByteBudget(100)
        assert await budget.acquire(500, timeout=0)
        assert await budget.acquire(300, mine=500, timeout=0)  # still alone
        assert not await budget.acquire(1, timeout=0)  # someone else must wait
        budget.release(800)
        assert budget.used == 0

    asyncio.run(main())


# -- the media pool ------------------------------------------------------------------------------


def test_media_work_never_takes_the_threads_store_reads_use(tmp_path):
    """Every media thread blocked, and 40 more jobs queued behind them: a call on asyncio's
    default pool (where store and storage calls run) still runs at once."""
    gate = threading.Event()

    async def main() -> tuple[int, str]:
        media = work(tmp_path, threads=2)
        jobs = [asyncio.create_task(media.run(gate.wait)) for _ in range(42)]
        try:
            await asyncio.sleep(0.05)
            read = await asyncio.wait_for(asyncio.to_thread(lambda: "listed"), timeout=30)
            running = sum(1 for t in threading.enumerate() if t.name.startswith("media"))
            return running, read
        finally:
            gate.set()
            await asyncio.gather(*jobs)
            media.close()

    running, read = asyncio.run(main())
    assert (running, read) == (2, "listed")


def test_a_decode_that_does_not_fit_waits_then_is_a_503(tmp_path):
    gate = threading.Event()

    async def main() -> None:
        media = work(tmp_path, decode_bytes=100, wait=0.1)
        first = asyncio.create_task(media.decode(80, gate.wait))
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceUnavailable) as info:
            await media.decode(30, lambda: None)
        assert (info.value.status, info.value.code, info.value.retry_after) == (503, "decode_budget_exhausted", 5)
        assert media.decode_budget.used == 80
        gate.set()
        await first
        assert media.decode_budget.used == 0
        assert await media.decode(30, lambda: "decoded") == "decoded"
        media.close()

    asyncio.run(main())


def test_a_cancelled_decode_holds_its_bytes_until_its_thread_ends(tmp_path):
    """The memory is in use while the thread decodes, whoever stopped waiting for it."""
    gate = threading.Event()
    ended = threading.Event()

    def decode() -> None:
        gate.wait()
        ended.set()

    async def main() -> None:
        media = work(tmp_path, decode_bytes=100)
        task = asyncio.create_task(media.decode(70, decode))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert media.decode_budget.used == 70  # the thread still decodes
        gate.set()
        await asyncio.to_thread(ended.wait)
        for _ in range(100):
            if not media.decode_budget.used:
                break
            await asyncio.sleep(0.01)
        assert media.decode_budget.used == 0
        media.close()

    asyncio.run(main())


# -- one create's scope -----------------------------------------------------------------------------


def test_bytes_in_flight_past_the_budget_are_a_503_and_given_back_at_the_end(tmp_path):
    async def main() -> None:
        media = work(tmp_path, inflight_bytes=100, wait=0.1)
        async with media.intake("a", "task_1") as first:
            await first.take(90)
            async with media.intake("b", "task_2") as second:
                with pytest.raises(ServiceUnavailable) as info:
                    await second.take(20)
                assert (info.value.code, info.value.retry_after) == ("media_budget_exhausted", 5)
            await first.take(30)  # a holder alone may go past the budget
            assert media.inflight_budget.used == 120
        assert media.inflight_budget.used == 0 and media.holding("a") == 0
        media.close()

    asyncio.run(main())


def test_the_stored_bytes_cap_counts_what_the_key_stores_and_fetches(tmp_path):
    async def main() -> None:
        media = work(tmp_path, inflight_bytes=10_000)
        async with (
            media.intake("a", "task_1", stored=500, cap=1000) as one,
            media.intake("a", "task_2", stored=500, cap=1000) as two,
        ):
            await one.take(300)
            await two.take(200)  # 500 stored + 500 in flight: exactly the cap
            with pytest.raises(RateLimited) as info:
                await two.take(1)
            assert (info.value.status, info.value.code) == (429, "input_storage_quota_exceeded")
            assert "delete finished tasks" in info.value.message
            async with media.intake("b", "task_3", stored=0, cap=1000) as other:
                await other.take(1000)  # another key has its own cap
        media.close()

    asyncio.run(main())


def test_the_spool_is_cleared_of_dead_processes_folders_only(tmp_path):
    root = tmp_path / "spool"
    dead, alive = root / "999999999", root / "1"  # no such process; init
    for folder in (dead, alive):
        folder.mkdir(parents=True)
        (folder / "images_0").write_bytes(b"x")
    (root / ".part-stray").write_bytes(b"x")
    media = work(tmp_path)
    media.clear_spool()
    assert sorted(p.name for p in root.iterdir()) == sorted(["1", str(os.getpid())])
    assert list(media.spool_dir.iterdir()) == [] and (alive / "images_0").exists()
    media.close()


def test_a_scope_spools_in_its_own_folder_and_removes_it(tmp_path):
    async def main() -> None:
        media = work(tmp_path)
        await asyncio.to_thread(media.clear_spool)
        async with media.intake("a", "task_1") as scope:
            folder = await scope.make_folder()
            (folder / "image").write_bytes(b"x")
        assert list(media.spool_dir.iterdir()) == []
        async with media.intake("a", "task_2"):
            pass  # text only: no folder made at all
        assert list(media.spool_dir.iterdir()) == []
        media.close()

    asyncio.run(main())


# -- costs from headers ------------------------------------------------------------------------------


def test_image_pixels_are_counted_from_the_header_alone():
    """A 6000x6000 RGBA PNG header with no pixel data: the cost is known without decoding."""
    assert images.decode_cost(rgba_png_header(6000, 6000)) == 6000 * 6000 * 4
    assert images.decode_cost(image_bytes(320, 240)) == 320 * 240 * 4
    assert images.decode_cost(rgba_png_header(7000, 3000)) == 0  # refused from the header, never decoded
    assert images.decode_cost(b"not an image") == 0


def test_video_cost_comes_from_the_stream_header(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(video_bytes(0.5, width=320, height=192, fps=8))
    assert probe.decode_cost(path) == 320 * 192 * probe.DECODE_BYTES_PER_PIXEL
    path.write_bytes(video_bytes(0.5, width=640, height=128, fps=8))  # aspect 5: refused before decoding
    assert probe.decode_cost(path) == 0
