"""task version for cheap progress polling (ETag), latest-task index with id

`processing_tasks.version` and `updated_at` are bumped by the progress service on every
change to a task or its subtasks, so a poll can tell "nothing changed" (304) from the task
row alone. `ix_tasks_video_created` gains `id`, the tie-breaker of "the latest task", so
that query reads one index entry instead of sorting the video's older tasks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch table copy): SQLite supports it, and a copy would have to
    # recreate the partial unique index as well.
    op.add_column("processing_tasks",
                  sa.Column("version", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.add_column("processing_tasks",
                  sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE processing_tasks SET updated_at = "
               "COALESCE(finished_at, started_at, created_at)")
    op.drop_index("ix_tasks_video_created", table_name="processing_tasks")
    op.create_index("ix_tasks_video_created", "processing_tasks",
                    ["video_id", "created_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_tasks_video_created", table_name="processing_tasks")
    op.create_index("ix_tasks_video_created", "processing_tasks",
                    ["video_id", "created_at"], unique=False)
    with op.batch_alter_table("processing_tasks", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("version")
