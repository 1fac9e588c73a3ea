"""Whole tasks written: a new task and its subtasks, its removal, its cancellation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from webapp.config import STEPS
from webapp.models import (
    ACTIVE_STATUSES,
    SUBTASK_DONE,
    ProcessingTask,
    SubTask,
    Video,
    new_id,
    utcnow,
)
from webapp.services import webhooks


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
    """The rows of a new queued task and of its subtasks, one per step. `skipped` maps
    step -> reason it does not apply; `reused` steps are completed already (outputs kept);
    with every step skipped or reused the task is completed. `language` (None: detect it)
    and `translate` are what its transcription asks for. `costs` (step -> its kind and
    units of media) and `expected` (step -> seconds alone) are what the steps cost on this
    installation (webapp/services/calibration.py). Every row gives the same columns, so one
    INSERT takes all the subtasks (`insert_task_rows`)."""
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


def new_task(video: Video, mode: str, weights: Mapping[str, float],
             skipped: Mapping[str, str], reused: Iterable[str] = (),
             **options) -> ProcessingTask:
    """`task_rows` as an ORM task with its subtasks (not added to any session); `options`
    are task_rows' others (language, translate, costs, expected)."""
    row, subtasks = task_rows(video.id, mode, weights, skipped, reused, **options)
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
    if task.status == "completed":  # nothing to do: it ended as it began
        webhooks.record(session, [task.id], task.created_at)


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
    if task["status"] == "completed":  # nothing to do: it ended as it began
        webhooks.record(connection, [task["id"]], task["created_at"])


def task_status(session: Session, task_id: str) -> str | None:
    """The task's status (read with a lock on its row where the database has them), None
    if there is no such task."""
    return session.scalar(select(ProcessingTask.status)
                          .where(ProcessingTask.id == task_id).with_for_update())


def delete_unstarted_task(session: Session, task_id: str) -> bool:
    """Remove a task that never ran, with its subtasks, while no step of it has started
    (none has an attempt: start_subtask numbers them from 1); False, nothing removed, once
    one has.

    A started step may have published outputs: the video's publications name the task,
    and go with it (ON DELETE CASCADE). The task's row is locked first, as start_subtask's
    first write locks it (PostgreSQL); the check and the removal are one statement (SQLite
    writes one statement at a time)."""
    session.scalar(select(ProcessingTask.id).where(ProcessingTask.id == task_id)
                   .with_for_update())
    started = (select(SubTask.id)
               .where(SubTask.task_id == task_id, SubTask.attempt > 0).exists())
    removed = session.execute(
        delete(ProcessingTask).where(ProcessingTask.id == task_id, ~started)
        .execution_options(synchronize_session=False)).rowcount
    if removed:  # gone with it already where foreign keys cascade
        session.execute(delete(SubTask).where(SubTask.task_id == task_id))
    return bool(removed)


def _row(obj) -> dict:
    """The column values set on a new ORM object (unset ones get the column's default)."""
    return {c.key: value for c in obj.__table__.columns
            if (value := getattr(obj, c.key)) is not None}



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
        webhooks.record(session, ids, now)
    return ids
