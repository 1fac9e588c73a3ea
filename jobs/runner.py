"""Runs one attempt of a step: start it, watch it, publish its outputs or discard them."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from redis.exceptions import RedisError
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from jobs import delivery, hooks, remote
from jobs.attempt import AttemptWatch, with_retries
from webapp.config import Settings
from webapp.db import session_factory
from webapp.models import ACTIVE_STATUSES, SUBTASK_DONE, SUBTASK_FINAL, ProcessingTask, Video
from webapp.services import ffrun, progress, publications
from webapp.services.errors import ToolError, internal_error, is_disk_full, without_paths
from webapp.services.ffrun import MediaError
from webapp.services.queue import NEEDS
from webapp.services.storage import STEP_OUTPUTS, Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepContext:
    """What a step needs to do its work; no database access from inside the work."""

    settings: Settings
    video_id: str
    source: Path
    format_name: str  # as probed at upload: the only demuxer that may read the source
    artifacts: Path  # this attempt's own output folder
    inputs: dict[str, Path]  # the video's published outputs, by name (e.g. audio.wav)
    duration: float | None
    width: int | None
    height: int | None
    has_audio: bool
    on_progress: Callable[[float], None]
    stop: threading.Event  # set when the attempt is no longer wanted
    language: str | None = None  # the spoken language the task asks for, None: detect it
    translate: bool = False  # the task asks for English captions too
    # Where a step's guessed progress goes (a share that measures nothing: see AttemptWatch)
    on_guess: Callable[[float], None] | None = None


@dataclass(frozen=True)
class StepResult:
    """What a step says besides its files, recorded when they are published."""

    note: str | None = None  # one sentence shown with the completed step
    video: dict[str, object] = field(default_factory=dict)  # facts written on the video
    # A transcript's segments (start, end, text), indexed for search when it is published,
    # and its English translation's.
    segments: tuple[tuple[float, float, str], ...] | None = None
    translation: tuple[tuple[float, float, str], ...] = ()


Work = Callable[[StepContext], "StepResult | None"]


class StepFailed(Exception):
    """The step failed for a reason the media or the model gave, already recorded on the
    step: an expected outcome that the worker logs as one line, without a traceback."""


# Failures that another attempt would only repeat: bad media, bad model, too slow.
PERMANENT = (ToolError, JobTimeoutException)


# What a step's outputs are called when its own writes (transcript, captions, storyboard
# text, the folder's sync to disk) find the disk full.
_OUTPUTS = {"extract_audio": "The audio", "transcribe": "The transcript and captions",
            "thumbnails": "The poster and storyboard", "transcode": "The preview"}


def _disk_full(step: str, exc: Exception) -> Exception:
    """A full disk met by the step's own Python writes, as the sentence ffmpeg's say
    (ffrun.DISK_FULL): a ToolError, so not retried either (a try a moment later finds the
    disk as full). It was an internal error with a traceback, tried three times."""
    if isinstance(exc, ToolError) or not (isinstance(exc, OSError) and is_disk_full(exc)):
        return exc
    return ToolError(f"{_OUTPUTS.get(step, 'The outputs')} could not be saved: "
                     f"{ffrun.DISK_FULL}.", detail=os.strerror(exc.errno))


def readable_error(exc: BaseException) -> str | None:
    """The sentence users see for an expected failure (the media, the model, too slow);
    None for anything else: a bug, which users see as an internal error with a reference."""
    if isinstance(exc, ToolError):
        return str(exc).strip()[:1000] or type(exc).__name__
    if isinstance(exc, JobTimeoutException):
        return "the step took longer than its time limit and was stopped"
    if isinstance(exc, remote.TransferError):
        return str(exc)[:1000]
    return None


@dataclass(frozen=True)
class _Started:
    video: Video
    attempt: int
    inputs: dict[str, Path]
    language: str | None
    translate: bool
    published: dict[str, str]  # step -> its published folder (what a remote worker fetches)


def _start(session: Session, storage: Storage, task_id: str, step: str,
           takeover: bool, worker: str | None = None) -> _Started | None:
    """Start an attempt if the task still wants the step; None means: nothing to do."""
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
    language, translate = task.language, bool(task.translate)
    video = session.get(Video, task.video_id)
    session.expunge(video)
    attempt = progress.start_subtask(session, task_id, step, takeover=takeover, worker=worker)
    if attempt is None:
        log.info("task %s no longer wants %s", task_id, step)
        return None
    # Nothing after the commit above: a retry of this function (with_retries) would find
    # the step running already and give up, leaving it running with nobody working on it.
    return _Started(video, attempt, {}, language, translate, {})


def _inputs(session: Session, storage: Storage,
            video_id: str) -> tuple[dict[str, Path], dict[str, str]]:
    """The video's published outputs by name, and each step's published folder."""
    inputs = {a.name: a.path for a in publications.artifacts(session, storage, video_id)}
    published = {s: pub.folder for s, pub in publications.published(session, video_id).items()}
    session.rollback()
    return inputs, published


def _parent_status(session: Session, task_id: str, step: str) -> str | None:
    """The status of the step's parent while the task is active; None otherwise."""
    parent = NEEDS.get(step)
    task = session.get(ProcessingTask, task_id) if parent else None
    status = (progress.subtask_status(session, task_id, parent)
              if task is not None and task.status in ACTIVE_STATUSES else None)
    session.rollback()
    return status


def _wait_for_parent(sessions: sessionmaker[Session], task_id: str, step: str,
                     interval: float) -> None:
    """Wait while the step's parent has not ended (running, or pending a retry).

    RQ runs a step's job once its parent's job ends, and the two agree, except when the
    parent's job id is shared by two deliveries: after the reconciler enqueues a vanished
    job again (Redis restarted), the superseded delivery ends ("stopped") and releases the
    dependants while the parent's new attempt still runs. Starting then would cancel the
    step ("not run because extract_audio running") and fail the task; its job's time
    limit bounds the wait.
    """
    logged = False
    while True:
        status = with_retries(sessions, lambda s: _parent_status(s, task_id, step),
                              f"reading the parent of {step} of task {task_id}")
        if status is None or status in SUBTASK_FINAL:
            return
        if not logged:
            log.info("%s of task %s waits for %s (%s)", step, task_id, NEEDS[step], status)
            logged = True
        time.sleep(max(0.05, interval))


def _takeover(job: Job | None) -> bool:
    """Whether this job may take over a step that still shows running: it is a retry of an
    attempt that died, the reconciler enqueued it again after its job vanished, or its
    worker was stopped while it ran (jobs.hooks.attempt_interrupted)."""
    if job is None:
        return False
    first_try_retries = int(job.meta.get("max_tries", 1)) - 1
    return bool(job.meta.get(hooks.TAKEOVER)) or (job.retries_left or 0) < first_try_retries


def _remember_attempt(job: Job | None, attempt: int) -> None:
    """Tell the crash hooks (jobs.hooks) which attempt this job runs, so that their writes
    are fenced like ours. Not if another delivery of the job holds it in Redis by now
    (jobs/delivery.py): its meta, with its token and attempt, would be overwritten."""
    if job is None:
        return
    job.meta["attempt"] = attempt
    with contextlib.suppress(RedisError):
        delivery.save_meta(job)


def _deadline(job: Job | None) -> float | None:
    """time.monotonic() at which RQ stops the job for its time limit (None: no limit)."""
    if job is None or not job.timeout or job.timeout < 0 or job.started_at is None:
        return None
    elapsed = (datetime.now(UTC) - job.started_at).total_seconds()
    return time.monotonic() + job.timeout - elapsed


def run_step(task_id: str, step: str, work: Work) -> str:
    """Run one attempt of a step of a task: "completed", "not run", "stopped", or raise.

    On the shared MEDIA_ROOT the attempt reads the source and writes its folder in place;
    with SERVER_URL (a worker on another host) it fetches them from the web app and uploads
    its outputs (jobs/remote.py). Progress and fencing go through the database either way.
    """
    settings = Settings.from_env()
    sessions = session_factory(settings.database_url)
    storage = Storage(settings.media_root)
    job = get_current_job()
    _wait_for_parent(sessions, task_id, step, settings.progress_interval)
    started = with_retries(
        sessions, lambda s: _start(s, storage, task_id, step, _takeover(job),
                                   settings.worker_name),
        f"starting {step} of task {task_id}")
    if started is None:
        return "not run"
    began = time.monotonic()  # the wall clock may move while the step runs (_record_cost)
    video, attempt = started.video, started.attempt
    log.info("%s of task %s started (attempt %d, video %s)", step, task_id, attempt, video.id)
    inputs, published = with_retries(sessions, lambda s: _inputs(s, storage, video.id),
                                     f"reading the inputs of {step} of task {task_id}")
    started = dataclasses.replace(started, inputs=inputs, published=published)
    _remember_attempt(job, attempt)
    watch = AttemptWatch(sessions, task_id, step, attempt, settings.progress_interval)
    folder = storage.attempt_folder(task_id, step, attempt)
    away = (remote.RemoteAttempt(remote.Server(settings, watch.stop,
                                               deadline=_deadline(job)),
                                 remote.attempt_folder(settings, task_id, step, attempt))
            if settings.server_url else None)
    out = away.out if away else storage.folder_path(video.id, folder)
    discard = away.discard if away else lambda: storage.remove_folder(video.id, folder)
    published = False
    with watch, ffrun.stopping(watch.stop):
        try:
            # Inside: the attempt has started, so a failure here (a disk too full for a
            # folder) must be recorded too, or the step stays running with nobody on it.
            out.mkdir(parents=True, exist_ok=True)
            if away:
                source, inputs = away.prepare(video, step, started.published)
            else:
                source = storage.source_path(video.id, video.stored_name)
                inputs = started.inputs
            ctx = StepContext(settings, video.id, source, video.format_name, out, inputs,
                              video.duration, video.width, video.height, video.has_audio,
                              watch, watch.stop, started.language, started.translate,
                              watch.guess)
            result = work(ctx) or StepResult()
            ffrun.check_stop()
            if not all((out / name).is_file() for name in STEP_OUTPUTS[step]):
                raise MediaError(f"{step} did not write all its outputs")
            if away:
                published = away.publish(task_id, step, attempt, result.note, result.video,
                                          began)
            else:
                storage.sync_folder(video.id, folder)  # on the disk before it is published
        except Exception as exc:
            discard()
            if watch.stop.is_set() or not _still_current(sessions, task_id, step, attempt):
                log.info("%s of task %s: attempt %d stopped", step, task_id, attempt)
                return "stopped"
            if isinstance(exc, remote.TokenRefused) and job is not None:
                _hand_back(sessions, job, task_id, step, attempt, settings.worker_name)
            _record_failure(sessions, job, task_id, step, attempt, exc, settings.media_root,
                            settings.worker_name if away else None)
            raise
    if not away:
        published = _publish(sessions, task_id, step, attempt, video.id, folder, result,
                             began)
    if not published:
        discard()
        log.info("%s of task %s: attempt %d superseded; not published", step, task_id, attempt)
        return "stopped"
    if away:
        discard()  # the web app has the files now (and removed what they replaced)
        log.info("%s of task %s completed on %s (attempt %d, %d bytes down, %d up)", step,
                 task_id, settings.worker_name, attempt, away.server.bytes_down,
                 away.server.bytes_up)
        return "completed"
    with_retries(sessions, lambda s: publications.collect_garbage(s, storage, video.id),
                 f"removing replaced outputs of video {video.id}")
    log.info("%s of task %s completed (attempt %d, %d progress writes)", step, task_id,
             attempt, watch.writes)
    return "completed"


def _hand_back(sessions: sessionmaker[Session], job: Job, task_id: str, step: str,
               attempt: int, worker: str | None) -> None:
    """The web app refused this worker's WORKER_TOKEN: not the step's fault, and any other
    worker may do it. The step waits again, saying why, its job goes back to the queue
    without using a try (RQ's retry of the failure takes the one added here), and the job
    is marked so that this worker stops taking jobs (jobs/worker.py)."""
    reason = (f"worker {worker or 'on another host'} was refused by the web app (wrong "
              "WORKER_TOKEN) and stopped; the step waits for another worker")
    with_retries(sessions, lambda s: progress.retry_subtask(s, task_id, step, reason, attempt),
                 f"handing {step} of task {task_id} back")
    log.error("%s of task %s: the web app refused this worker's WORKER_TOKEN; handed back "
              "to the queue", step, task_id)
    job.retries_left = (job.retries_left or 0) + 1
    job.meta[hooks.TOKEN_REFUSED] = hooks.worker_identity(os.getppid())
    job.save_meta()
    raise StepFailed(f"{step} of task {task_id}: handed back, this worker's WORKER_TOKEN "
                     "was refused") from None


def _still_current(sessions: sessionmaker[Session], task_id: str, step: str,
                   attempt: int) -> bool:
    """Whether the attempt is still wanted; True when the database cannot tell (a failure
    of a stale attempt is then refused by the fenced write anyway)."""
    try:
        with sessions() as session:
            return progress.attempt_is_current(session, task_id, step, attempt)
    except SQLAlchemyError:
        return True


def _publish(sessions: sessionmaker[Session], task_id: str, step: str, attempt: int,
             video_id: str, folder: str, result: StepResult, began: float) -> bool:
    """Complete the step and publish the folder; True if this attempt's files are published.
    `began`: time.monotonic() when the attempt started.

    A retried write may find its first try committed after all (the answer was lost):
    the publication row then names this very attempt.
    """
    tries = 0

    def write(session: Session) -> bool:
        nonlocal tries
        tries += 1
        if progress.complete_subtask(session, task_id, step, attempt, video_id=video_id,
                                     folder=folder, note=result.note,
                                     video_values=result.video, segments=result.segments,
                                     translation=result.translation,
                                     ran_for=time.monotonic() - began):
            return True
        pub = publications.published(session, video_id).get(step) if tries > 1 else None
        return pub is not None and (pub.task_id, pub.attempt) == (task_id, attempt)

    return with_retries(sessions, write, f"publishing {step} of task {task_id}")


def _record_failure(sessions: sessionmaker[Session], job: Job | None, task_id: str, step: str,
                    attempt: int, exc: Exception, media_root: Path,
                    remote_host: str | None = None) -> None:
    """Record the failed attempt (retry or failed for good); raise StepFailed for expected
    failures so that the worker logs them as one line. `remote_host`: the worker's name
    when it is on another host than the server (SERVER_URL).

    Users read the step's `error` and `error_detail`: a bug's own words (and traceback) go
    to the log only, under the reference the step shows, and no server path is kept.
    """
    exc = _disk_full(step, exc)
    reason = readable_error(exc)
    if reason is None:  # logged here, with its traceback
        reason = internal_error(log, exc, f"in {step} of task {task_id} (attempt {attempt})")
    reason = without_paths(reason, [media_root])
    if remote_host:  # the disk ffmpeg wrote to is this worker host's, not the server's
        reason = reason.replace(ffrun.DISK_FULL, f"the disk of worker host {remote_host} is full")
    detail = exc.detail if isinstance(exc, ToolError) else None
    detail = without_paths(detail, [media_root]) if detail else None
    if job is not None and job.retries_left and not isinstance(exc, PERMANENT):
        with_retries(sessions, lambda s: progress.retry_subtask(
            s, task_id, step, f"{reason}; retrying ({job.retries_left} tries left)", attempt),
            f"recording a retry of {step} of task {task_id}")
        log.warning("%s of task %s failed: %s; retrying", step, task_id, reason)
        return
    if job is not None:
        job.retries_left = 0  # RQ must not retry what the step already gave up
    with_retries(sessions, lambda s: progress.finish_subtask(
        s, task_id, step, "failed", reason, attempt=attempt, detail=detail),
        f"recording the failure of {step} of task {task_id}")
    if isinstance(exc, PERMANENT):
        raise StepFailed(f"{step} of task {task_id} failed: {reason}") from None
