"""tasks.version: a counter the database bumps on every change of a row (a trigger), so the
API's hot reads can tell a memoised body is still right from two small columns

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# SQLite cannot assign NEW in a trigger: after the update, a second one bumps the counter. The
# WHEN leaves an UPDATE that sets version itself alone; the inner UPDATE does not fire the
# trigger again (recursive_triggers is off, and its version differs anyway). A batch migration
# that rebuilds the table later drops the trigger: it must create it again.
SQLITE_TRIGGER = """
CREATE TRIGGER tasks_version AFTER UPDATE ON tasks FOR EACH ROW WHEN NEW.version = OLD.version
BEGIN
    UPDATE tasks SET version = OLD.version + 1 WHERE seq = NEW.seq;
END
"""
POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION tasks_bump_version() RETURNS trigger AS $$
BEGIN
    IF NEW.version = OLD.version THEN
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql
"""
POSTGRES_TRIGGER = "CREATE TRIGGER tasks_version BEFORE UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION tasks_bump_version()"


def upgrade() -> None:
    # Existing rows start at 0; their next change makes them 1.
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="0"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_FUNCTION)
        op.execute(POSTGRES_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS tasks_version" + (" ON tasks" if op.get_bind().dialect.name == "postgresql" else ""))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS tasks_bump_version()")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("version")
