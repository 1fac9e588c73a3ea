"""the search index made again: Thai, Lao, Khmer and Burmese cut into dictionary words,
and words indexed by their stems in the transcript's language

webapp/services/searchterms.py now cuts a run of Thai, Lao, Khmer or Burmese letters into
its dictionary words (ICU's word BreakIterator), each a term, where it made the whole run
(a sentence, as these scripts write no spaces between words) one term cut at 64
characters; it no longer folds these scripts by NFKC, and their repetition marks (ๆ, ໆ, ៗ)
separate words. And the words of a video whose language Snowball knows (its transcript's,
or the one asked for at upload) are indexed by their stems (webapp/services/stemming.py:
"reports" as "report"; the table search_languages lists the languages it holds stems
of). The index is made again from the names and published transcripts
already there (reading transcript.json under MEDIA_ROOT, as 0012 did), so that today's
queries find a word inside what was indexed before (ภาษา in ฉันชอบภาษาไทยมาก) and every
form of a word ("report" finds "reports"). `flask reindex` does the same.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 06:50:00
"""
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    # The languages whose stems the index holds (webapp.models.SearchLanguage), filled by
    # the rebuild below as it indexes each video in its language.
    op.create_table("search_languages",
                    sa.Column("language", sa.String(length=16), primary_key=True))

    from webapp.config import Settings
    from webapp.services import search
    from webapp.services.storage import Storage

    session = Session(bind=op.get_bind())
    search.rebuild(session, Storage(Settings.from_env().media_root), commit=False)
    session.flush()


def downgrade() -> None:
    # The terms stay as made here: the code of 0012 looks a Thai sentence up whole, which
    # these words do not hold, and a word as it is written, not its stem; `flask reindex`
    # run with that code makes them as it did.
    op.drop_table("search_languages")
