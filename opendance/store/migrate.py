"""Bring a database to the newest schema with the Alembic migrations shipped in the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).parent / "migrations"


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several API servers start at once on one database: one migrates, the others wait
            # here (the lock ends with the transaction), then find the schema current.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7468735)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
