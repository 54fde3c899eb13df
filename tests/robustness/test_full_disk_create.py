"""A create on a full disk, with SQLite on that disk too: a 503 ``storage_error`` with
``Retry-After``, for text-only creates as for those with media, never a 500; no task is made and
nothing is left behind; once there is room again, creates work.

The disk is a real 16 MiB tmpfs, filled to the last byte (so the test needs root to mount it,
as the full-disk test of test_faults.py does).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from opendance.testing import media
from opendance.testing.disk import fill, small_tmpfs
from opendance.testing.server import LiveServer, wait_for_task

M = "jisudance2.0-480p"


def rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("select count(*) from tasks").fetchone()[0]


@pytest.mark.timeout(180)
def test_a_create_on_a_full_disk_is_a_503_even_text_only(tmp_path, error_body):
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        server = LiveServer(disk / "data", env={"OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"})
        server.log_path = tmp_path / "server.log"  # the log must not need the full disk
        with server, server.client() as c:
            first = wait_for_task(c, c.post("/v1/video/generations", json={"model": M, "prompt": "before"}).json()["id"])
            before = rows(disk / "data" / "opendance.db")
            fill(disk / "filler")
            image = media.data_uri(media.image_bytes(320, 240), "image/png")
            for body in ({"model": M, "prompt": "text only " + "x" * 4000}, {"model": M, "image": image}):
                r = c.post("/v1/video/generations", json=body)
                assert r.status_code == 503, r.text
                e = error_body(r)
                assert (e["code"], e["type"]) == ("storage_error", "server_error"), e
                assert "could not store this task" in e["message"]
                assert int(r.headers["Retry-After"]) > 0
            r = c.post("/v1/videos", json={"prompt": "openai, text only " + "y" * 4000})
            assert r.status_code == 503 and error_body(r)["code"] == "storage_error", r.text
            assert rows(disk / "data" / "opendance.db") == before  # no task was made
            assert sorted(p.name for p in (disk / "data" / "files" / "tasks").iterdir()) == [first["id"]]  # no inputs left
            assert not [p for p in (disk / "data").rglob("*") if p.is_file() and "spool" in p.parts]  # nor spooled media
            (disk / "filler").unlink()
            task = wait_for_task(c, c.post("/v1/video/generations", json={"model": M, "prompt": "after"}).json()["id"])
            assert task["status"] == "completed", task
        assert "internal server error" not in server.log() and "unhandled error" not in server.log()
