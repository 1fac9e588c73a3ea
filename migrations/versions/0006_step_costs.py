"""what steps cost on this installation, so that the ETA of a step not yet measured is known

`step_costs`: the last completed runs of each kind of step (e.g. `transcode`,
`transcribe/base`): the units of media and the seconds of the machine each had alone.
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
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("units", sa.Float(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_step_costs_key_id", "step_costs", ["key", "id"])
    # Plain ADD COLUMN of nullable columns: no table copy on SQLite.
    op.add_column("subtasks", sa.Column("cost_key", sa.String(80), nullable=True))
    op.add_column("subtasks", sa.Column("cost_units", sa.Float(), nullable=True))
    op.add_column("subtasks", sa.Column("expected_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subtasks", schema=None) as batch_op:
        batch_op.drop_column("expected_seconds")
        batch_op.drop_column("cost_units")
        batch_op.drop_column("cost_key")
    op.drop_index("ix_step_costs_key_id", table_name="step_costs")
    op.drop_table("step_costs")
