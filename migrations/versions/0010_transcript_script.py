"""which Chinese script the published transcript is written in

`videos.transcript_script`: the CHINESE_SCRIPT (`simplified` or `traditional`) of the
worker that published a Chinese transcript, NULL for a transcript in any other language
and for Chinese ones published before it was recorded. run_sync does not keep a Chinese
transcript written in the other script than the one now configured.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 17:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN of a nullable column, as 0009: no table copy on SQLite.
    op.add_column("videos", sa.Column("transcript_script", sa.String(16), nullable=True))


def downgrade() -> None:
    # In place, as 0009 (a batch copy of `videos` is refused once 0007's triggers exist).
    op.execute("ALTER TABLE videos DROP COLUMN transcript_script")
