"""Starting and cancelling processing runs: the trigger transaction, then the queue."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis import Redis
from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webapp.config import STEPS, Settings
from webapp.models import ACTIVE_STATUSES, ProcessingTask, Video
from webapp.services import calibration, languages, progress, publications, queue
from webapp.services.errors import Conflict, NotFound, QueueUnavailable, no_such_id
from webapp.services.storage import Storage, is_valid_id

log = logging.getLogger(__name__)
MODES = ("run_sync", "reprocess")


def get_video(session: Session, video_id: str) -> Video:
    """The video, or NotFound for unknown ids of any shape."""
    if not is_valid_id(video_id):
        raise no_such_id(video_id)
    video = session.get(Video, video_id)
    if video is None:
        raise NotFound(f"video {video_id} not found")
    return video


# A trigger's statements are built once and run on the session's connection, outside the
# ORM: building an ORM load of the video (or an ORM insert) per request cost three times
# what running it did, and a trigger is CPU work that 8 concurrent clients queue for
# (docs/PERFORMANCE.md, section 3). A trigger reads committed rows: nothing is flushed.
_VIDEOS = Video.__table__
_TRIGGER_VIDEO = select(
    _VIDEOS.c.id, _VIDEOS.c.duration, _VIDEOS.c.width, _VIDEOS.c.height, _VIDEOS.c.has_audio,
    _VIDEOS.c.has_video, _VIDEOS.c.requested_language, _VIDEOS.c.translate,
    _VIDEOS.c.transcript_model, _VIDEOS.c.transcript_script,
).where(_VIDEOS.c.id == bindparam("video_id"))
_SET_OPTIONS = update(_VIDEOS).where(_VIDEOS.c.id == bindparam("video_id")).values(
    requested_language=bindparam("new_language"), translate=bindparam("new_translate"))


def trigger_video(session: Session, video_id: str) -> Row:
    """What a trigger needs of the video (id, media facts, transcription options), or
    NotFound as get_video."""
    if not is_valid_id(video_id):
        raise no_such_id(video_id)
    row = session.connection().execute(_TRIGGER_VIDEO, {"video_id": video_id}).first()
    if row is None:
        raise NotFound(f"video {video_id} not found")
    return row


@dataclass(frozen=True)
class NewTask:
    """What a trigger made: the task, its status, and the steps it enqueued."""

    id: str
    video_id: str
    status: str
    steps: list[str]


def inapplicable_steps(video: Video | Row) -> dict[str, str]:
    """Steps that cannot run on this media, with the reason."""
    skipped = {}
    if not video.has_audio:
        skipped["extract_audio"] = skipped["transcribe"] = "no audio stream"
    if not video.has_video:
        skipped["thumbnails"] = skipped["transcode"] = "no video stream"
    return skipped


def _conflict(video_id: str, active: ProcessingTask | None) -> Conflict:
    """The 409 naming `active`, read in the transaction that found it (a second read may
    find it ended, and a 409 must name the task)."""
    task_id = active.id if active else None
    status = f"a {active.status}" if active else "an active"
    return Conflict(
        f"video {video_id} already has {status} task {task_id}; "
        "wait for it, cancel it, or pass force=true to replace it",
        task_id=task_id,
    )


# Concurrent forced triggers of one video each replace the task the one before created;
# each try that loses the race to another's insert simply tries again.
FORCE_TRIES = 20
# A plain trigger whose insert collided with a task that ended before it could be named
# (cancelled, replaced) tries again: the video is free, and a 409 must name a task.
PLAIN_TRIES = 3


@dataclass(frozen=True)
class Transcription:
    """How a run transcribes: the spoken language (None: detect it) and translation."""

    language: str | None = None
    translate: bool = False


def transcription_for(settings: Settings, video: Video | Row, language: str | None = None,
                      translate: bool | None = None) -> tuple[Transcription, bool]:
    """What a run of the video asks for: the trigger's options where it gives them
    (`language` a code or "auto"), the video's stored ones otherwise; InvalidOption (422)
    for a language the configured model does not know. Also whether they change the video's.
    """
    wanted = Transcription(
        languages.parse(settings, language) if language is not None
        else languages.check_stored(settings, video.requested_language),
        bool(video.translate if translate is None else translate))
    stored = Transcription(video.requested_language, bool(video.translate))
    return wanted, wanted != stored


def trigger(session: Session, settings: Settings, storage: Storage, connection: Redis,
            video_id: str, mode: str, force: bool = False, language: str | None = None,
            translate: bool | None = None) -> NewTask:
    """Create the video's one active task and enqueue its steps.

    Without force, an active task means Conflict (409), whatever the new task would do.
    With force, the active task is cancelled and the new one created in one transaction,
    and a forced trigger never gets Conflict; if the queue does not answer before that
    switch, QueueUnavailable (503) and the old run goes on untouched. `language` (a code
    or "auto") and `translate`, when given, are used by this run and stored on the video
    (in the task's transaction) for its later runs; when not given, the video's are used.
    """
    assert mode in MODES, mode
    video = trigger_video(session, video_id)
    wanted, changed = transcription_for(settings, video, language, translate)
    if force:
        queue.check_available(connection)
    for _ in range(FORCE_TRIES if force else PLAIN_TRIES):
        created = _create(session, settings, storage, video, mode, force, wanted, changed)
        if created is not None:
            task, replaced = created
            break
    else:
        if not force:
            raise _conflict(video.id, progress.active_task(session, video.id))
        raise QueueUnavailable("too many concurrent forced runs of this video; try again")
    for old in replaced:
        queue.stop_jobs(connection, old)
    if replaced:
        publications.collect_garbage(session, storage, video.id)
    _enqueue(session, settings, connection, task, video, replaced, changed)
    log.info("task %s (%s) for video %s: running %s%s", task.id, mode, video.id, task.steps,
             f", replacing {replaced}" if replaced else "")
    return task


def _create(session: Session, settings: Settings, storage: Storage, video: Row, mode: str,
            force: bool, wanted: Transcription,
            changed: bool) -> tuple[NewTask, list[str]] | None:
    """One try at the trigger's transaction: the new task and the ids of the tasks it
    replaced, or None when it collided with a task that ended before it could be named."""
    # The old task is cancelled first, and the new one made after: once that UPDATE holds
    # the lock, any later forced run has to cancel this one first, so the newest task (by
    # created_at) is always the one left active.
    replaced = (progress.cancel_active(session, video.id, "replaced by a forced run")
                if force else [])
    skipped = inapplicable_steps(video)
    reused = []
    if mode == "run_sync":
        # A transcript made in another language or without the translation asked for now
        # is not kept (publications.complete_steps), nor one another whisper model made,
        # nor a Chinese one in the other script (unknown ones, published before these were
        # recorded, are kept).
        kept = publications.complete_steps(session, storage, video.id, wanted.language,
                                           wanted.translate)
        if (video.transcript_model not in (None, settings.whisper_model)
                or video.transcript_script not in (None, settings.chinese_script)):
            kept.discard("transcribe")
        reused = [s for s in STEPS if s not in skipped and s in kept]
    costs = calibration.step_costs(video, settings.whisper_model, wanted.translate)
    row, subtasks = progress.task_rows(
        video.id, mode, settings.weights, skipped, reused, language=wanted.language,
        translate=wanted.translate, costs=costs,
        expected=calibration.expected_seconds(session, costs))
    task = NewTask(row["id"], video.id, row["status"],
                   [sub["name"] for sub in subtasks if sub["status"] == "pending"])
    # Nothing to run, but "nothing to do" must not hide a task that is running.
    if not force and task.status not in ACTIVE_STATUSES:
        active = progress.active_task(session, video.id)
        if active is not None:
            conflict = _conflict(video.id, active)
            session.rollback()
            raise conflict
    try:
        # Without force an active task is found by the insert itself: the partial unique
        # index (one active task per video) refuses it.
        progress.insert_task_rows(session, row, subtasks)
        if changed:  # the options this trigger gave become the video's
            session.connection().execute(_SET_OPTIONS, {
                "video_id": video.id, "new_language": wanted.language,
                "new_translate": wanted.translate})
        session.commit()
    except IntegrityError:
        session.rollback()
        # The insert also fails when the video was deleted since it was read: that is a
        # 404, not a conflict with an active task that does not exist (nor, forced, a
        # retry until "too many concurrent forced runs").
        trigger_video(session, video.id)
        if not force and (active := progress.active_task(session, video.id)):
            raise _conflict(video.id, active) from None
        return None
    return task, replaced


def _enqueue(session: Session, settings: Settings, connection: Redis, task: NewTask,
             video: Row, replaced: list[str], changed: bool) -> None:
    """Enqueue the new task's jobs. If the queue fails now, a plain trigger is undone (503),
    with the options it stored on the video (`changed`; `video` holds them as they were
    before); a forced one has already replaced the old run, so its task stays queued and
    the reconciler enqueues its jobs once Redis answers again.

    The jobs may have reached Redis though it could not say so (its answer lost, and Redis
    unreachable when asked), and a worker may have started a step of the task meanwhile,
    even completed and published it: the task is then not undone (its removal would take
    the video's publications that name it), and the trigger stands; the reconciler looks
    after its jobs as after any task's."""
    if not task.steps:
        return
    try:
        queue.enqueue_steps(connection, settings, task.id, video.id, task.steps, video.duration)
    except QueueUnavailable:
        if replaced:
            log.warning("task %s: queue unavailable; the reconciler will enqueue it", task.id)
            return
        # Still the video's run: no forced trigger replaced it meanwhile and stored options
        # of its own (read with the task's row lock, before it goes).
        active = changed and progress.task_status(session, task.id) in ACTIVE_STATUSES
        if not progress.delete_unstarted_task(session, task.id):
            session.rollback()
            log.warning("task %s: the queue did not confirm its jobs, but a worker has "
                        "started a step of it: kept", task.id)
            return
        if active:  # the options were stored with the task, and go with it
            session.connection().execute(_SET_OPTIONS, {
                "video_id": video.id, "new_language": video.requested_language,
                "new_translate": video.translate})
        session.commit()
        raise


def cancel(session: Session, storage: Storage, connection: Redis,
           video_id: str) -> ProcessingTask:
    """Cancel the video's active task (409 if there is none).

    Its running attempts stop within a progress interval by their own check of the database
    (RQ's stop command is the fast path); its unpublished files are removed at once.
    """
    get_video(session, video_id)
    cancelled = progress.cancel_active(session, video_id, "cancelled by request")
    if not cancelled:
        session.rollback()
        raise Conflict(f"video {video_id} has no active task to cancel")
    session.commit()
    queue.stop_jobs(connection, cancelled[0])
    publications.collect_garbage(session, storage, video_id)
    task = session.get(ProcessingTask, cancelled[0], populate_existing=True)
    if task is None:  # the video was deleted (with its tasks) once the cancel committed
        raise NotFound(f"video {video_id} was deleted")
    return task
