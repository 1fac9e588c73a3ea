"""THE progress service: the only writer of task/subtask state and the only maker of totals."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from webapp.config import STEPS
from webapp.models import (
    ACTIVE_STATUSES,
    SUBTASK_DONE,
    SUBTASK_FINAL,
    ProcessingTask,
    SubTask,
    Video,
    utcnow,
)


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


def estimate_eta(
    task: ProcessingTask, progress: float, now: datetime | None = None
) -> float | None:
    """Seconds left, extrapolated from the progress rate since the task started; None if unknown."""
    if task.status not in ACTIVE_STATUSES or task.started_at is None or progress <= 0:
        return None
    elapsed = ((now or utcnow()) - task.started_at).total_seconds()
    if elapsed <= 0:
        return None
    return round(elapsed * (100.0 - progress) / progress, 1)


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
    )


def task_view(task: ProcessingTask) -> ProgressView:
    """The public progress of one task."""
    subs = list(task.subtasks)
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
        eta_seconds=estimate_eta(task, progress),
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
    """Progress of the video's latest task, or its initial state."""
    task = latest_task(session, video.id)
    return task_view(task) if task is not None else initial_view(video.id, weights)


def new_task(
    video: Video,
    mode: str,
    weights: Mapping[str, float],
    skipped: Mapping[str, str],
    reused: Iterable[str] = (),
) -> ProcessingTask:
    """A queued task with one subtask per step; `skipped` maps step -> reason it does not apply."""
    now = utcnow()
    reused = set(reused)
    task = ProcessingTask(video_id=video.id, mode=mode, status="queued", created_at=now)
    for position, step in enumerate(STEPS):
        sub = SubTask(name=step, position=position, weight=weights[step], status="pending",
                      progress=0.0, attempt=0, reused=False)
        if step in skipped:
            sub.status, sub.error, sub.finished_at = "skipped", skipped[step], now
        elif step in reused:
            sub.status, sub.progress, sub.reused, sub.finished_at = "completed", 100.0, True, now
        task.subtasks.append(sub)
    if all(s.status in SUBTASK_DONE for s in task.subtasks):
        task.status, task.started_at, task.finished_at = "completed", now, now
    return task


def _lock_task(session: Session, task_id: str) -> None:
    # A no-op UPDATE takes the row lock (PostgreSQL) / the write lock (SQLite) first,
    # so concurrent finishers of one task serialize and the last one sees every result.
    session.execute(
        update(ProcessingTask)
        .where(ProcessingTask.id == task_id)
        .values(status=ProcessingTask.status)
        .execution_options(synchronize_session=False)
    )


def _subtask_update(task_id: str, name: str):
    return (
        update(SubTask)
        .where(SubTask.task_id == task_id, SubTask.name == name)
        .execution_options(synchronize_session=False)
    )


def start_subtask(session: Session, task_id: str, name: str) -> bool:
    """Mark a step running (a new attempt); False if the task no longer wants it."""
    now = utcnow()
    _lock_task(session, task_id)
    result = session.execute(
        _subtask_update(task_id, name)
        .where(SubTask.status.in_(("pending", "running")))
        .values(status="running", progress=0.0, attempt=SubTask.attempt + 1,
                started_at=now, finished_at=None, error=None)
    )
    if result.rowcount != 1:
        session.commit()
        return False
    session.execute(
        update(ProcessingTask)
        .where(ProcessingTask.id == task_id, ProcessingTask.status == "queued")
        .values(status="running", started_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return True


def report_progress(session: Session, task_id: str, name: str, percent: float) -> None:
    """Record a running step's progress (0-100); never moves it backwards, ignores stale tasks."""
    percent = min(100.0, max(0.0, percent))
    session.execute(
        _subtask_update(task_id, name)
        .where(SubTask.status == "running", SubTask.progress < percent)
        .values(progress=percent)
    )
    session.commit()


def finish_subtask(
    session: Session, task_id: str, name: str, status: str, error: str | None = None
) -> None:
    """End a step (completed/failed/skipped/cancelled) and close the task when all steps ended."""
    assert status in SUBTASK_FINAL, status
    now = utcnow()
    _lock_task(session, task_id)
    values: dict[str, object] = {"status": status, "finished_at": now, "error": error}
    if status == "completed":
        values["progress"] = 100.0
    session.execute(
        _subtask_update(task_id, name)
        .where(SubTask.status.in_(("pending", "running")))
        .values(**values)
    )
    _close_task_if_done(session, task_id, now)
    session.commit()


def retry_subtask(session: Session, task_id: str, name: str, reason: str) -> bool:
    """An attempt died and another is coming: the step waits again, saying why.

    Its progress restarts from 0 (the one case where a total may go back), and the
    attempt counter keeps growing so the next try shows as attempt 2, 3, ...
    """
    result = session.execute(
        _subtask_update(task_id, name)
        .where(SubTask.status.in_(("pending", "running")))
        .values(status="pending", progress=0.0, error=reason)
    )
    session.commit()
    return result.rowcount == 1


def _close_task_if_done(session: Session, task_id: str, now: datetime) -> None:
    rows = session.execute(
        select(SubTask.name, SubTask.status, SubTask.error).where(SubTask.task_id == task_id)
    ).all()
    if not rows or any(status not in SUBTASK_FINAL for _, status, _ in rows):
        return
    failures = [f"{name}: {error or status}" for name, status, error in rows
                if status not in SUBTASK_DONE]
    status = "failed" if failures else "completed"
    session.execute(
        update(ProcessingTask)
        .where(ProcessingTask.id == task_id, ProcessingTask.status.in_(ACTIVE_STATUSES))
        .values(status=status, finished_at=now, error="; ".join(failures) or None)
        .execution_options(synchronize_session=False)
    )


def subtask_status(session: Session, task_id: str, name: str) -> str | None:
    return session.scalar(
        select(SubTask.status).where(SubTask.task_id == task_id, SubTask.name == name)
    )


def cancel_task(session: Session, task_id: str, reason: str) -> bool:
    """Mark an active task and its unfinished steps cancelled; False if it was not active."""
    now = utcnow()
    result = session.execute(
        update(ProcessingTask)
        .where(ProcessingTask.id == task_id, ProcessingTask.status.in_(ACTIVE_STATUSES))
        .values(status="cancelled", finished_at=now, error=reason)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    session.execute(
        update(SubTask)
        .where(SubTask.task_id == task_id, SubTask.status.in_(("pending", "running")))
        .values(status="cancelled", finished_at=now, error=reason)
        .execution_options(synchronize_session=False)
    )
    return True


class ProgressReporter:
    """Turns a stream of fractions from a media tool into throttled progress writes."""

    def __init__(self, write: Callable[[float], None], min_interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self._min_interval = min_interval
        self._clock = clock
        self._last_time = float("-inf")
        self._last_value = 0.0
        self.writes = 0

    def __call__(self, fraction: float) -> None:
        percent = round(min(1.0, max(0.0, fraction)) * 100.0, 2)
        now = self._clock()
        if percent <= self._last_value or now - self._last_time < self._min_interval:
            return
        self._last_time, self._last_value = now, percent
        self.writes += 1
        self._write(percent)
