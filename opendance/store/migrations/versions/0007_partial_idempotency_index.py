"""ix_tasks_owner_idem holds only the rows that have an idempotency key

Most creates send no Idempotency-Key, yet every INSERT added an (owner, NULL) entry to this
unique index: one more B-tree page written to the WAL per create (bench/bench_http.py's create;
about a tenth of SQLite's part of it). NULL keys never collide in a unique index anyway, and
its readers (``get_by_idempotency_key``: owner = ? AND idempotency_key = ?) ask for a value,
which SQLite and PostgreSQL both answer from a partial index. A duplicate key still fails the
INSERT (``DuplicateIdempotencyKey``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

NAME = "ix_tasks_owner_idem"
COLUMNS = ["owner", "idempotency_key"]


def upgrade() -> None:
    op.drop_index(NAME, table_name="tasks")
    where = sa.text("idempotency_key IS NOT NULL")
    op.create_index(NAME, "tasks", COLUMNS, unique=True, sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    op.drop_index(NAME, table_name="tasks")
    op.create_index(NAME, "tasks", COLUMNS, unique=True)
