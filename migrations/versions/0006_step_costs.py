"""what steps cost on this installation, so that the ETA of a step not yet measured is known

`step_costs`: per kind of step (e.g. `transcode`, `transcribe/base`), the seconds of the
machine alone it took per unit of media, a moving average over its completed runs.
`subtasks.cost_key` / `cost_units` / `expected_seconds`: written when a task is made, from
that table (webapp/services/calibration.py), so that the ETA stays a function of the task's
own rows. Rows from before stay NULL: their ETA is estimated as before, from the task alone.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 16:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "step_costs",
        sa.Column("key", sa.String(80), primary_key=True),
        sa.Column("seconds_per_unit", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Plain ADD COLUMN of nullable columns: no table copy on SQLite.
    op.add_column("subtasks", sa.Column("cost_key", sa.String(80), nullable=True))
    op.add_column("subtasks", sa.Column("cost_units", sa.Float(), nullable=True))
    op.add_column("subtasks", sa.Column("expected_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subtasks", schema=None) as batch_op:
        batch_op.drop_column("expected_seconds")
        batch_op.drop_column("cost_units")
        batch_op.drop_column("cost_key")
    op.drop_table("step_costs")
