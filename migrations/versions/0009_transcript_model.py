"""which whisper model made the published transcript

`videos.transcript_model`: the WHISPER_MODEL (`base`, `tiny.en` or a model folder's path)
of the worker that made the video's published transcript, written with the transcript's
language when it is published. run_sync does not keep a transcript another model made.
Transcripts published before stay NULL: the model is unknown, and they are kept as before.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 18:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN of a nullable column: no table copy on SQLite.
    op.add_column("videos", sa.Column("transcript_model", sa.String(1024), nullable=True))


def downgrade() -> None:
    # In place, as 0008 (a batch copy of `videos` is refused once 0007's triggers exist).
    op.execute("ALTER TABLE videos DROP COLUMN transcript_model")
