"""What happens when a step's attempt dies: retry it, or record the failure for good."""

from __future__ import annotations

import logging
import os
import socket

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.job import Job

from jobs.attempt import with_retries
from webapp.config import Settings
from webapp.db import session_factory
from webapp.services import progress, publications
from webapp.services.queue import DELIVERY
from webapp.services.storage import Storage

log = logging.getLogger(__name__)


def superseded(job: Job, connection: Redis | Pipeline | None = None) -> bool:
    """Whether Redis now holds another delivery of this job's id than `job` (as its worker
    dequeued it): the reconciler enqueued the step again, under the same id, after Redis
    forgot the job (restarted empty), and that delivery's attempt has taken the step over.

    The job hash, its registries and the step's running attempt are then the other
    delivery's: what ends this one (its horse killed) must touch none of them. False when
    Redis cannot tell (no job hash, a job enqueued before deliveries had tokens).
    `connection`: a pipeline that WATCHes the job's hash (jobs/delivery.py), so that the
    answer holds until its commit.
    """
    return _other_delivery(job, _stored_meta(job, connection))


def _stored_meta(job: Job, connection: Redis | Pipeline | None = None) -> dict | None:
    """The job's meta as Redis holds it now; None when Redis cannot tell. Through a
    watching pipeline, a Redis error is raised: its commit would fail anyway."""
    try:
        raw = (connection or job.connection).hget(job.key, "meta")
        return job.serializer.loads(raw) if raw else None
    except RedisError:
        if connection is not None:
            raise
        return None
    except Exception:  # a meta that cannot be read decides nothing
        return None


def _other_delivery(job: Job, meta: dict | None) -> bool:
    mine = job.meta.get(DELIVERY)
    current = meta.get(DELIVERY) if isinstance(meta, dict) else None
    return mine is not None and current is not None and current != mine


def _refresh_attempt(job: Job) -> bool:
    """Read the attempt number the horse saved into `job.meta`; False, leaving it as it was,
    when Redis holds another delivery of the job by now: its meta, read with the attempt
    number in one read, is the live delivery's (whose attempt the writes would then mark
    failed or retrying), so nothing may be recorded. True when Redis cannot tell."""
    meta = _stored_meta(job)
    if _other_delivery(job, meta):
        log.warning("job %s: another delivery of the job took the step over; its dead "
                    "attempt is not recorded", job.id)
        return False
    if meta is not None:
        job.meta = meta
    return True


TOKEN_REFUSED = "token_refused"  # job meta: the worker whose WORKER_TOKEN was refused
TAKEOVER = "takeover"  # job meta: its next attempt may take over a step shown running


def worker_identity(pid: int) -> str:
    """The worker process `pid` of this host, as the token-refused mark names it."""
    return f"{socket.gethostname()}:{pid}"


def token_refused(job: Job) -> bool:
    """Whether the web app refused this worker's WORKER_TOKEN in the job's last attempt,
    run by one of its horses (jobs/runner.py marks the job with the horse's parent)."""
    meta = _stored_meta(job)
    return isinstance(meta, dict) and meta.get(TOKEN_REFUSED) == worker_identity(os.getpid())


def attempt_failed(job: Job, reason: str) -> None:
    """Record a dead attempt of a step job; RQ's Retry decides whether another comes."""
    task_id, step = job.meta.get("task_id"), job.meta.get("step")
    if not task_id or not step:
        return
    # The attempt the dead job ran (None if it died before starting one): the writes below
    # are fenced by it, so they never touch a newer attempt of the step.
    attempt = job.meta.get("attempt")
    settings = Settings.from_env()
    sessions = session_factory(settings.database_url)
    if job.retries_left:
        with_retries(sessions, lambda s: progress.retry_subtask(
            s, task_id, step, f"{reason}; retrying ({job.retries_left} tries left)", attempt),
            f"recording a retry of {step} of task {task_id}")
        log.warning("%s of task %s: %s; retrying", step, task_id, reason)
    else:
        tries = job.meta.get("max_tries")
        suffix = f" (after {tries} attempts)" if tries and tries > 1 else ""
        with_retries(sessions, lambda s: progress.finish_subtask(
            s, task_id, step, "failed", reason + suffix, attempt=attempt),
            f"recording the failure of {step} of task {task_id}")
        log.error("%s of task %s failed for good: %s", step, task_id, reason)
    _remove_dead_files(sessions, settings, job)


def attempt_interrupted(job: Job, reason: str) -> None:
    """Record an attempt stopped with its worker (jobs/worker.py, request_stop): the step
    waits again, saying why, and its job goes back to the queue without using a try.

    The job goes back marked to take the step over (TAKEOVER, as the reconciler's jobs
    are). The write below is fenced by the attempt number the horse saved in the job's meta,
    and the horse saves it only after the step was committed running (jobs/runner.py,
    `_remember_attempt`; a Redis error there is let pass): a stop in between left the step
    running, the write changed nothing, and the job, put back with its tries unchanged, was
    refused the step by the next worker ("not run"), which the reconciler then took for the
    step's failure. A stopped worker failed the run.

    Taking over robs no live attempt. The horse's attempt is over: its worker killed its
    process group (the step's ffmpeg or whisper with it) and waited for it. Another delivery
    of the job, the one way an attempt of this step could have started meanwhile, is seen
    first (`superseded` in the worker, then `_refresh_attempt`: nothing is marked), and the
    mark reaches Redis only in RQ's retry, whose commit Redis refuses once it holds another
    delivery (jobs/delivery.py, `fenced`). Were the step's attempt live all the same (RQ
    took this worker for dead, its heartbeats missing, and ran this very delivery on another
    worker), that attempt, fenced by its number like every write, would find itself stale
    and stop: the step runs once more, nothing is published twice or lost."""
    task_id, step = job.meta.get("task_id"), job.meta.get("step")
    if not task_id or not step:
        return
    if not _refresh_attempt(job):
        return
    # Set after the refresh (it replaces the meta) and before the writes (which may fail):
    # RQ's retry saves the meta with the job it puts back (Queue._persist_job).
    job.meta[TAKEOVER] = True
    attempt = job.meta.get("attempt")
    settings = Settings.from_env()
    sessions = session_factory(settings.database_url)
    with_retries(sessions, lambda s: progress.retry_subtask(s, task_id, step, reason, attempt),
                 f"recording the stop of {step} of task {task_id}", delays=(0.5, 1))
    log.warning("%s of task %s: %s", step, task_id, reason)
    _remove_dead_files(sessions, settings, job)


def _remove_dead_files(sessions, settings: Settings, job: Job) -> None:
    """The dead attempt could not remove its folder; no later publication may come to."""
    video_id = job.meta.get("video_id")
    if video_id:
        storage = Storage(settings.media_root)
        with_retries(sessions, lambda s: publications.collect_garbage(s, storage, video_id),
                     f"removing the files of job {job.id}", delays=(0.5, 1, 2))


def on_failure(job: Job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback: runs in the horse after an exception, or in the process that
    finds the job abandoned because its whole worker died."""
    from rq.exceptions import AbandonedJobError

    if isinstance(exc_value, AbandonedJobError) or exc_type is AbandonedJobError:
        attempt_failed(job, "the worker running this step stopped responding (crash?)")
    # Exceptions raised by the step itself were already recorded by the step runner.


def on_stopped(job: Job, connection) -> None:
    """RQ stopped callback: runs in the worker once the horse it killed for `stop_jobs`
    (cancel, force) is dead. The horse could not remove its attempt's folder, and no
    publication of the video may come to collect it: collect it now."""
    settings = Settings.from_env()
    _remove_dead_files(session_factory(settings.database_url), settings, job)


def horse_killed(job: Job, retpid: int, ret_val: int, rusage) -> None:
    """Worker hook: the work-horse process died without reporting (SIGKILL, OOM killer)."""
    if ret_val is None:  # RQ found no child to reap: its exit status is unknown
        how = "exit status unknown"
    elif os.WIFSIGNALED(ret_val):
        how = f"signal {os.WTERMSIG(ret_val)}"
    else:
        how = f"status {ret_val}"
    if not _refresh_attempt(job):
        return
    attempt_failed(job, f"the worker process running this step was killed ({how})")
