"""A step's attempts written (start, report, complete, fail, hand back), fenced by attempt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import case, exists, func, select, update
from sqlalchemy.orm import Session

from webapp.models import (
    ACTIVE_STATUSES,
    SUBTASK_FINAL,
    ProcessingTask,
    SubTask,
    Video,
    utcnow,
)
from webapp.services import calibration, eta, publications, search, webhooks

# A step's wall-clock span and its length on the worker's monotonic clock differ by more
# than this (seconds, or share of its length) only when the wall clock moved meanwhile, or
# two hosts' clocks differ (a remote worker starts its step, the web app completes it): only
# the completing request of a remote worker (its files checked again) lies in between.
CLOCK_SLACK = 5.0
CLOCK_SHARE = 0.1


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


def _fenced_update(session: Session, task_id: str, name: str, attempt: int | None,
                   now: datetime, **values) -> bool:
    """Write `values` on the step if it is still in the state `attempt`'s write expects
    (`_attempt_is`), after bumping the task's version (and taking its lock); False, with the
    transaction rolled back, if it is not: a stale attempt changes nothing."""
    _touch_task(session, task_id, now)
    result = session.execute(
        update(SubTask).where(*_attempt_is(task_id, name, attempt)).values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    return True


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
                     segments: Sequence[tuple[float, float, str]] | None = None,
                     translation: Sequence[tuple[float, float, str]] = (),
                     ran_for: float | None = None) -> bool:
    """Mark an attempt's step completed and publish its output folder, in one transaction.

    False (and nothing written) if the attempt is stale: its files must then never be
    published. `folder` None completes a step that has nothing to publish. `note` is a
    sentence shown with the completed step (in its `error` field, e.g. "nothing to
    translate"); `video_values` are facts about the published outputs written on the
    video in the same transaction (e.g. the transcript's language); `segments` (start,
    end, text) are a published transcript's, indexed for search in that transaction too,
    in place of the video's earlier ones, with its English `translation`'s (none: the
    earlier translation's lines are gone too). `ran_for`: the attempt's length on the
    worker's monotonic clock, which corrects its recorded cost when the wall clock moved.
    """
    now = utcnow()
    if not _fenced_update(session, task_id, name, attempt, now, status="completed",
                          progress=100.0, finished_at=now, error=note, error_detail=None):
        return False
    _record_cost(session, task_id, name, now, ran_for)
    if folder is not None:
        assert video_id is not None
        publications.switch(session, video_id, name, task_id, attempt, folder)
        if video_values:
            session.execute(update(Video).where(Video.id == video_id).values(**video_values)
                            .execution_options(synchronize_session=False))
        if segments is not None:
            search.replace_transcript(session, video_id, segments, translation)
    _close_task_if_done(session, task_id, now)
    session.commit()
    return True


def _record_cost(session: Session, task_id: str, name: str, now: datetime,
                 ran_for: float | None) -> None:
    """What the step just completed cost, alone, into the installation's history.

    Its time alone is read off the wall clock (the steps' started_at/finished_at, which
    is how it is shared with the steps beside it). When that clock moved during the step
    (set by hand, stepped by NTP, or another host's clock at the start) its span is not
    the time the step ran: the share of its span it had alone is then applied to
    `ran_for`, else one step "lasting" an hour would skew the next SAMPLES runs' ETAs.
    """
    subs = session.scalars(select(SubTask).where(SubTask.task_id == task_id)
                           .execution_options(populate_existing=True)).all()
    ran = [s for s in subs if not s.reused and s.status != "skipped"]
    done = next((s for s in ran if s.name == name), None)
    if done is None or not done.cost_key:
        return
    alone = eta.time_alone(ran, now)[0][name]
    span = (now - done.started_at).total_seconds() if done.started_at else 0.0
    if ran_for is not None and abs(span - ran_for) > max(CLOCK_SLACK, CLOCK_SHARE * ran_for):
        alone = alone / span * ran_for if span > 0 else 0.0
    calibration.record(session, done, alone, now)


def finish_subtask(
    session: Session, task_id: str, name: str, status: str, error: str | None = None, *,
    attempt: int | None = None, detail: str | None = None,
) -> bool:
    """End a step that did not complete (failed/skipped/cancelled) and close the task when
    all its steps ended. `attempt` is the attempt that ends (None: a step that never
    started); False (nothing written) if the step is no longer in that state."""
    assert status in SUBTASK_FINAL and status != "completed", status
    now = utcnow()
    if not _fenced_update(session, task_id, name, attempt, now, status=status,
                          finished_at=now, error=error, error_detail=detail):
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
    if not _fenced_update(session, task_id, name, attempt, utcnow(), status="pending",
                          progress=0.0, error=reason, first_progress_at=None,
                          first_progress=None):
        return False
    # A worker stopped mid-step (Ctrl-C of `make run`) left the task "running" until the
    # next worker came: the page said work went on while nothing ran.
    _queue_if_idle(session, task_id)
    session.commit()
    return True


def _queue_if_idle(session: Session, task_id: str) -> None:
    """A running task of which no step runs any more waits for a worker: `queued` again
    (start_subtask makes it `running` once a worker starts a step). The caller's touch of
    the task holds its lock, so of two steps ending at once the later one sees the first.
    """
    session.execute(
        update(ProcessingTask)
        .where(ProcessingTask.id == task_id, ProcessingTask.status == "running",
               ~exists().where(SubTask.task_id == task_id, SubTask.status == "running"))
        .values(status="queued")
        .execution_options(synchronize_session=False)
    )


def _close_task_if_done(session: Session, task_id: str, now: datetime) -> None:
    rows = session.execute(
        select(SubTask.name, SubTask.status).where(SubTask.task_id == task_id)
    ).all()
    if not rows:
        return
    if any(status not in SUBTASK_FINAL for _, status in rows):
        # Steps are left, but none may run: every worker stopped (or is busy with other
        # runs) between two steps. "running" said work went on, with an ETA counting down,
        # while nobody worked; a worker that takes the next step makes it running again.
        _queue_if_idle(session, task_id)
        return
    failed = [name for name, status in rows if status == "failed"]
    not_run = [name for name, status in rows if status == "cancelled"]
    # A summary: each step's own error says what happened to it.
    summary = "; ".join(part for part in (
        f"failed: {', '.join(failed)}" if failed else "",
        f"not run: {', '.join(not_run)}" if not_run else "") if part)
    ended = session.execute(
        update(ProcessingTask)
        .where(ProcessingTask.id == task_id, ProcessingTask.status.in_(ACTIVE_STATUSES))
        .values(status="failed" if summary else "completed", finished_at=now,
                error=summary or None)
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount == 1:
        webhooks.record(session, [task_id], now)


def subtask_status(session: Session, task_id: str, name: str) -> str | None:
    return session.scalar(
        select(SubTask.status).where(SubTask.task_id == task_id, SubTask.name == name)
    )
