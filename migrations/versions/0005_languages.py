"""the language of transcriptions: asked for (video, task), detected (video), translation

`videos.requested_language` / `videos.translate`: how the video's runs transcribe (NULL
detects the language; translate adds English captions), given at upload or by a trigger.
`processing_tasks.language` / `translate`: what a run asked for, so that run_sync keeps a
transcript only when it was made the same way. `videos.language` /
`language_probability`: the published transcript's language and whisper's confidence in
it. Rows from before stay NULL / false: auto-detection without translation, which is what
their runs did.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 13:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, or with a constant default): no table copy on SQLite.
    op.add_column("videos", sa.Column("requested_language", sa.String(16), nullable=True))
    op.add_column("videos", sa.Column("translate", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    op.add_column("videos", sa.Column("language", sa.String(16), nullable=True))
    op.add_column("videos", sa.Column("language_probability", sa.Float(), nullable=True))
    op.add_column("processing_tasks", sa.Column("language", sa.String(16), nullable=True))
    op.add_column("processing_tasks", sa.Column("translate", sa.Boolean(), nullable=False,
                                                server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("processing_tasks", schema=None) as batch_op:
        batch_op.drop_column("translate")
        batch_op.drop_column("language")
    with op.batch_alter_table("videos", schema=None) as batch_op:
        batch_op.drop_column("language_probability")
        batch_op.drop_column("language")
        batch_op.drop_column("translate")
        batch_op.drop_column("requested_language")
