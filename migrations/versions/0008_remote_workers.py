"""workers on other hosts: the source's sha256, and which worker ran each step

`videos.sha256`: the hex sha256 of the stored source, recorded at upload, against which a
worker on another host checks what it downloaded (webapp/internal.py). Sources uploaded
before stay NULL until a worker first needs them: the web app computes it then and records
it (no migration reads every source). `subtasks.worker`: the name of the worker (its host)
that ran the step's latest attempt, shown per step in the API and the UI.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN of nullable columns: no table copy on SQLite.
    op.add_column("videos", sa.Column("sha256", sa.String(64), nullable=True))
    op.add_column("subtasks", sa.Column("worker", sa.String(200), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN in place (SQLite 3.35+ has it): a batch copy of `videos`
    # must DROP the table, which SQLite refused ("database table is locked") once 0007's
    # search tables and triggers existed.
    op.execute("ALTER TABLE subtasks DROP COLUMN worker")
    op.execute("ALTER TABLE videos DROP COLUMN sha256")
