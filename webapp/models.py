"""Typed SQLAlchemy models: videos, processing tasks, their subtasks, published outputs and
the search index."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ACTIVE_STATUSES = ("queued", "running")
TASK_STATUSES = ("pending", "queued", "running", "completed", "failed", "cancelled")
SUBTASK_STATUSES = ("pending", "running", "completed", "failed", "skipped", "cancelled")
SUBTASK_DONE = ("completed", "skipped")
SUBTASK_FINAL = ("completed", "skipped", "failed", "cancelled")

_ACTIVE_SQL = text("status IN ('queued', 'running')")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    pass


class Video(Base):
    __tablename__ = "videos"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    original_filename: Mapped[str] = mapped_column(String(255))
    stored_name: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format_name: Mapped[str] = mapped_column(String(64))
    duration: Mapped[float | None] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    has_audio: Mapped[bool]
    has_video: Mapped[bool]
    video_codec: Mapped[str | None] = mapped_column(String(32))
    audio_codec: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # How its runs transcribe (given at upload or by the latest trigger that gave them):
    # the spoken language as a Whisper code, None to detect it; and whether to add English
    # captions translated by whisper.
    requested_language: Mapped[str | None] = mapped_column(String(16))
    translate: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The language of the published transcript (detected or asked for) and whisper's
    # probability for it; written when that transcript is published.
    language: Mapped[str | None] = mapped_column(String(16))
    language_probability: Mapped[float | None] = mapped_column(Float)
    # The whisper model (WHISPER_MODEL of the worker) that made the published transcript,
    # written with it; NULL for transcripts published before it was recorded.
    transcript_model: Mapped[str | None] = mapped_column(String(1024))
    # The script (CHINESE_SCRIPT) a published Chinese transcript is written in; NULL for
    # other languages and for Chinese transcripts published before it was recorded.
    transcript_script: Mapped[str | None] = mapped_column(String(16))
    # The stored source's hex sha256, recorded at upload (NULL for sources uploaded before
    # it was: computed when a worker on another host first needs it, webapp/internal.py).
    sha256: Mapped[str | None] = mapped_column(String(64))

    tasks: Mapped[list[ProcessingTask]] = relationship(
        back_populates="video", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (Index("ix_videos_created_at", "created_at"),)


class ProcessingTask(Base):
    __tablename__ = "processing_tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    video_id: Mapped[str] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"))
    mode: Mapped[str] = mapped_column(String(16))  # run_sync | reprocess
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Bumped (with updated_at) by the progress service on every change to the task or any of
    # its subtasks: (id, version) identifies what a progress poll would show (its ETag).
    version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The transcription this run asks for (the video's settings when it was triggered):
    # None detects the language. run_sync keeps a transcript only if the run that made it
    # asked for the same.
    language: Mapped[str | None] = mapped_column(String(16))
    translate: Mapped[bool] = mapped_column(default=False, server_default=false())

    video: Mapped[Video] = relationship(back_populates="tasks")
    subtasks: Mapped[list[SubTask]] = relationship(
        back_populates="task",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="SubTask.position",
    )

    __table_args__ = (
        # The latest task of a video (ORDER BY created_at DESC, id DESC LIMIT 1) straight
        # from the index, without sorting that video's older tasks.
        Index("ix_tasks_video_created", "video_id", "created_at", "id"),
        # The database itself guarantees at most one active task per video.
        Index(
            "uq_tasks_one_active_per_video",
            "video_id",
            unique=True,
            sqlite_where=_ACTIVE_SQL,
            postgresql_where=_ACTIVE_SQL,
        ),
    )


class SubTask(Base):
    __tablename__ = "subtasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("processing_tasks.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    weight: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    reused: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)  # one sentence for people
    error_detail: Mapped[str | None] = mapped_column(Text)  # the tool's own words, for bugs
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The attempt's first progress report above 0: when, and at what percent. A pace
    # measured from here leaves out the tool's start-up (webapp/services/eta.py).
    first_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    first_progress: Mapped[float | None] = mapped_column(Float)
    # What the step costs on this installation (webapp/services/calibration.py), written
    # when the task is made: the key of its history, the media it works on in that
    # history's units, and the seconds alone it is expected to take (NULL: no history yet).
    cost_key: Mapped[str | None] = mapped_column(String(80))
    cost_units: Mapped[float | None] = mapped_column(Float)
    expected_seconds: Mapped[float | None] = mapped_column(Float)
    # The worker (its WORKER_NAME, by default its host name) that runs or ran the latest
    # attempt: which host did the work.
    worker: Mapped[str | None] = mapped_column(String(200))

    task: Mapped[ProcessingTask] = relationship(back_populates="subtasks")

    __table_args__ = (UniqueConstraint("task_id", "name", name="uq_subtasks_task_name"),)


class StepCost(Base):
    """One completed run of a kind of step on this installation: the units of media it
    worked on and the seconds of the machine it had to itself (the last few per kind are
    kept; webapp/services/calibration.py)."""

    __tablename__ = "step_costs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(80))
    units: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_step_costs_key_id", "key", "id"),)


class Publication(Base):
    """Which attempt's files are the video's outputs of one step: what every reader sees.

    A run writes each attempt of a step into a folder of its own (`folder`, relative to the
    video's folder); the row switches to it in the transaction that marks that attempt's
    step completed, so readers only ever see complete sets that a completed step produced.
    """

    __tablename__ = "publications"

    video_id: Mapped[str] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"),
                                          primary_key=True)
    step: Mapped[str] = mapped_column(String(32), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("processing_tasks.id", ondelete="CASCADE"),
                                         index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    folder: Mapped[str] = mapped_column(String(200))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SearchEntry(Base):
    """One searchable text of a video: its name, or a segment of its published transcript
    or of that transcript's English translation.

    `terms` is what search matches (webapp/services/searchterms.py): on PostgreSQL a
    tsvector under a GIN index; on SQLite the terms as text, indexed by the FTS5 table
    `search_fts` (external content: this table), kept in step by triggers. Both are made by
    migration 0007; webapp/services/search.py writes and queries them.
    """

    __tablename__ = "search_entries"

    # INTEGER PRIMARY KEY on SQLite: the rowid that search_fts refers to.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"),
                                    primary_key=True, autoincrement=True)
    video_id: Mapped[str] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"))
    # name | segment | english (a segment of the transcript's English translation)
    kind: Mapped[str] = mapped_column(String(8))
    position: Mapped[int] = mapped_column(Integer)  # the segment's index in the transcript
    start_time: Mapped[float | None] = mapped_column(Float)  # seconds; None for the name
    end_time: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)  # as shown
    terms: Mapped[str] = mapped_column(TSVECTOR().with_variant(Text(), "sqlite"))

    # (and on PostgreSQL the GIN index ix_search_entries_terms: migration 0007)
    __table_args__ = (Index("ix_search_entries_video", "video_id", "kind", "position"),)


class SearchLanguage(Base):
    """A language whose stems the search index holds (webapp/services/stemming.py), added
    when an entry is first indexed in it (migration 0013). A query's words stand for their
    stems in each; a few rows, read by every search instead of the videos' languages."""

    __tablename__ = "search_languages"

    language: Mapped[str] = mapped_column(String(16), primary_key=True)


class WebhookEvent(Base):
    """A run's end to announce to WEBHOOK_URL (webapp/services/webhooks.py): written in the
    transaction that ends the task, so none is lost and none is told that did not happen,
    and sent by the workers' senders (jobs/webhooks.py) until the receiver takes it
    (migration 0015). `next_attempt_at` doubles as a lease: a sender moves it ahead before
    it sends, so two senders do not send one event at once."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    type: Mapped[str] = mapped_column(String(32))
    task_id: Mapped[str] = mapped_column(String(36))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_webhook_events_due", "next_attempt_at",
              sqlite_where=text("delivered_at IS NULL"),
              postgresql_where=text("delivered_at IS NULL")),
    )
