"""Starting and cancelling processing runs: the trigger transaction, then the queue."""

from __future__ import annotations

import logging

from redis import Redis
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webapp.config import STEPS, Settings
from webapp.models import ProcessingTask, Video
from webapp.services import progress, queue
from webapp.services.errors import Conflict, NotFound
from webapp.services.storage import Storage, is_valid_id

log = logging.getLogger(__name__)
MODES = ("run_sync", "reprocess")


def get_video(session: Session, video_id: str) -> Video:
    """The video, or NotFound for unknown ids of any shape."""
    if not is_valid_id(video_id):
        raise NotFound("no video has this id (ids are UUIDs)")
    video = session.get(Video, video_id)
    if video is None:
        raise NotFound(f"video {video_id} not found")
    return video


def inapplicable_steps(video: Video) -> dict[str, str]:
    """Steps that cannot run on this media, with the reason."""
    skipped = {}
    if not video.has_audio:
        skipped["extract_audio"] = skipped["transcribe"] = "no audio stream"
    if not video.has_video:
        skipped["thumbnails"] = skipped["transcode"] = "no video stream"
    return skipped


def _conflict(session: Session, video_id: str) -> Conflict:
    active = progress.active_task(session, video_id)
    task_id = active.id if active else None
    status = active.status if active else "active"
    return Conflict(
        f"video {video_id} already has a {status} task {task_id}; "
        "wait for it, cancel it, or pass force=true to replace it",
        task_id=task_id,
    )


def _replace_active(session: Session, connection: Redis, video_id: str) -> None:
    active = progress.active_task(session, video_id)
    if active is not None and progress.cancel_task(session, active.id, "replaced by a forced run"):
        session.commit()
        queue.stop_jobs(connection, active.id)


def trigger(session: Session, settings: Settings, storage: Storage, connection: Redis,
            video_id: str, mode: str, force: bool = False) -> ProcessingTask:
    """Create the video's one active task and enqueue its steps (409 if one is active)."""
    assert mode in MODES, mode
    video = get_video(session, video_id)
    if force:
        _replace_active(session, connection, video_id)
    # Without force an active task is found by the insert itself: the partial unique index
    # (one active task per video) refuses it, and the 409 names the task it collided with.
    skipped = inapplicable_steps(video)
    reused = []
    if mode == "run_sync":
        reused = [s for s in STEPS
                  if s not in skipped and storage.step_outputs_exist(video.id, s)]
    task = progress.new_task(video, mode, settings.weights, skipped, reused)
    try:
        progress.insert_task(session, task)
        session.commit()
    except IntegrityError:
        # The video has an active task (maybe one a concurrent request just created).
        session.rollback()
        raise _conflict(session, video_id) from None
    to_run = [s.name for s in task.subtasks if s.status == "pending"]
    if to_run:
        try:
            queue.enqueue_steps(connection, settings, task.id, video.id, to_run, video.duration)
        except Exception:
            progress.delete_task(session, task.id)
            session.commit()
            raise
    log.info("task %s (%s) for video %s: running %s", task.id, mode, video.id, to_run)
    return task


def cancel(session: Session, connection: Redis, video_id: str) -> ProcessingTask:
    """Cancel the video's active task (409 if there is none)."""
    get_video(session, video_id)
    active = progress.active_task(session, video_id)
    if active is None or not progress.cancel_task(session, active.id, "cancelled by request"):
        session.rollback()
        raise Conflict(f"video {video_id} has no active task to cancel")
    session.commit()
    queue.stop_jobs(connection, active.id)
    session.refresh(active)
    return active
