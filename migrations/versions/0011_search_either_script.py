"""the search index made again with today's terms

webapp/services/searchterms.py now folds every Chinese character to Simplified (OpenCC's
t2s, character by character), the katakana middle dot separates words, half-width katakana
is full-width kana, and a number in groups of thousands is one word (1,250,000 is 1250000).
The index is made again from the names and published transcripts already there (reading
transcript.json under MEDIA_ROOT, as 0007 did), so that today's queries find what was
indexed before. `flask reindex` does the same.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 00:30:00
"""
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from sqlalchemy.orm import Session

    from webapp.config import Settings
    from webapp.services import search
    from webapp.services.storage import Storage

    # No table search_languages before 0013, which rebuilds the index again and fills it.
    session = Session(bind=op.get_bind(), info={search.NOTE_LANGUAGES: False})
    search.rebuild(session, Storage(Settings.from_env().media_root), commit=False)
    session.flush()


def downgrade() -> None:
    # The terms stay folded: the code of 0010 finds them by the Simplified characters of
    # a query, and `flask reindex` there makes them as it made them.
    pass
