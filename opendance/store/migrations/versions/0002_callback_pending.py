"""tasks.callback_pending: the status whose callback is not yet delivered (or given up)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows start with nothing pending: their callbacks were sent (or lost) before this
    # column existed, and a restart must not send them all again.
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("callback_pending", sa.String(20)))
    op.create_index("ix_tasks_callback_pending", "tasks", ["callback_pending"])


def downgrade() -> None:
    op.drop_index("ix_tasks_callback_pending", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("callback_pending")
