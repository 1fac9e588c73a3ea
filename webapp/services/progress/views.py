"""What a task's progress reads as: the views, the weighted total and the ETA of one task."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from webapp.config import STEPS
from webapp.models import ACTIVE_STATUSES, SUBTASK_DONE, ProcessingTask, SubTask, utcnow
from webapp.services import eta


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
    # When the run is expected to end: the task's last change (updated_at) plus eta_seconds,
    # so it too stays the same between changes, and a client counts down to it.
    eta_at: datetime | None = None
    # A queued run: the active runs triggered before it, which the queue serves first. Its
    # end depends on their work, which is not estimated: eta_seconds and eta_at are None
    # while it is behind any, and work_seconds says what its own steps take.
    runs_ahead: int = 0
    # The time its own steps take (what eta_seconds is, save behind other runs).
    work_seconds: float | None = None

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
    the same thing and a poll may answer 304 Not Modified. `eta_at` (that change plus the
    ETA) is what a client counts down to between changes.
    """
    return _view(task, list(task.subtasks))


def _view(task, subs: list, ahead: int = 0) -> ProgressView:
    """The view of a task and its subtasks, ORM objects or rows with the same attributes;
    `ahead`: the runs a queued one waits behind (queries.runs_ahead)."""
    progress = weighted_total((s.weight, s.status, s.progress) for s in subs)
    ahead = ahead if task.status == "queued" else 0
    work = estimate_eta(task, subs, task.updated_at)
    seconds = None if ahead else work
    ends = (task.updated_at + timedelta(seconds=seconds)
            if seconds is not None and task.updated_at is not None else None)
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
        eta_seconds=seconds,
        eta_at=ends,
        runs_ahead=ahead,
        work_seconds=work,
    )


def initial_view(video_id: str, weights: Mapping[str, float]) -> ProgressView:
    """What a video that never ran reports: pending, 0 %, every step pending."""
    subs = [SubtaskView(s, "pending", 0.0, weights[s], 0, False, None, None, None) for s in STEPS]
    return ProgressView(video_id, None, None, "pending", 0.0, subs, None, None, None, None, None)



def progress_of(
    video_id: str, task: ProcessingTask | None, weights: Mapping[str, float]
) -> ProgressView:
    """Progress of a video whose latest task (from `latest_task`) is `task`."""
    return task_view(task) if task is not None else initial_view(video_id, weights)
