"""Runs one step of a task: decide whether to work, track progress, record the outcome."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rq import get_current_job
from rq.timeouts import JobTimeoutException

from webapp.config import Settings
from webapp.db import session_factory
from webapp.models import SUBTASK_DONE, ProcessingTask, Video
from webapp.services import progress
from webapp.services.media import MediaError
from webapp.services.queue import NEEDS
from webapp.services.storage import Storage
from webapp.services.transcription import TranscriptionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepContext:
    """What a step needs to do its work; no database access from inside the work."""

    settings: Settings
    video_id: str
    source: Path
    artifacts: Path
    duration: float | None
    width: int | None
    height: int | None
    has_audio: bool
    on_progress: Callable[[float], None]


Work = Callable[[StepContext], None]


def readable_error(exc: BaseException) -> str:
    """One line a user can act on, not a traceback."""
    if isinstance(exc, MediaError | TranscriptionError):
        text = str(exc)
    elif isinstance(exc, JobTimeoutException):
        text = f"the step took too long and was stopped ({exc})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text.strip()[:1000] or type(exc).__name__


def _prepare(sessions, task_id: str, step: str) -> Video | None:
    """Start the step if the task still wants it; None means: nothing to do."""
    with sessions() as session:
        task = session.get(ProcessingTask, task_id)
        if task is None:
            log.info("task %s is gone; %s not run", task_id, step)
            return None
        parent = NEEDS.get(step)
        parent_status = progress.subtask_status(session, task_id, parent) if parent else None
        if parent and parent_status not in SUBTASK_DONE:
            progress.finish_subtask(session, task_id, step, "cancelled",
                                    f"not run because {parent} {parent_status}")
            return None
        if not progress.start_subtask(session, task_id, step):
            log.info("task %s no longer wants %s", task_id, step)
            return None
        video = session.get(Video, task.video_id)
        session.expunge(video)
        return video


# Failures that another attempt would only repeat: bad media, bad model, too slow.
PERMANENT = (MediaError, TranscriptionError, JobTimeoutException)


def _record_failure(session, task_id: str, step: str, exc: Exception) -> None:
    reason = readable_error(exc)
    job = get_current_job()
    if job is not None and job.retries_left and not isinstance(exc, PERMANENT):
        progress.retry_subtask(session, task_id, step,
                               f"{reason}; retrying ({job.retries_left} tries left)")
        log.warning("%s of task %s failed: %s; retrying", step, task_id, reason)
        return
    if job is not None:
        job.retries_left = 0  # RQ must not retry what the step already gave up
    progress.finish_subtask(session, task_id, step, "failed", reason)
    log.warning("%s of task %s failed: %s", step, task_id, reason)


def run_step(task_id: str, step: str, work: Work) -> str:
    """Execute `work` for one step of a task, recording start, progress and end."""
    settings = Settings.from_env()
    sessions = session_factory(settings.database_url)
    video = _prepare(sessions, task_id, step)
    if video is None:
        return "not run"
    storage = Storage(settings.media_root)
    with sessions() as session:
        storage.remove_step_outputs(video.id, step)
        reporter = progress.ProgressReporter(
            lambda percent: progress.report_progress(session, task_id, step, percent),
            settings.progress_interval,
        )
        ctx = StepContext(settings, video.id, storage.source_path(video.id, video.stored_name),
                          storage.artifacts_dir(video.id), video.duration, video.width,
                          video.height, video.has_audio, reporter)
        try:
            work(ctx)
        except Exception as exc:
            storage.remove_step_outputs(video.id, step)
            session.rollback()
            _record_failure(session, task_id, step, exc)
            raise
        progress.finish_subtask(session, task_id, step, "completed")
    log.info("%s of task %s completed (%d progress writes)", step, task_id, reporter.writes)
    return "completed"
