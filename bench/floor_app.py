"""The floor for ``bench_http.py``: the least a FastAPI + uvicorn server can do to answer the same
requests as opendance, on the same FastAPI, Starlette and uvicorn versions.

    python bench/floor_app.py --db floor.db --port 8001

``floor.db`` holds one row per task: its id and the exact JSON body opendance returns for it
(``bench_http.py`` copies them from opendance's GET responses). Then:

- ``GET /v1/video/generations/{id}``: one SQLite read by primary key, the stored body as is;
- ``GET /v1/video/generations?limit=20``: one indexed read of the newest 21 rows, the bodies
  joined into opendance's list object;
- ``POST /v1/video/generations``: the JSON body parsed, one row inserted and committed (WAL,
  ``synchronous=NORMAL``: opendance's SQLite settings), a queued task object returned.

The handlers are ``async def`` and read SQLite inline on the event loop (a primary-key read
takes microseconds): no thread-pool hop, no ORM, no middleware, no authentication, uvicorn's
default access log. It is a measuring stick, not a server to deploy.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sqlite3
import time
from pathlib import Path

from fastapi import FastAPI, Request, Response

SCHEMA = "CREATE TABLE IF NOT EXISTS tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)"
JSON = "application/json"
NOT_FOUND = b'{"error":{"message":"no such task","type":"invalid_request_error","param":"task_id","code":"task_not_found"}}'


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(SCHEMA)
    return db


def create_app(path: Path) -> FastAPI:
    db = connect(path)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/v1/video/generations/{task_id}")
    async def get_task(task_id: str) -> Response:
        row = db.execute("SELECT body FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            return Response(NOT_FOUND, status_code=404, media_type=JSON)
        return Response(row[0], media_type=JSON)

    @app.get("/v1/video/generations")
    async def list_tasks(limit: int = 20) -> Response:
        rows = db.execute("SELECT id, body FROM tasks ORDER BY seq DESC LIMIT ?", (limit + 1,)).fetchall()
        page = rows[:limit]
        first, last = (json.dumps(page[0][0]), json.dumps(page[-1][0])) if page else ("null", "null")
        more = "true" if len(rows) > limit else "false"
        body = (
            f'{{"object":"list","data":[{",".join(r[1] for r in page)}],"first_id":{first},"last_id":{last},"has_more":{more}}}'
        )
        return Response(body, media_type=JSON)

    @app.post("/v1/video/generations")
    async def create_task(request: Request) -> Response:
        body = json.loads(await request.body())
        task = {
            "id": f"cgt-{secrets.token_hex(12)}",
            "object": "video.generation.job",
            "model": body.get("model"),
            "status": "queued",
            "progress": 0,
            "created_at": int(time.time()),
        }
        text = json.dumps(task, separators=(",", ":"))
        db.execute("INSERT INTO tasks (id, body) VALUES (?, ?)", (task["id"], text))
        return Response(text, media_type=JSON)

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info", help="info keeps uvicorn's access log, as opendance's default does")
    args = parser.parse_args()
    uvicorn.run(create_app(args.db), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
