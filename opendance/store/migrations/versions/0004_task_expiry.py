"""tasks.expires_at (a deadline after which an unfinished task is EXPIRED) and tasks.api (the
API whose shape its callbacks carry)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing tasks have no deadline and send legacy task objects, as before.
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("expires_at", sa.Float()))
        batch.add_column(sa.Column("api", sa.String(16)))
    op.create_index("ix_tasks_expires_at", "tasks", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_expires_at", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("api")
        batch.drop_column("expires_at")
