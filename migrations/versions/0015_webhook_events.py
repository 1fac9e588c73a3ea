"""webhook_events: the ends of runs to announce to WEBHOOK_URL

One row per task that ended (completed, failed, cancelled) while webhooks are configured,
written in the transaction that ends it (webapp/services/webhooks.py) and sent by the
workers (jobs/webhooks.py); `next_attempt_at` is when a sender may next try it (and its
lease while one does), indexed for the undelivered ones.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 09:40:00
"""
import sqlalchemy as sa
from alembic import op


revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_webhook_events_due", "webhook_events", ["next_attempt_at"],
                    sqlite_where=sa.text("delivered_at IS NULL"),
                    postgresql_where=sa.text("delivered_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_webhook_events_due", table_name="webhook_events")
    op.drop_table("webhook_events")
