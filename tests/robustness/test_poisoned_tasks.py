"""Poisoned tasks: values Python's JSON parser takes but that cannot be stored or rendered.

A non-finite number (``1e400``), an unpaired surrogate (``"\\udfff"``) anywhere in the body, or a
field nested past the limit is a 400 naming the field, and leaves no task behind (both APIs). A
row that already holds such values (written before these rules, or by hand) still answers its
GET and never breaks its owner's list; nor does a row that cannot be read at all.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from opendance.testing.server import LiveServer, wait_for_task

M = "jisudance2.0-480p"


def nested(levels: int, leaf: str = "1") -> str:
    """``levels`` objects, one inside the other, as JSON text."""
    return '{"a": ' * levels + leaf + "}" * levels


POISONED = [
    # (name, raw body, param, message fragment, code)
    (
        "infinite number",
        f'{{"model": "{M}", "prompt": "x", "extra_body": {{"a": 1e400}}}}',
        "extra_body.a",
        "finite",
        "invalid_value",
    ),
    (
        "negative infinite in an array",
        f'{{"model": "{M}", "prompt": "x", "extra_body": {{"a": [1, -1e999]}}}}',
        "extra_body.a[1]",
        "finite",
        "invalid_value",
    ),
    ("infinite duration", f'{{"model": "{M}", "prompt": "x", "duration": 1e400}}', "duration", "finite", "invalid_value"),
    (
        "surrogate in an extra_body value",
        f'{{"model": "{M}", "prompt": "x", "extra_body": {{"a": "\\udfff"}}}}',
        "extra_body.a",
        "surrogate",
        "invalid_string",
    ),
    (
        "surrogate in an extra_body key",
        f'{{"model": "{M}", "prompt": "x", "extra_body": {{"ok\\ud800": 1}}}}',
        "extra_body",
        "surrogate",
        "invalid_string",
    ),
    (
        "surrogate deep in extra_body",
        f'{{"model": "{M}", "prompt": "x", "extra_body": {{"a": [{{"b": ["\\udc00"]}}]}}}}',
        "extra_body.a[0].b[0]",
        "surrogate",
        "invalid_string",
    ),
    ("surrogate in the prompt", f'{{"model": "{M}", "prompt": "a \\udfff cat"}}', "prompt", "surrogate", "invalid_string"),
    ("surrogate in the model", '{"model": "\\udfff", "prompt": "x"}', "model", "surrogate", "invalid_string"),
    (
        "surrogate in negative_prompt",
        f'{{"model": "{M}", "prompt": "x", "extra_body": {{"negative_prompt": "\\ud83d"}}}}',
        "extra_body.negative_prompt",
        "surrogate",
        "invalid_string",
    ),
    (
        "surrogate in an unknown field",
        f'{{"model": "{M}", "prompt": "x", "comment": "\\udfff"}}',
        "comment",
        "surrogate",
        "invalid_string",
    ),
    (
        "surrogate in a top-level key",
        f'{{"model": "{M}", "prompt": "x", "\\udfff": 1}}',
        "\\udfff",
        "surrogate",
        "invalid_string",
    ),
    (
        "extra_body 950 deep",
        f'{{"model": "{M}", "prompt": "x", "extra_body": {nested(950)}}}',
        "extra_body",
        "nested more than 32",
        "too_deep",
    ),
    (
        "extra_body 33 deep",
        f'{{"model": "{M}", "prompt": "x", "extra_body": {nested(33)}}}',
        "extra_body",
        "nested more than 32",
        "too_deep",
    ),
    (
        "an unknown field 900 deep",
        f'{{"model": "{M}", "prompt": "x", "zz": {"[" * 900 + "]" * 900}}}',
        "zz",
        "nested more than 32",
        "too_deep",
    ),
]


def count(c) -> tuple[int, int]:
    legacy = c.get("/v1/video/generations", params={"limit": 100})
    openai = c.get("/v1/videos", params={"limit": 100})
    assert legacy.status_code == openai.status_code == 200, (legacy.text, openai.text)
    return len(legacy.json()["data"]), len(openai.json()["data"])


@pytest.mark.parametrize("name,raw,param,text,code", POISONED, ids=[p[0] for p in POISONED])
def test_a_poisoned_create_is_a_400_and_leaves_no_task(open_server, error_body, name, raw, param, text, code):
    with open_server.client() as c:
        before = count(c)
        r = c.post("/v1/video/generations", content=raw.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        e = error_body(r)
        assert (e["param"], e["code"]) == (param, code), e
        assert text in e["message"], e
        assert count(c) == before


@pytest.mark.parametrize(
    "raw,param",
    [
        ('{"prompt": "a \\udfff cat"}', "prompt"),
        ('{"prompt": "x", "seed": 1e400}', "seed"),
        ('{"prompt": "x", "negative_prompt": "\\udfff"}', "negative_prompt"),
    ],
)
def test_a_poisoned_openai_create_is_a_400_naming_the_openai_field(open_server, error_body, raw, param):
    with open_server.client() as c:
        before = count(c)
        r = c.post("/v1/videos", content=raw.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert error_body(r)["param"] == param
        assert count(c) == before


def test_extra_body_at_the_nesting_limit_is_kept_whole(open_server):
    with open_server.client() as c:
        r = c.post(
            "/v1/video/generations",
            content=f'{{"model": "{M}", "prompt": "x", "extra_body": {nested(31)}}}'.encode(),  # 32 objects with extra_body
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200, r.text
        assert json.dumps(c.get(f"/v1/video/generations/{r.json()['id']}").json()["extra_body"]) == nested(31)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A server, and three completed tasks of one owner whose rows are then poisoned by hand."""
    with LiveServer(tmp_path_factory.mktemp("poisoned"), env={"OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}) as server:
        with server.client() as c:
            ids = [c.post("/v1/video/generations", json={"model": M, "prompt": f"task {i}"}).json()["id"] for i in range(4)]
            for task_id in ids:
                assert wait_for_task(c, task_id)["status"] == "completed"
        yield server, ids


def write_row(server: LiveServer, task_id: str, **columns: str) -> None:
    with sqlite3.connect(server.data_dir / "opendance.db", timeout=30) as conn:
        for column, value in columns.items():
            conn.execute(f"update tasks set {column} = ? where id = ?", (value, task_id))


def stored_job(server: LiveServer, task_id: str) -> dict:
    with sqlite3.connect(server.data_dir / "opendance.db", timeout=30) as conn:
        (text,) = conn.execute("select job from tasks where id = ?", (task_id,)).fetchone()
    return json.loads(text)


def test_rows_already_poisoned_still_answer_get_and_list(poisoned):
    server, (inf_id, surrogate_id, deep_id, broken_id) = poisoned
    job = stored_job(server, surrogate_id)
    # What a server without these rules stored (SQLAlchemy's default json.dumps writes these).
    write_row(server, inf_id, extra_body='{"a": Infinity, "b": [NaN, -Infinity], "c": 1}')
    write_row(
        server,
        surrogate_id,
        extra_body='{"\\udfff": "x\\udfffy"}',
        job=json.dumps({**job, "prompt": "a \\udfff cat"}).replace("\\\\udfff", "\\udfff"),
    )
    write_row(server, deep_id, extra_body='{"a": ' + "[" * 950 + "]" * 950 + "}")
    write_row(server, broken_id, extra_body='{"a": ')  # not JSON at all
    with server.client() as c:
        for task_id in (inf_id, surrogate_id, deep_id, broken_id):
            for path in (f"/v1/video/generations/{task_id}", f"/v1/videos/{task_id}"):
                r = c.get(path)
                assert r.status_code == 200, (path, r.text)
        assert c.get(f"/v1/video/generations/{inf_id}").json()["extra_body"] == {"a": None, "b": [None, None], "c": 1}
        assert c.get(f"/v1/video/generations/{surrogate_id}").json()["extra_body"] == {"\ufffd": "x\ufffdy"}
        assert c.get(f"/v1/videos/{surrogate_id}", params={"shape": "openai"}).json()["prompt"] == "a \ufffd cat"
        assert c.get(f"/v1/video/generations/{broken_id}").json()["extra_body"] == {}
        legacy = c.get("/v1/video/generations", params={"limit": 100})
        openai = c.get("/v1/videos", params={"limit": 100})
        assert legacy.status_code == openai.status_code == 200, (legacy.text, openai.text)
        listed = [t["id"] for t in legacy.json()["data"]]
        assert set(listed) >= {inf_id, surrogate_id, deep_id, broken_id}
        assert [t["id"] for t in openai.json()["data"]] == listed


def test_a_row_that_cannot_be_read_is_left_out_of_the_list_not_the_list(poisoned):
    server, ids = poisoned
    with server.client() as c:
        extra = c.post("/v1/video/generations", json={"model": M, "prompt": "unreadable"}).json()["id"]
        wait_for_task(c, extra)
        write_row(server, extra, status="no-such-status")
        for path in ("/v1/video/generations", "/v1/videos"):
            r = c.get(path, params={"limit": 100})
            assert r.status_code == 200, r.text
            listed = [t["id"] for t in r.json()["data"]]
            assert extra not in listed and set(ids) <= set(listed)
        # Pages stay full: the next task takes the bad row's place, and the cursor goes on from it.
        first = c.get("/v1/video/generations", params={"limit": 1}).json()
        assert [t["id"] for t in first["data"]] == [ids[-1]] and first["last_id"] == ids[-1] and first["has_more"]
        second = c.get("/v1/video/generations", params={"limit": 1, "after": ids[-1]}).json()
        assert [t["id"] for t in second["data"]] == [ids[-2]]
    assert "cannot be read; left out" in server.log()
