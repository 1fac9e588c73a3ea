"""the English translations of published transcripts indexed for search

The transcribe step of a task run with `translate` writes an English translation into
transcript.json (and captions.en.vtt/.srt); search now indexes its segments too, as
entries of kind 'english' (search_entries.kind, 8 characters, holds it: no change of
schema). The videos whose published transcript.json holds a translation are indexed again
from it (reading it under MEDIA_ROOT, as 0013 did); the others have none to add.
`flask reindex` does the same for every video.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 07:30:00
"""
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from webapp.config import Settings
    from webapp.models import Publication
    from webapp.services import results, search
    from webapp.services.storage import Storage

    session = Session(bind=op.get_bind())
    storage = Storage(Settings.from_env().media_root)
    published = session.execute(select(Publication.video_id, Publication.folder)
                                 .where(Publication.step == "transcribe")).all()
    for video_id, folder in published:
        found = storage.artifact_in(video_id, folder, "transcript.json")
        transcript = results.transcript(found, video_id)
        if transcript is not None and transcript.translation:
            search.reindex_video(session, storage, video_id)
    session.flush()


def downgrade() -> None:
    # 0013's code neither finds nor shows entries of kind 'english': they go.
    op.execute("DELETE FROM search_entries WHERE kind = 'english'")
