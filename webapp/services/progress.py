"""THE progress service: the only writer of task/subtask state and the only maker of totals."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace

from sqlalchemy import bindparam, case, delete, event, exists, func, insert, select, update
from sqlalchemy.orm import Session

from webapp.config import STEPS
from webapp.models import (
    ACTIVE_STATUSES,
    SUBTASK_DONE,
    SUBTASK_FINAL,
    ProcessingTask,
    SubTask,
    Video,
    new_id,
    utcnow,
)
from webapp.services import calibration, eta, publications, search
from webapp.services.errors import NotFound
from webapp.services.storage import is_valid_id


@dataclass(frozen=True)
class SubtaskView:
    name: str
    status: str
    progress: float
    weight: float
    attempt: int
    reused: bool
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    error_detail: str | None = None
    worker: str | None = None  # who runs or ran the latest attempt (its host)


@dataclass(frozen=True)
class ProgressView:
    video_id: str
    task_id: str | None
    mode: str | None
    status: str
    progress: float
    subtasks: list[SubtaskView]
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    eta_seconds: float | None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


def weighted_total(parts: Iterable[tuple[float, str, float]]) -> float:
    """Σ(weight × progress) / Σ(weight) over (weight, status, progress); 100 only when all done."""
    parts = list(parts)
    total_weight = sum(w for w, _, _ in parts)
    if total_weight <= 0:
        return 0.0
    done = all(status in SUBTASK_DONE for _, status, _ in parts)
    value = sum(w * (100.0 if s in SUBTASK_DONE else p) for w, s, p in parts) / total_weight
    value = round(min(100.0, max(0.0, value)), 2)
    return 100.0 if done else min(value, 99.99)


def estimate_eta(task, subtasks: list, now: datetime | None = None) -> float | None:
    """Seconds left, from the rates of the steps that really run (webapp/services/eta.py);
    None if unknown."""
    return eta.seconds_left(task, subtasks, now or utcnow())


def _subtask_view(sub: SubTask) -> SubtaskView:
    return SubtaskView(
        name=sub.name,
        status=sub.status,
        progress=round(100.0 if sub.status in SUBTASK_DONE else sub.progress, 2),
        weight=sub.weight,
        attempt=sub.attempt,
        reused=sub.reused,
        started_at=sub.started_at,
        finished_at=sub.finished_at,
        error=sub.error,
        error_detail=getattr(sub, "error_detail", None),
        worker=getattr(sub, "worker", None),
    )


def task_view(task: ProcessingTask) -> ProgressView:
    """The public progress of one task.

    A function of the stored rows only (so of `progress_tag`): the ETA is the one as of the
    task's last change, not of the moment of the request, so an unchanged task always shows
    the same thing and a poll may answer 304 Not Modified.
    """
    return _view(task, list(task.subtasks))


def _view(task, subs: list) -> ProgressView:
    """The view of a task and its subtasks, ORM objects or rows with the same attributes."""
    progress = weighted_total((s.weight, s.status, s.progress) for s in subs)
    return ProgressView(
        video_id=task.video_id,
        task_id=task.id,
        mode=task.mode,
        status=task.status,
        progress=progress,
        subtasks=[_subtask_view(s) for s in subs],
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        error=task.error,
        eta_seconds=estimate_eta(task, subs, task.updated_at),
    )


def initial_view(video_id: str, weights: Mapping[str, float]) -> ProgressView:
    """What a video that never ran reports: pending, 0 %, every step pending."""
    subs = [SubtaskView(s, "pending", 0.0, weights[s], 0, False, None, None, None) for s in STEPS]
    return ProgressView(video_id, None, None, "pending", 0.0, subs, None, None, None, None, None)


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
        return _view(*found) if found else initial_view(video.id, weights)
    return tagged_progress(session, video.id, weights)[0]


def progress_of(
    video_id: str, task: ProcessingTask | None, weights: Mapping[str, float]
) -> ProgressView:
    """Progress of a video whose latest task (from `latest_task`) is `task`."""
    return task_view(task) if task is not None else initial_view(video_id, weights)


# -- polls and lists: the same views from plain rows, in one query each -------------------

def progress_tag(task: ProcessingTask | None, weights: Mapping[str, float]) -> str:
    """A strong validator of what `video_progress` shows for a video whose latest task is
    `task`: it changes whenever that would (the task's version is bumped on every write of
    this service), so equal tags mean an equal view. Needs only the task row.
    """
    if task is None:  # the initial view depends only on the configured weights
        weights_crc = zlib.crc32(repr(sorted(weights.items())).encode())
        return f"initial-{weights_crc:08x}"
    return _tag(task.id, task.version, task.status)


def _tag(task_id: str, version: int, status: str) -> str:
    return f"{task_id}-{version}-{status}"


def poll_tag(session: Session, video_id: str, weights: Mapping[str, float]) -> str:
    """`progress_tag` of the video's latest task, in one indexed query and no ORM objects:
    what a poll needs to tell that nothing changed. NotFound for unknown ids of any shape.
    """
    row = (session.connection().execute(TAG_QUERY, {"video_id": video_id}).first()
           if is_valid_id(video_id) else None)
    if row is None:
        raise NotFound(f"video {video_id} not found")
    return tag_of_row(row, weights)


def tag_of_row(row, weights: Mapping[str, float]) -> str:
    """`progress_tag` from a row of TAG_QUERY (video id, task id, version, status)."""
    _, task_id, version, status = row
    if task_id is None:
        return progress_tag(None, weights)
    return _tag(task_id, version, status)


def tagged_progress(
    session: Session, video_id: str, weights: Mapping[str, float]
) -> tuple[ProgressView, str]:
    """The video's progress and its `progress_tag`, both from one query (one snapshot), as
    plain rows: what a poll answers when something changed. NotFound for unknown ids."""
    rows = (session.connection().execute(_PROGRESS_QUERY, {"video_id": video_id}).all()
            if is_valid_id(video_id) else [])
    if not rows:
        raise NotFound(f"video {video_id} not found")
    found = _tasks_of(rows).get(video_id)
    if found is None:
        return initial_view(video_id, weights), progress_tag(None, weights)
    task, subs = found
    return _view(task, subs), _tag(task.id, task.version, task.status)


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


def _with_subtasks(*where, tasks=_TASKS):
    """SELECT tasks joined with their subtasks (one row per subtask, in order; columns
    t_<task column>, s_<subtask column>); `tasks` may be a join that holds the task table."""
    return (
        select(*(c.label(f"t_{c.name}") for c in _TASKS.c),
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
            task = SimpleNamespace(**{name: values[f"t_{name}"] for name in _TASK_COLUMNS})
            found[video_id] = (task, [])
        if values["s_id"] is not None:
            found[video_id][1].append(
                SimpleNamespace(**{name: values[f"s_{name}"] for name in _SUBTASK_COLUMNS}))
    return found


# -- writers --------------------------------------------------------------------------------

def task_rows(
    video_id: str,
    mode: str,
    weights: Mapping[str, float],
    skipped: Mapping[str, str],
    reused: Iterable[str] = (),
    language: str | None = None,
    translate: bool = False,
    costs: Mapping[str, tuple[str, float]] | None = None,
    expected: Mapping[str, float] | None = None,
) -> tuple[dict, list[dict]]:
    """The rows of a new task and of its subtasks, one per step: see `new_task`. Every row
    gives the same columns, so one INSERT takes all the subtasks (`insert_task_rows`)."""
    costs, expected = costs or {}, expected or {}
    now = utcnow()
    reused = set(reused)
    task_id = new_id()
    subtasks = []
    for position, step in enumerate(STEPS):
        sub = {"task_id": task_id, "name": step, "position": position, "weight": weights[step],
               "status": "pending", "progress": 0.0, "attempt": 0, "reused": False,
               "error": None, "finished_at": None, "cost_key": None, "cost_units": None,
               "expected_seconds": None}
        if step in skipped:
            sub.update(status="skipped", error=skipped[step], finished_at=now)
        elif step in reused:
            sub.update(status="completed", progress=100.0, reused=True, finished_at=now)
        else:
            sub["cost_key"], sub["cost_units"] = costs.get(step, (None, None))
            sub["expected_seconds"] = expected.get(step)
        subtasks.append(sub)
    done = all(sub["status"] in SUBTASK_DONE for sub in subtasks)
    task = {"id": task_id, "video_id": video_id, "mode": mode,
            "status": "completed" if done else "queued", "created_at": now,
            "started_at": now if done else None, "finished_at": now if done else None,
            "language": language, "translate": translate, "version": 0, "updated_at": now}
    return task, subtasks


def new_task(
    video: Video,
    mode: str,
    weights: Mapping[str, float],
    skipped: Mapping[str, str],
    reused: Iterable[str] = (),
    language: str | None = None,
    translate: bool = False,
    costs: Mapping[str, tuple[str, float]] | None = None,
    expected: Mapping[str, float] | None = None,
) -> ProcessingTask:
    """A queued task with one subtask per step; `skipped` maps step -> reason it does not apply.
    `reused` steps are completed already (outputs kept); with every step skipped or reused
    the task is completed. `language` (None: detect it) and `translate` are what its
    transcription asks for. `costs` (step -> its kind and units of media) and `expected`
    (step -> seconds alone) are what the steps cost on this installation
    (webapp/services/calibration.py)."""
    row, subtasks = task_rows(video.id, mode, weights, skipped, reused, language, translate,
                              costs, expected)
    task = ProcessingTask(**row)
    task.subtasks = [SubTask(**{k: v for k, v in sub.items() if k != "task_id"})
                     for sub in subtasks]
    return task


def insert_task(session: Session, task: ProcessingTask) -> None:
    """Write a task made by `new_task` and its subtasks: one INSERT per table.

    The ORM would insert the subtasks one statement at a time (it reads each one's id back),
    holding SQLite's single write lock meanwhile; nothing here needs those ids. `task` stays
    a plain object, not in the session. The caller commits (or rolls back).
    """
    session.execute(insert(ProcessingTask), [_row(task)])
    session.execute(insert(SubTask), [{**_row(sub), "task_id": task.id} for sub in task.subtasks])


# Built once: a trigger's INSERTs cost a third of the ORM's bulk insert of the same rows
# when they are plain table statements run on the session's connection.
_INSERT_TASK = insert(ProcessingTask.__table__)
_INSERT_SUBTASKS = insert(SubTask.__table__)


def insert_task_rows(session: Session, task: dict, subtasks: list[dict]) -> None:
    """Write the rows made by `task_rows` in the session's transaction: one INSERT per table.
    No ORM object is involved (nothing is flushed first). The caller commits."""
    connection = session.connection()
    connection.execute(_INSERT_TASK, task)
    connection.execute(_INSERT_SUBTASKS, subtasks)


def task_status(session: Session, task_id: str) -> str | None:
    """The task's status (read with a lock on its row where the database has them), None
    if there is no such task."""
    return session.scalar(select(ProcessingTask.status)
                          .where(ProcessingTask.id == task_id).with_for_update())


def delete_task(session: Session, task_id: str) -> None:
    """Remove a task that never ran (its subtasks go with it: ON DELETE CASCADE)."""
    session.execute(delete(SubTask).where(SubTask.task_id == task_id))
    session.execute(delete(ProcessingTask).where(ProcessingTask.id == task_id))


def _row(obj) -> dict:
    """The column values set on a new ORM object (unset ones get the column's default)."""
    return {c.key: value for c in obj.__table__.columns
            if (value := getattr(obj, c.key)) is not None}


def _touch_task(session: Session, task_id: str, now: datetime, *conditions) -> bool:
    """Bump the task's version before changing it or a subtask (see `progress_tag`).

    It is the first write of every change, so it also takes the task's row lock
    (PostgreSQL) / the write lock (SQLite) first: concurrent writers of one task serialize,
    always in the same order (task, then subtasks), and the last finisher sees every result.
    """
    result = session.execute(
        update(ProcessingTask)
        .where(ProcessingTask.id == task_id, *conditions)
        .values(version=ProcessingTask.version + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _subtask_update(task_id: str, name: str):
    return (
        update(SubTask)
        .where(SubTask.task_id == task_id, SubTask.name == name)
        .execution_options(synchronize_session=False)
    )


# Every write of a step's attempt is fenced: it names the attempt (the subtask's `attempt`
# number, handed out by start_subtask) and changes nothing unless that attempt is still the
# step's running one. A stale attempt (superseded by a retry, or its task cancelled or
# replaced) can neither move progress, nor complete, fail or reset the step.

def _attempt_is(task_id: str, name: str, attempt: int | None) -> tuple:
    """WHERE clauses for "the step is in the state `attempt`'s write expects": running
    that attempt, or for None (a step no attempt started, e.g. its parent failed) pending."""
    if attempt is None:
        return (SubTask.task_id == task_id, SubTask.name == name, SubTask.status == "pending")
    return (SubTask.task_id == task_id, SubTask.name == name, SubTask.status == "running",
            SubTask.attempt == attempt)


def start_subtask(session: Session, task_id: str, name: str, *,
                  takeover: bool = False, worker: str | None = None) -> int | None:
    """Start a new attempt of a pending step of an active task; its attempt number, or None
    if the task no longer wants the step.

    A step already running is taken over only with `takeover` (a retry of an attempt that
    died, or a job the reconciler enqueued again): the old attempt, if it still lives, is
    stale from here on and stops itself. A second delivery of the same job is refused.
    `worker` names who runs the attempt (shown per step).
    """
    now = utcnow()
    statuses = ("pending", "running") if takeover else ("pending",)
    attempt = None
    if _touch_task(session, task_id, now, ProcessingTask.status.in_(ACTIVE_STATUSES)):
        attempt = session.scalar(
            _subtask_update(task_id, name)
            .where(SubTask.status.in_(statuses))
            .values(status="running", progress=0.0, attempt=SubTask.attempt + 1,
                    started_at=now, finished_at=None, error=None, error_detail=None,
                    first_progress_at=None, first_progress=None, worker=worker)
            .returning(SubTask.attempt)
        )
    if attempt is None:
        session.rollback()
        return None
    # Running again, if its steps were handed back (retry_subtask): it started the first time.
    session.execute(
        update(ProcessingTask)
        .where(ProcessingTask.id == task_id, ProcessingTask.status == "queued")
        .values(status="running", started_at=func.coalesce(ProcessingTask.started_at, now))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return attempt


def report_progress(session: Session, task_id: str, name: str, attempt: int,
                    percent: float, measured: bool = True) -> None:
    """Record an attempt's progress (0-100); never backwards, nothing for a stale attempt.
    A report that is not `measured` (a guess) is not taken as the first report a pace is
    measured from."""
    percent = min(100.0, max(0.0, percent))
    moves = (*_attempt_is(task_id, name, attempt), SubTask.progress < percent)
    # The version is bumped only when the progress really moves (the EXISTS), and then the
    # same condition moves it: no write at all for a stale or backward report. The first
    # report of an attempt is kept as well (the right-hand sides read the old row).
    now = utcnow()
    first = SubTask.first_progress_at.is_(None)
    firsts = {"first_progress_at": func.coalesce(SubTask.first_progress_at, now),
              "first_progress": case((first, percent), else_=SubTask.first_progress)}
    if _touch_task(session, task_id, now, exists().where(*moves)):
        session.execute(
            update(SubTask).where(*moves)
            .values(progress=percent, **(firsts if measured else {}))
            .execution_options(synchronize_session=False)
        )
    session.commit()


def attempt_is_current(session: Session, task_id: str, name: str, attempt: int) -> bool:
    """Whether `attempt` is still the running attempt of the step (so its work is wanted)."""
    current = session.scalar(select(SubTask.id).where(*_attempt_is(task_id, name, attempt)))
    session.rollback()  # end the read: a long-lived session must not pin a snapshot
    return current is not None


def attempt_completed(session: Session, task_id: str, name: str, attempt: int) -> bool:
    """Whether `attempt` is the one that completed the step (its work is done, not stopped)."""
    done = session.scalar(select(SubTask.id).where(
        SubTask.task_id == task_id, SubTask.name == name, SubTask.status == "completed",
        SubTask.attempt == attempt))
    session.rollback()
    return done is not None


def complete_subtask(session: Session, task_id: str, name: str, attempt: int, *,
                     video_id: str | None = None, folder: str | None = None,
                     note: str | None = None,
                     video_values: Mapping[str, object] | None = None,
                     segments: Sequence[tuple[float, float, str]] | None = None) -> bool:
    """Mark an attempt's step completed and publish its output folder, in one transaction.

    False (and nothing written) if the attempt is stale: its files must then never be
    published. `folder` None completes a step that has nothing to publish. `note` is a
    sentence shown with the completed step (in its `error` field, e.g. "nothing to
    translate"); `video_values` are facts about the published outputs written on the
    video in the same transaction (e.g. the transcript's language); `segments` (start,
    end, text) are a published transcript's, indexed for search in that transaction too,
    in place of the video's earlier ones.
    """
    now = utcnow()
    _touch_task(session, task_id, now)
    result = session.execute(
        update(SubTask).where(*_attempt_is(task_id, name, attempt))
        .values(status="completed", progress=100.0, finished_at=now, error=note,
                error_detail=None)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    _record_cost(session, task_id, name, now)
    if folder is not None:
        assert video_id is not None
        publications.switch(session, video_id, name, task_id, attempt, folder)
        if video_values:
            session.execute(update(Video).where(Video.id == video_id).values(**video_values)
                            .execution_options(synchronize_session=False))
        if segments is not None:
            search.replace_transcript(session, video_id, segments)
    _close_task_if_done(session, task_id, now)
    session.commit()
    return True


def _record_cost(session: Session, task_id: str, name: str, now: datetime) -> None:
    """What the step just completed cost, alone, into the installation's history."""
    subs = session.scalars(select(SubTask).where(SubTask.task_id == task_id)
                           .execution_options(populate_existing=True)).all()
    ran = [s for s in subs if not s.reused and s.status != "skipped"]
    done = next((s for s in ran if s.name == name), None)
    if done is not None and done.cost_key:
        calibration.record(session, done, eta.time_alone(ran, now)[0][name], now)


def finish_subtask(
    session: Session, task_id: str, name: str, status: str, error: str | None = None, *,
    attempt: int | None = None, detail: str | None = None,
) -> bool:
    """End a step that did not complete (failed/skipped/cancelled) and close the task when
    all its steps ended. `attempt` is the attempt that ends (None: a step that never
    started); False (nothing written) if the step is no longer in that state."""
    assert status in SUBTASK_FINAL and status != "completed", status
    now = utcnow()
    _touch_task(session, task_id, now)
    result = session.execute(
        update(SubTask).where(*_attempt_is(task_id, name, attempt))
        .values(status=status, finished_at=now, error=error, error_detail=detail)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    _close_task_if_done(session, task_id, now)
    session.commit()
    return True


def retry_subtask(session: Session, task_id: str, name: str, reason: str,
                  attempt: int | None = None) -> bool:
    """An attempt died, or was stopped with its worker, and another is coming: the step
    waits again in the queue, saying why.

    Its progress restarts from 0 (the one case where a total may go back), and the
    attempt counter keeps growing so the next try shows as attempt 2, 3, ... When no other
    step of the task runs, nothing works for the task any more: it is `queued` again until
    a worker takes a step (start_subtask). False (nothing written) if `attempt` is not the
    step's running attempt any more.
    """
    _touch_task(session, task_id, utcnow())
    result = session.execute(
        update(SubTask).where(*_attempt_is(task_id, name, attempt))
        .values(status="pending", progress=0.0, error=reason, first_progress_at=None,
                first_progress=None)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    # A worker stopped mid-step (Ctrl-C of `make run`) left the task "running" until the
    # next worker came: the page said work went on while nothing ran. The touch above holds
    # the task's lock, so of two steps handed back at once the later one sees the first.
    session.execute(
        update(ProcessingTask)
        .where(ProcessingTask.id == task_id, ProcessingTask.status == "running",
               ~exists().where(SubTask.task_id == task_id, SubTask.status == "running"))
        .values(status="queued")
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return True


def _close_task_if_done(session: Session, task_id: str, now: datetime) -> None:
    rows = session.execute(
        select(SubTask.name, SubTask.status).where(SubTask.task_id == task_id)
    ).all()
    if not rows or any(status not in SUBTASK_FINAL for _, status in rows):
        return
    failed = [name for name, status in rows if status == "failed"]
    not_run = [name for name, status in rows if status == "cancelled"]
    # A summary: each step's own error says what happened to it.
    summary = "; ".join(part for part in (
        f"failed: {', '.join(failed)}" if failed else "",
        f"not run: {', '.join(not_run)}" if not_run else "") if part)
    session.execute(
        update(ProcessingTask)
        .where(ProcessingTask.id == task_id, ProcessingTask.status.in_(ACTIVE_STATUSES))
        .values(status="failed" if summary else "completed", finished_at=now,
                error=summary or None)
        .execution_options(synchronize_session=False)
    )


def subtask_status(session: Session, task_id: str, name: str) -> str | None:
    return session.scalar(
        select(SubTask.status).where(SubTask.task_id == task_id, SubTask.name == name)
    )


def cancel_task(session: Session, task_id: str, reason: str) -> bool:
    """Mark an active task and its unfinished steps cancelled, in the caller's transaction;
    False if it was not active."""
    return bool(_cancel(session, reason, ProcessingTask.id == task_id))


def cancel_active(session: Session, video_id: str, reason: str) -> list[str]:
    """Cancel the video's active task (if any) in the caller's transaction; its id in a list.

    One conditional UPDATE finds and cancels it, so a task that a concurrent request
    cancelled first is not reported twice.
    """
    return _cancel(session, reason, ProcessingTask.video_id == video_id)


def _cancel(session: Session, reason: str, which) -> list[str]:
    now = utcnow()
    ids = list(session.scalars(
        update(ProcessingTask)
        .where(which, ProcessingTask.status.in_(ACTIVE_STATUSES))
        .values(status="cancelled", finished_at=now, error=reason,
                version=ProcessingTask.version + 1, updated_at=now)
        .returning(ProcessingTask.id)
        .execution_options(synchronize_session=False)
    ))
    if ids:
        session.execute(
            update(SubTask)
            .where(SubTask.task_id.in_(ids), SubTask.status.in_(("pending", "running")))
            .values(status="cancelled", finished_at=now, error=reason)
            .execution_options(synchronize_session=False)
        )
    return ids
