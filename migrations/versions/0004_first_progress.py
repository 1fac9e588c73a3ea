"""a step attempt's first progress report, so that its pace leaves out the tool's start-up

`subtasks.first_progress_at` / `first_progress`: when the running attempt first reported
progress above 0, and how much. The ETA (webapp/services/eta.py) measures a step's pace from
there instead of from `started_at`, which counted ffmpeg's and whisper's start-up as slow
work. Both stay NULL for steps that ended before this revision (their pace is not needed).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 12:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN of nullable columns: no table copy on SQLite.
    op.add_column("subtasks", sa.Column("first_progress_at", sa.DateTime(timezone=True),
                                        nullable=True))
    op.add_column("subtasks", sa.Column("first_progress", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subtasks", schema=None) as batch_op:
        batch_op.drop_column("first_progress")
        batch_op.drop_column("first_progress_at")
