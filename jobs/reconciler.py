"""Finds what RQ cannot see: steps whose job died or vanished, and tasks left open.

Runs every few seconds beside each worker, as its own process (a thread in the worker
would be forked into every work-horse mid-lock), one pass at a time under a Redis lock:
- cleans RQ's started-job registry so jobs of a dead worker are retried or failed
  (RQ on its own does this only when a worker is idle, every 10 minutes);
- compares every active task in the database with its jobs in Redis: a job that
  vanished (Redis restarted, nothing on disk) is enqueued again; a job that ended
  without its step recording the end gets the step failed with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

from redis import Redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import clean_registries
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from jobs import webhooks
from webapp import stopsignals
from webapp.config import Settings, configure_logging
from webapp.db import session_factory
from webapp.models import ACTIVE_STATUSES, ProcessingTask, Video, utcnow
from webapp.services import progress, queue
from webapp.services import webhooks as service_webhooks
from webapp.services.queue import connect

log = logging.getLogger("jobs.reconciler")  # run as __main__ (`python -m`): named all the same
OUTAGE_REMINDER_SECONDS = 60.0  # how often it says again that Redis does not answer
LOCK_KEY = "vidpipe:reconciler:{queue}"
# How long a pass's lock outlives the last renewal of its holder: a reconciler cut off in
# the middle of a pass (its host's link down) holds up the other hosts' for at most this
# long. It was a fixed 60 s, which alone could take a step's takeover past 60 s.
LOCK_SECONDS = 15.0
# A task younger than this may still be between its commit and its enqueue: longer than a
# trigger's enqueue can take against a slow Redis (2 s to connect + 10 s socket timeout).
GRACE = timedelta(seconds=15)
STALE_UPLOAD = 3600.0  # seconds without a write before a staged upload counts as abandoned
PRUNE_EVERY = 600.0  # seconds between deletions of old webhook events
_pruned_at = -PRUNE_EVERY
ENDED = {JobStatus.FINISHED: "finished", JobStatus.FAILED: "failed",
         JobStatus.STOPPED: "was stopped", JobStatus.CANCELED: "was cancelled"}


def reconcile(settings: Settings, connection: Redis) -> int | None:
    """One pass; returns how many steps it acted on. Skips if another process holds the
    lock: None (the database was not read)."""
    lock = connection.lock(LOCK_KEY.format(queue=settings.queue_name), timeout=LOCK_SECONDS,
                           blocking=False, thread_local=False)  # renewed from a thread
    if not lock.acquire():
        return None
    try:
        with _kept(lock):
            return _pass(settings, connection)
    finally:
        with contextlib.suppress(RedisError, LockError):
            lock.release()


def _pass(settings: Settings, connection: Redis) -> int:
    clean_registries(Queue(settings.queue_name, connection=connection))
    sweep_staging(settings)
    with session_factory(settings.database_url)() as session:
        acted = _check_tasks(session, settings, connection)
        global _pruned_at
        if time.monotonic() - _pruned_at >= PRUNE_EVERY:
            _pruned_at = time.monotonic()
            if webhooks.prune(session):
                session.commit()
        return acted


@contextlib.contextmanager
def _kept(lock: Lock) -> Iterator[None]:
    """Hold `lock` for as long as the pass takes: a thread renews it every third of its
    timeout. A holder that can no longer renew it (its host cut off, the process stopped)
    loses it within LOCK_SECONDS, and another host's reconciler takes over."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(LOCK_SECONDS / 3):
            try:
                lock.reacquire()
            except LockError:  # expired (this process stood still), or taken by another
                if not done.is_set():  # (not merely released as the pass ended)
                    log.warning("reconciler: this pass outlasted its lock (%g s without "
                                "renewal); another process may reconcile beside it",
                                LOCK_SECONDS)
                return
            except RedisError:
                pass  # cut off: the lock expires, as it should; tried again while the pass runs

    with stopsignals.threads_started_here_block_them():
        threading.Thread(target=renew, name="reconciler-lock", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def sweep_staging(settings: Settings, older_than: float = STALE_UPLOAD) -> int:
    """Delete uploads left in staging by a web process that died mid-request.

    A live upload keeps writing, so its file's mtime stays fresh; an hour of silence
    means nobody will ever finish it.
    """
    staging = settings.media_root / "staging"
    removed = 0
    cutoff = time.time() - older_than
    for path in staging.glob("*") if staging.is_dir() else ():
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    if removed:
        log.warning("removed %d abandoned upload(s) from %s", removed, staging)
    return removed


# Active task id -> when this process first saw it not yet GRACE old (time.monotonic()).
_first_seen: dict[str, float] = {}


def _settled(session: Session) -> list[ProcessingTask]:
    """The active tasks past their GRACE: created over GRACE ago, or seen by this process
    for GRACE. The second is for a created_at in the future: the clock went back after the
    trigger (a correction of hours), or the web host that made the task runs ahead of this
    one; by created_at alone such a task was passed over until the clock caught up, and one
    whose jobs Redis had lost stayed queued, nobody working on it, for as long."""
    rows = session.execute(select(ProcessingTask, ProcessingTask.created_at < utcnow() - GRACE)
                           .where(ProcessingTask.status.in_(ACTIVE_STATUSES))).all()
    tick = time.monotonic()
    for gone in _first_seen.keys() - {task.id for task, _ in rows}:
        del _first_seen[gone]
    settled = []
    for task, old in rows:
        if old or tick - _first_seen.setdefault(task.id, tick) >= GRACE.total_seconds():
            settled.append(task)
    return settled


def _check_tasks(session: Session, settings: Settings, connection: Redis) -> int:
    acted = 0
    for task in _settled(session):
        lost, waiting = [], set()
        for sub in task.subtasks:
            if sub.status not in ("pending", "running"):
                continue
            try:
                job = Job.fetch(queue.job_id(task.id, sub.name), connection=connection)
                status = job.get_status()
            except NoSuchJobError:
                lost.append(sub.name)
                continue
            waiting.add(sub.name)
            if status in ENDED and sub.status == "running" and _was_superseded(job, status):
                # The job ended saying its attempt was taken over (e.g. by the job this
                # reconciler enqueued again after Redis forgot it, which has the same id):
                # the step's running attempt is the other delivery's, which RQ tracks
                # by itself (killed horse, abandoned job). Failing the step would kill it.
                continue
            if status in ENDED:
                attempt = sub.attempt if sub.status == "running" else None
                progress.finish_subtask(session, task.id, sub.name, "failed",
                                        f"its job {ENDED[status]} without recording a result",
                                        attempt=attempt)
                acted += 1
        if lost:
            video = session.get(Video, task.video_id)
            log.warning("task %s: no job runs %s (Redis restarted, or the trigger could not "
                        "enqueue); enqueuing them again", task.id, lost)
            queue.enqueue_steps(connection, settings, task.id, task.video_id, lost,
                                video.duration if video else None, after=waiting,
                                takeover=True)
            acted += len(lost)
    session.commit()
    return acted


def _was_superseded(job: Job, status: JobStatus) -> bool:
    """Whether an ended job says its attempt stopped because it was no longer the step's
    running one (jobs.runner.run_step returns "stopped")."""
    if status != JobStatus.FINISHED:
        return False
    try:
        return job.return_value() == "stopped"
    except RedisError:
        raise
    except Exception:  # a result that cannot be read decides nothing
        return False


class _Outage:
    """Says that `what` does not answer once, again once a minute, and when it does again:
    a line at every pass (every 5 s, beside each worker) buried the log during an outage,
    and nothing said when it was over."""

    def __init__(self, what: str) -> None:
        self.what, self.since, self.said = what, None, 0.0

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = self.said = now
            log.warning("reconciler: %s unavailable (%s)", self.what, reason)
        elif now - self.said >= OUTAGE_REMINDER_SECONDS:
            self.said = now
            log.warning("reconciler: %s still unavailable after %.0f s (%s)", self.what,
                        now - self.since, reason)

    def answered(self) -> None:
        if self.since is not None:
            log.info("reconciler: %s answers again (after %.0f s)", self.what,
                     time.monotonic() - self.since)
            self.since = None


def run_forever(settings: Settings, connection: Redis, interval: float,
                alive: Callable[[], bool] = lambda: True) -> None:
    """Reconcile every `interval` seconds while alive(); never dies on an error.

    Redis or the database not answering is said when it starts, then once a minute, and
    its end too (_Outage)."""
    redis, database = _Outage("Redis"), _Outage("database")
    while alive():
        try:
            acted = reconcile(settings, connection)
            redis.answered()
            if acted is not None:
                database.answered()
            if acted:
                log.info("reconciler acted on %d step(s)", acted)
        except RedisError as exc:
            redis.failed(str(exc))
        except SQLAlchemyError as exc:  # an outage, not a bug: one line, not a traceback
            redis.answered()  # (its lock was taken: the database is read under it)
            database.failed(" ".join(str(getattr(exc, "orig", None) or exc).split())[:200])
        except Exception:
            log.exception("reconciler pass failed")
        time.sleep(interval)


def spawn() -> subprocess.Popen:
    """Start a reconciler process that ends with its parent, this worker.

    The parent's pid goes on the command line: read by the child with os.getppid() after
    its start-up, it would be PID 1's if the worker died first, and followed forever.
    """
    return subprocess.Popen([sys.executable, "-m", "jobs.reconciler",
                             "--parent", str(os.getpid())])


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def follow_parent(parent: int) -> bool:
    """Have the kernel send SIGTERM when `parent` ends; False if it has already ended.

    Asked first, checked second: a parent that dies before the request leaves this process
    adopted by another (so the check fails), one that dies after it triggers the signal.
    The run loop still compares os.getppid() with `parent` where prctl does not exist.
    """
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is not None and prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    return os.getppid() == parent


_ending = False  # a first SIGTERM/SIGINT came: this process is on its way out


def _end(signum, frame) -> None:
    """SIGTERM or SIGINT: end with status 0, once. Ctrl-C of `make worker` brings SIGINT, then
    the worker's SIGTERM as it stops (and the kernel's, PR_SET_PDEATHSIG, once it has gone):
    a second `sys.exit` raised while this process was already exiting (in logging's or
    weakref's atexit callbacks) printed "Exception ignored in atexit callback" and a
    traceback; one at the very end of the exit (handlers back to the default) ended the
    process by the signal. The signals after the first are blocked, and one already on its
    way does nothing. (Not SIG_IGN: a signal that came in before the change is then reported
    as "Signal 15 ignored due to race condition", with a traceback of its own.)"""
    global _ending
    if _ending:
        return
    _ending = True
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parent", type=int, metavar="PID",
                        help="end when this process (the worker that started this one) ends")
    args = parser.parse_args(argv)
    if args.parent is not None and not follow_parent(args.parent):
        return 0  # the worker died while this process was starting
    # Ctrl-C of `make worker` reaches the terminal's whole process group, this process too:
    # an end like SIGTERM's (its worker stops as well), not a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, _end)
    signal.signal(signal.SIGTERM, _end)  # last: a SIGTERM handler says both are in place
    configure_logging()
    settings = Settings.from_env()
    service_webhooks.configure(settings)  # the steps it fails end tasks too
    alive = (lambda: True) if args.parent is None else (lambda: os.getppid() == args.parent)
    if settings.webhook_url:  # a thread: this process is never forked
        sender = webhooks.Sender(settings, session_factory(settings.database_url))
        with stopsignals.threads_started_here_block_them():  # (a daemon at the exit)
            threading.Thread(target=sender.run, args=(alive,), name="webhooks",
                             daemon=True).start()
    run_forever(settings, connect(settings.redis_url), settings.reconcile_interval, alive)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
