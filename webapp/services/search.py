"""Full-text search over videos' names and published transcripts, in the database itself.

One table, `search_entries` (webapp.models.SearchEntry, migration 0007), holds a row per
searchable text: a video's name (written at upload), each segment of its published
transcript and each segment of that transcript's English translation, if the task asked
for one (written by the progress service in the transaction that publishes the
transcript, so the index always says what readers see; replaced by the next publication,
gone with the video through its foreign key). SQLite matches through FTS5, PostgreSQL
through a tsvector under a GIN index; the terms of both come from webapp.services.
searchterms, so both find the same things.

A video matches when its name, or one segment of its transcript or translation, holds
every unit of the query: a person who searches in English finds what was said in German.
Best first: a match in the name, then more matching segments, then newer videos.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, cast, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webapp.models import Publication, SearchEntry, SearchLanguage, Video
from webapp.services import results, searchterms, stemming
from webapp.services.errors import InvalidQuery
from webapp.services.storage import Storage

log = logging.getLogger(__name__)

MAX_QUERY = 200  # characters
SHOWN_SEGMENTS = 3  # matching segments shown per video, earliest first
# The kinds of entries: a video's name, a segment of its transcript, and a segment of the
# transcript's English translation (whisper's translate task; `kind` holds 8 characters).
NAME, SEGMENT, ENGLISH = "name", "segment", "english"
# An offset past any real result, and too big for some databases' integers.
_MAX_OFFSET = 2**31


@dataclass(frozen=True)
class Moment:
    """A matching segment: of the transcript, or of its English translation."""

    start: float
    end: float
    text: str
    translation: bool = False


@dataclass(frozen=True)
class Hit:
    video: Video
    in_name: bool  # the name holds the whole query
    segment_count: int  # segments of its transcript or translation that hold the whole query
    segments: list[Moment] = field(default_factory=list)  # the first SHOWN_SEGMENTS of them


# -- writing the index (in the caller's transaction) -----------------------------------------

# Session.info key: False while migrations 0007, 0011 and 0012 rebuild the index with today's
# code, before 0013 has made the table search_languages. Noting a language there failed the
# upgrade of every database older than 0011 holding a transcribed video ("no such table:
# search_languages"); 0013 rebuilds the index again and notes them.
NOTE_LANGUAGES = "search_languages"

def _insert(session: Session, video_id: str, rows: Sequence[tuple],
            language: str | None) -> None:
    """Insert entries (kind, position, start, end, text) of a video with their terms, the
    stems of their words where Snowball knows `language`."""
    if not rows:
        return
    postgres = session.get_bind().dialect.name == "postgresql"
    if stemming.stems(language) and session.info.get(NOTE_LANGUAGES, True):
        _note_language(session, language, postgres)
    terms_of = searchterms.tsvector if postgres else " ".join
    stmt = insert(SearchEntry)
    if postgres:  # the literal is parsed as a tsvector, never by a text search parser
        stmt = stmt.values(terms=cast(bindparam("literal"), TSVECTOR))
    session.execute(stmt, [
        {"video_id": video_id, "kind": kind, "position": position, "start_time": start,
         "end_time": end, "text": shown,
         ("literal" if postgres else "terms"): terms_of(searchterms.index_terms(shown,
                                                                                language))}
        for kind, position, start, end, shown in rows])


def _note_language(session: Session, language: str, postgres: bool) -> None:
    """Record that the index holds stems of `language` (once: a row that exists stays)."""
    insert_ = postgresql.insert if postgres else sqlite.insert
    session.execute(insert_(SearchLanguage).values(language=language)
                    .on_conflict_do_nothing(index_elements=["language"]))


def _remove(session: Session, video_id: str, *kinds: str) -> None:
    """Remove the video's entries of these kinds (of every kind without one)."""
    which = [SearchEntry.video_id == video_id]
    if kinds:
        which.append(SearchEntry.kind.in_(kinds))
    session.execute(delete(SearchEntry).where(*which)
                    .execution_options(synchronize_session=False))


def index_name(session: Session, video_id: str, name: str, language: str | None) -> None:
    """Index the video's name, in the caller's transaction: at upload (with the language
    asked for, if any), and again with its transcript's language (`replace_transcript`)."""
    _remove(session, video_id, NAME)
    _insert(session, video_id, [(NAME, 0, None, None, name)], language)


def text_language(session: Session, video_id: str) -> str | None:
    """The language the video's words are indexed in: its published transcript's, else the
    one asked for at upload (None: neither is known, the words are indexed as they are)."""
    return session.scalar(select(func.coalesce(Video.language, Video.requested_language))
                          .where(Video.id == video_id))


def _rows(kind: str, segments: Iterable[tuple[float, float, str]]) -> list[tuple]:
    return [(kind, i, float(start), float(end), str(shown))
            for i, (start, end, shown) in enumerate(segments) if str(shown).strip()]


def replace_transcript(session: Session, video_id: str,
                       segments: Iterable[tuple[float, float, str]],
                       translation: Iterable[tuple[float, float, str]] = ()) -> int:
    """Index a newly published transcript's segments (start, end, text), and those of its
    English translation, in place of the video's earlier ones (a transcript published
    without a translation leaves none of the earlier one), in the caller's transaction (the
    one that publishes it, after it wrote the transcript's language on the video): the
    transcript in that language, the translation in English, and the video's name again
    in the transcript's language. The number of the transcript's segments indexed."""
    language = text_language(session, video_id)
    rows = _rows(SEGMENT, segments)
    _remove(session, video_id, SEGMENT, ENGLISH)
    _insert(session, video_id, rows, language)
    _insert(session, video_id, _rows(ENGLISH, translation), "en")
    name = session.scalar(select(Video.original_filename).where(Video.id == video_id))
    if name is not None:
        index_name(session, video_id, name, language)
    return len(rows)


def reindex_video(session: Session, storage: Storage, video_id: str) -> int | None:
    """Index one video again from its name and its published transcript, in the caller's
    transaction: the number of segments indexed, None if the video is gone.

    Its transcript's publication row is locked first (a no-op UPDATE: the row lock on
    PostgreSQL, the write lock on SQLite), in the order of the progress service, so a
    transcript published meanwhile is either read here or indexed after this.
    """
    session.execute(update(Publication)
                    .where(Publication.video_id == video_id, Publication.step == "transcribe")
                    .values(folder=Publication.folder)
                    .execution_options(synchronize_session=False))
    name = session.scalar(select(Video.original_filename).where(Video.id == video_id))
    if name is None:
        return None
    _remove(session, video_id)
    pub = session.get(Publication, (video_id, "transcribe"), populate_existing=True)
    found = storage.artifact_in(video_id, pub.folder, "transcript.json") if pub else None
    transcript = results.transcript(found, video_id)
    lines = transcript.lines if transcript else []
    translation = transcript.translation if transcript else []
    return replace_transcript(session, video_id, ((ln.start, ln.end, ln.text) for ln in lines),
                              ((ln.start, ln.end, ln.text) for ln in translation))


@dataclass
class Rebuilt:
    videos: int = 0
    segments: int = 0
    vanished: int = 0  # deleted while the rebuild ran


def rebuild(session: Session, storage: Storage, *, commit: bool = True) -> Rebuilt:
    """Index every video again (`flask reindex`, migration 0007). With `commit`, each
    video in a transaction of its own, so workers publishing meanwhile wait for one video
    at most; without, all in the caller's transaction."""
    done = Rebuilt()
    ids = list(session.scalars(select(Video.id).order_by(Video.created_at, Video.id)))
    if commit:
        session.rollback()
    for video_id in ids:
        try:
            segments = reindex_video(session, storage, video_id)
            if commit:
                session.commit()
        except IntegrityError:  # deleted between the read and the insert
            if not commit:
                raise
            session.rollback()
            segments = None
        if segments is None:
            done.vanished += 1
        else:
            done.videos += 1
            done.segments += segments
    if commit and session.get_bind().dialect.name == "sqlite":
        # Merge the FTS5 index's segments: what a rebuild leaves behind is read fastest.
        session.execute(text("INSERT INTO search_fts(search_fts) VALUES ('optimize')"))
        session.commit()
    return done


# -- queries -----------------------------------------------------------------------------------

_MATCHING = {  # the entries holding every unit of the query; the parameter q
    "sqlite": ("SELECT e.* FROM search_fts JOIN search_entries e ON e.id = search_fts.rowid"
               " WHERE search_fts MATCH :q"),
    "postgresql": "SELECT e.* FROM search_entries e WHERE e.terms @@ CAST(:q AS tsquery)",
}
_PAGE = """WITH hits AS ({matching}),
per_video AS (
  SELECT video_id, MAX(CASE WHEN kind = 'name' THEN 1 ELSE 0 END) AS in_name,
         SUM(CASE WHEN kind = 'name' THEN 0 ELSE 1 END) AS segments
  FROM hits GROUP BY video_id)
SELECT p.video_id, p.in_name, p.segments, COUNT(*) OVER () AS total
FROM per_video p JOIN videos v ON v.id = p.video_id
ORDER BY p.in_name DESC, p.segments DESC, v.created_at DESC, v.id
LIMIT :limit OFFSET :offset"""
_COUNT = "SELECT COUNT(DISTINCT h.video_id) FROM ({matching}) h"
# Earliest first; at the same moment, the transcript's line before its translation's.
_SEGMENTS = """WITH hits AS ({matching} AND e.kind <> 'name' AND e.video_id IN :ids),
ranked AS (
  SELECT video_id, kind, start_time, end_time, text,
         ROW_NUMBER() OVER (PARTITION BY video_id
                            ORDER BY start_time, kind DESC, position) AS n
  FROM hits)
SELECT video_id, kind, start_time, end_time, text FROM ranked WHERE n <= :shown
ORDER BY video_id, n"""


def parse(query: str | None, languages: Iterable[str | None] = ()) -> list[searchterms.Unit]:
    """The units of a query, its words standing for their stems in `languages` too;
    InvalidQuery (422) when it is empty, too long, or has no letter or digit to search
    for."""
    query = query or ""
    if len(query) > MAX_QUERY:
        raise InvalidQuery(f"the search text is {len(query)} characters long; at most "
                           f"{MAX_QUERY} are searched")
    if not query.strip():
        raise InvalidQuery("the search text is empty: give a word to search for")
    units = searchterms.query_units(query, languages)
    if not units:
        raise InvalidQuery("the search text has no letter or digit to search for")
    return units


def _match_expression(dialect: str, units: list[searchterms.Unit]) -> str:
    return searchterms.tsquery(units) if dialect == "postgresql" else \
        searchterms.fts5_query(units)


def search(session: Session, query: str | None, page: int,
           page_size: int) -> tuple[list[Hit], int]:
    """One page of the videos matching `query`, best first, and how many match in all."""
    units = parse(query, stemmed_languages(session))
    dialect = session.get_bind().dialect.name
    matching = _MATCHING[dialect]
    q = _match_expression(dialect, units)
    offset = (page - 1) * page_size
    rows = [] if offset >= _MAX_OFFSET else session.execute(
        text(_PAGE.format(matching=matching)),
        {"q": q, "limit": page_size, "offset": offset}).all()
    if rows:
        total = rows[0].total
    else:  # past the end (or nothing at all): still say how many there are
        total = session.scalar(text(_COUNT.format(matching=matching)), {"q": q}) or 0
    if not rows:
        return [], total
    ids = [row.video_id for row in rows]
    videos = {v.id: v for v in session.scalars(select(Video).where(Video.id.in_(ids)))}
    segments: dict[str, list[Moment]] = {video_id: [] for video_id in ids}
    if any(row.segments for row in rows):
        stmt = text(_SEGMENTS.format(matching=matching)).bindparams(
            bindparam("ids", expanding=True))
        for found in session.execute(stmt, {"q": q, "ids": ids, "shown": SHOWN_SEGMENTS}):
            segments[found.video_id].append(Moment(found.start_time, found.end_time,
                                                   found.text, found.kind == ENGLISH))
    hits = [Hit(videos[row.video_id], bool(row.in_name), int(row.segments),
                segments[row.video_id])
            for row in rows if row.video_id in videos]
    return hits, total


def marked(text_: str, query: str, language: str | None = None) -> list[tuple[str, bool]]:
    """`text_` (in `language`: its words match a query word of the same stem) in pieces,
    True for those that match `query` (for <mark> in pages)."""
    return searchterms.marked(text_, searchterms.query_units(query, [language]), language)


def marked_if_matching(text_: str, query: str,
                       language: str | None = None) -> list[tuple[str, bool]] | None:
    """`text_` in pieces as `marked` cuts it when it holds every unit of `query` (a line
    the search counts as matching); None when it does not, or the query has no unit."""
    units = searchterms.query_units(query, [language])
    if not units or not all(any(hit for _, hit in searchterms.marked(text_, [unit], language))
                            for unit in units):
        return None
    return searchterms.marked(text_, units, language)


def stemmed_languages(session: Session) -> list[str]:
    """The languages whose stems the index holds (a query's words stand for their stems in
    each), and English, the commonest; one read of a few rows (table search_languages, not
    the videos' languages: a DISTINCT over 10 000 videos cost every search 2-5 ms)."""
    found = session.scalars(select(SearchLanguage.language))
    return sorted({"en", *found})


def index_size(session: Session) -> int:
    """Bytes the index takes in the database: its table, the table's indexes and, on
    SQLite, the FTS5 index's shadow tables."""
    if session.get_bind().dialect.name == "postgresql":
        return int(session.scalar(text(
            "SELECT pg_total_relation_size(CAST('search_entries' AS regclass))")) or 0)
    return int(session.scalar(text(
        "SELECT SUM(pgsize) FROM dbstat WHERE name IN ('search_entries', "
        "'ix_search_entries_video') OR name LIKE 'search_fts%'")) or 0)
