"""How progress is read: latest and active task, poll tags, one-query reads, page prefetch."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from types import SimpleNamespace

from sqlalchemy import and_, bindparam, case, event, func, or_, select
from sqlalchemy.orm import Session

from webapp.models import ACTIVE_STATUSES, ProcessingTask, SubTask, Video
from webapp.services.errors import NotFound, no_such_id
from webapp.services.progress.views import ProgressView, _view, initial_view
from webapp.services.storage import is_valid_id


def latest_task(session: Session, video_id: str) -> ProcessingTask | None:
    stmt = (
        select(ProcessingTask)
        .where(ProcessingTask.video_id == video_id)
        .order_by(ProcessingTask.created_at.desc(), ProcessingTask.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def active_task(session: Session, video_id: str) -> ProcessingTask | None:
    stmt = select(ProcessingTask).where(
        ProcessingTask.video_id == video_id, ProcessingTask.status.in_(ACTIVE_STATUSES)
    )
    return session.scalars(stmt).first()


def video_progress(session: Session, video: Video, weights: Mapping[str, float]) -> ProgressView:
    """Progress of the video's latest task, or its initial state.

    Read in one statement, like the progress endpoint's (`tagged_progress`): the task row
    and its subtasks from one snapshot. Read as an ORM task and then its subtasks (two
    statements), a step starting in between gave a status of one moment and a total of
    another, and the video's JSON disagreed with the progress endpoint read just after.
    """
    prefetched = session.info.get(_PREFETCHED)
    if prefetched is not None and video.id in prefetched:
        found = prefetched.pop(video.id)
        return _view(*found, found[0].ahead) if found else initial_view(video.id, weights)
    return tagged_progress(session, video.id, weights)[0]



# -- polls and lists: the same views from plain rows, in one query each -------------------

def progress_tag(task: ProcessingTask | None, weights: Mapping[str, float],
                 ahead: int = 0) -> str:
    """A strong validator of what the progress endpoint shows for a video whose latest task
    is `task`, queued behind `ahead` runs (`runs_ahead`): it changes whenever that would
    (the task's version is bumped on every write of this service; the count of runs ahead
    of a queued one changes with other tasks), so equal tags mean an equal view.
    """
    if task is None:  # the initial view depends only on the configured weights
        weights_crc = zlib.crc32(repr(sorted(weights.items())).encode())
        return f"initial-{weights_crc:08x}"
    return _tag(task.id, task.version, task.status, ahead)


def _tag(task_id: str, version: int, status: str, ahead: int | None = 0) -> str:
    tag = f"{task_id}-{version}-{status}"
    return f"{tag}-behind{ahead}" if status == "queued" and ahead else tag


def poll_tag(session: Session, video_id: str, weights: Mapping[str, float]) -> str:
    """`progress_tag` of the video's latest task, in one indexed query and no ORM objects:
    what a poll needs to tell that nothing changed. NotFound for unknown ids of any shape.
    """
    connection = session.connection()
    row = (connection.execute(TAG_QUERY, {"video_id": video_id}).first()
           if is_valid_id(video_id) else None)
    if row is None:
        raise NotFound(f"video {video_id} not found")
    return tag_of_row(connection, row, weights)


def tag_of_row(connection, row, weights: Mapping[str, float]) -> str:
    """`progress_tag` from a row of TAG_QUERY (video id, task id, version, status); for a
    queued task, the runs ahead of it are counted on `connection` (AHEAD_QUERY)."""
    _, task_id, version, status = row
    if task_id is None:
        return progress_tag(None, weights)
    ahead = 0
    if status == "queued":
        ahead = connection.execute(AHEAD_QUERY, {"task_id": task_id}).scalar() or 0
    return _tag(task_id, version, status, ahead)


def tagged_progress(
    session: Session, video_id: str, weights: Mapping[str, float]
) -> tuple[ProgressView, str]:
    """The video's progress and its `progress_tag`, both from one query (one snapshot), as
    plain rows: what a poll answers when something changed. NotFound for unknown ids."""
    if not is_valid_id(video_id):
        raise no_such_id(video_id)
    rows = session.connection().execute(_PROGRESS_QUERY, {"video_id": video_id}).all()
    if not rows:
        raise NotFound(f"video {video_id} not found")
    found = _tasks_of(rows).get(video_id)
    if found is None:
        return initial_view(video_id, weights), progress_tag(None, weights)
    task, subs = found
    ahead = task.ahead or 0
    return _view(task, subs, ahead), _tag(task.id, task.version, task.status, ahead)


def runs_ahead(session: Session, video_id: str) -> int:
    """How many active runs (of other videos) come before the video's queued one: what it
    waits behind. 0 when its latest run is not queued.

    The queue serves runs in the order they were triggered (each run's later steps go to
    the front of the queue as their parents end: queue.enqueue_steps), so the runs ahead
    are the active ones triggered earlier, running or queued themselves.
    """
    me = _TASKS.alias("me")
    return session.connection().execute(
        select(_ahead_of(me)).where(me.c.id == _latest_id(video_id))
    ).scalar() or 0


# session.info key: video id -> (task, subtasks) as plain rows, or None; see below.
_PREFETCHED = "vidpipe.progress"


def prefetch_progress(session: Session, video_ids: Iterable[str]) -> None:
    """Read the latest task and its subtasks of many videos in one query (plain rows).

    For a list page: the next `video_progress` of each of these videos in this session
    uses what was read here, once, instead of two queries per video. What was read is
    forgotten at the end of the transaction (commit or rollback), so it is never older than
    what the session would read itself.
    """
    video_ids = list(dict.fromkeys(video_ids))
    if not video_ids:
        return
    rows = session.connection().execute(_PAGE_QUERY, {"video_ids": video_ids}).all()
    found: dict[str, tuple | None] = dict.fromkeys(video_ids)
    found.update(_tasks_of(rows))
    session.info.setdefault(_PREFETCHED, {}).update(found)


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_soft_rollback")
def _forget_prefetched(session: Session, *_args) -> None:
    session.info.pop(_PREFETCHED, None)


_VIDEOS, _TASKS, _SUBTASKS = Video.__table__, ProcessingTask.__table__, SubTask.__table__
_NEWER = _TASKS.alias("newer")
_TASK_COLUMNS = tuple(c.name for c in _TASKS.c)
_SUBTASK_COLUMNS = tuple(c.name for c in _SUBTASKS.c)


def _latest_id(video_id):
    """SELECT the id of the latest task of `video_id` (a column or a parameter), from
    ix_tasks_video_created alone."""
    return (
        select(_NEWER.c.id)
        .where(_NEWER.c.video_id == video_id)
        .order_by(_NEWER.c.created_at.desc(), _NEWER.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def _ahead_of(task):
    """The number of active runs triggered before `task` (a task table or alias: correlated)
    when it is queued, else 0: what it waits behind (`runs_ahead`). Only a queued task
    costs the count."""
    other = _TASKS.alias("ahead")
    earlier = or_(other.c.created_at < task.c.created_at,
                  and_(other.c.created_at == task.c.created_at, other.c.id < task.c.id))
    count = (select(func.count()).select_from(other)
             .where(other.c.status.in_(ACTIVE_STATUSES), earlier)
             .correlate(task).scalar_subquery())
    return case((task.c.status == "queued", count), else_=0)


def _with_subtasks(*where, tasks=_TASKS):
    """SELECT tasks joined with their subtasks (one row per subtask, in order; columns
    t_<task column>, t_ahead (`_ahead_of`), s_<subtask column>); `tasks` may be a join that
    holds the task table."""
    return (
        select(*(c.label(f"t_{c.name}") for c in _TASKS.c), _ahead_of(_TASKS).label("t_ahead"),
               *(c.label(f"s_{c.name}") for c in _SUBTASKS.c))
        .select_from(tasks.outerjoin(_SUBTASKS, _SUBTASKS.c.task_id == _TASKS.c.id))
        .where(*where)
        .order_by(_TASKS.c.video_id, _SUBTASKS.c.position)
    )


def latest_status(video_id):
    """SELECT the status of the latest task of `video_id` (a column: correlated), NULL for
    a video that never ran: what the library filters on."""
    return (
        select(_NEWER.c.status)
        .where(_NEWER.c.video_id == video_id)
        .order_by(_NEWER.c.created_at.desc(), _NEWER.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


# The video (so: does it exist) and its latest task's id, version and status; parameter
# `video_id`. What a poll reads (here and in webapp/fastpoll.py).
TAG_QUERY = (
    select(_VIDEOS.c.id, _TASKS.c.id, _TASKS.c.version, _TASKS.c.status)
    .select_from(_VIDEOS.outerjoin(
        _TASKS, _TASKS.c.id == _latest_id(_VIDEOS.c.id).correlate(_VIDEOS)))
    .where(_VIDEOS.c.id == bindparam("video_id"))
)
# The runs ahead of a task, asked only of a queued one (a count in TAG_QUERY made every
# poll ~20 % dearer: docs/PERFORMANCE.md, section 2). No index of its own: the partial
# index uq_tasks_one_active_per_video holds the active tasks alone, and both databases
# count from it (EXPLAIN with 20 000 tasks, 10 or 1 000 of them active: a bitmap scan of
# that index on PostgreSQL, 0.03 / 0.2 ms; SQLite "SCAN ahead USING INDEX" it), never
# reading the finished ones.
_ME = _TASKS.alias("me")
AHEAD_QUERY = select(_ahead_of(_ME)).where(_ME.c.id == bindparam("task_id"))
# One video's latest task with its subtasks: one row per subtask, or one row of NULLs when
# the video never ran, or no row when there is no such video ...
_PROGRESS_QUERY = _with_subtasks(
    _VIDEOS.c.id == bindparam("video_id"),
    tasks=_VIDEOS.outerjoin(_TASKS, _TASKS.c.id == _latest_id(_VIDEOS.c.id).correlate(_VIDEOS)),
)
# ... and of each video of a page.
_PAGE_QUERY = _with_subtasks(
    _TASKS.c.video_id.in_(bindparam("video_ids", expanding=True)),
    _TASKS.c.id == _latest_id(_TASKS.c.video_id).correlate(_TASKS),
)


def _tasks_of(rows) -> dict[str, tuple[SimpleNamespace, list[SimpleNamespace]]]:
    """video id -> (task, its subtasks in order) from rows of `_with_subtasks`."""
    found: dict[str, tuple[SimpleNamespace, list[SimpleNamespace]]] = {}
    for row in rows:
        values = row._mapping
        video_id = values["t_video_id"]
        if video_id is None:  # a video without tasks
            continue
        if video_id not in found:
            task = SimpleNamespace(**{name: values[f"t_{name}"] for name in _TASK_COLUMNS},
                                   ahead=values["t_ahead"])
            found[video_id] = (task, [])
        if values["s_id"] is not None:
            found[video_id][1].append(
                SimpleNamespace(**{name: values[f"s_{name}"] for name in _SUBTASK_COLUMNS}))
    return found
