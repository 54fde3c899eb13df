"""tasks and meta tables

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("mode", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("raw_status", sa.String(20), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float()),
        sa.Column("completed_at", sa.Float()),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text()),
        sa.Column("error_type", sa.String(64)),
        sa.Column("duration", sa.Integer(), nullable=False),
        sa.Column("aspect_ratio", sa.String(8), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("fps", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("engine", sa.String(200), nullable=False),
        sa.Column("job", sa.JSON(), nullable=False),
        sa.Column("extra_body", sa.JSON(), nullable=False),
        sa.Column("callback_url", sa.Text()),
        sa.Column("base_url", sa.Text(), nullable=False),
        sa.Column("video_key", sa.String(300)),
        sa.Column("last_frame_key", sa.String(300)),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("engine_seconds", sa.Float()),
        sa.Column("idempotency_key", sa.String(300)),
        sa.Column("request_hash", sa.String(64)),
    )
    op.create_index("ix_tasks_owner_seq", "tasks", ["owner", "seq"])
    op.create_index("ix_tasks_raw_status", "tasks", ["raw_status"])
    op.create_index("ix_tasks_owner_idem", "tasks", ["owner", "idempotency_key"], unique=True)
    op.create_table(
        "meta",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_table("tasks")
