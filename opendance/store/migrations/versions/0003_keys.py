"""api_keys: keys made in the store (only their hashes), with their limits and models;
usage_rollup: what deleted tasks add up to, per owner, day and model

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("hint", sa.String(16), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("max_concurrent", sa.Integer()),
        sa.Column("seconds_per_day", sa.Integer()),
        sa.Column("models", sa.JSON()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_used_at", sa.Float()),
        sa.Column("revoked_at", sa.Float()),
    )
    op.create_index("ix_api_keys_owner", "api_keys", ["owner"])
    op.create_table(
        "usage_rollup",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("video_seconds", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("cancelled", sa.Integer(), nullable=False),
        sa.Column("expired", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_rollup")
    op.drop_table("api_keys")
