"""full-text search over every video's name and published transcript

`search_entries`: one row per searchable text of a video (its name, each segment of its
published transcript) with the terms search matches (webapp/services/searchterms.py).
PostgreSQL: `terms` is a tsvector under a GIN index. SQLite: `terms` holds the terms as
text and the FTS5 table `search_fts` indexes them (external content, kept in step by the
triggers below); its tokenizer only splits at spaces and separators, as the terms are made
in Python the same way for both databases.

The upgrade fills the index from the names and the published transcripts already there
(reading transcript.json under MEDIA_ROOT, like revision 0003), with the service's own
code: the terms must be the ones today's queries are made of. `flask reindex` does the same
at any time.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:00:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TSVECTOR

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# FTS5 on the terms column of search_entries; unicode61 with the categories that
# searchterms.kind() calls word characters, and no accent folding of its own.
_FTS5 = """CREATE VIRTUAL TABLE search_fts USING fts5(
    terms, content='search_entries', content_rowid='id', columnsize=0,
    tokenize="unicode61 remove_diacritics 0 categories 'L* N* Co M*'")"""
# The documented way of keeping an external-content FTS5 table in step with its table.
_TRIGGERS = (
    """CREATE TRIGGER search_entries_ai AFTER INSERT ON search_entries BEGIN
        INSERT INTO search_fts(rowid, terms) VALUES (new.id, new.terms);
    END""",
    """CREATE TRIGGER search_entries_ad AFTER DELETE ON search_entries BEGIN
        INSERT INTO search_fts(search_fts, rowid, terms) VALUES ('delete', old.id, old.terms);
    END""",
    """CREATE TRIGGER search_entries_au AFTER UPDATE ON search_entries BEGIN
        INSERT INTO search_fts(search_fts, rowid, terms) VALUES ('delete', old.id, old.terms);
        INSERT INTO search_fts(rowid, terms) VALUES (new.id, new.terms);
    END""",
)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "search_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("video_id", sa.String(36), sa.ForeignKey("videos.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("start_time", sa.Float(), nullable=True),
        sa.Column("end_time", sa.Float(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("terms", sa.Text() if sqlite else TSVECTOR(), nullable=False),
    )
    op.create_index("ix_search_entries_video", "search_entries",
                    ["video_id", "kind", "position"])
    if sqlite:
        op.execute(_FTS5)
        for trigger in _TRIGGERS:
            op.execute(trigger)
    else:
        op.create_index("ix_search_entries_terms", "search_entries", ["terms"],
                        postgresql_using="gin")
    _fill()


def _fill() -> None:
    from sqlalchemy.orm import Session

    from webapp.config import Settings
    from webapp.services import search
    from webapp.services.storage import Storage

    # No table search_languages before 0013, which rebuilds the index again and fills it.
    session = Session(bind=op.get_bind(), info={search.NOTE_LANGUAGES: False})
    search.rebuild(session, Storage(Settings.from_env().media_root), commit=False)
    session.flush()


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("search_entries_au", "search_entries_ad", "search_entries_ai"):
            op.execute(f"DROP TRIGGER {trigger}")
        op.execute("DROP TABLE search_fts")
    else:
        op.drop_index("ix_search_entries_terms", table_name="search_entries")
    op.drop_index("ix_search_entries_video", table_name="search_entries")
    op.drop_table("search_entries")
