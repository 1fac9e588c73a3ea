"""Worker entry point: `python -m jobs.worker [--burst]` serves the vidpipe queue."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rq import Queue, Worker, worker_registration
from rq.exceptions import StopRequested
from rq.job import Job
from rq.job_lifecycle import call_exception_handlers

from jobs import delivery, hooks, reconciler, remote
from jobs.runner import StepFailed
from webapp import startup
from webapp.config import ConfigError, Settings, configure_logging, rq_log_level
from webapp.db import session_factory
from webapp.services import webhooks
from webapp.services.queue import connect, unreachable

# vidpipe's own lines (RQ's "rq.worker" logger is at WARNING: webapp.config.rq_log_level)
log = logging.getLogger("jobs.worker")
# How often a worker waiting for Redis says so again.
OUTAGE_REMINDER_SECONDS = 60.0


class OutageLines(logging.Filter):
    """RQ's "could not connect to Redis instance: … retrying in 2 seconds..." (an ERROR from
    its main loop, and another from its command thread, every 2 to 5 seconds each): one
    warning when Redis stops answering, then one a minute while it lasts, saying how many
    were left out. A ten-minute outage wrote some 500 error lines per worker, burying
    everything else; the reconciler beside the worker says when Redis answers again."""

    def __init__(self) -> None:
        super().__init__()
        self.said_at: float | None = None
        self.left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "could not connect to Redis instance" not in str(record.msg):
            return True
        now = time.monotonic()
        if self.said_at is not None and now - self.said_at < OUTAGE_REMINDER_SECONDS:
            self.left_out += 1
            return False
        cause = record.args[1] if isinstance(record.args, tuple) and len(record.args) > 1 else ""
        record.msg = "the job queue (Redis) does not answer (%s); trying again every few seconds%s"
        record.args = (" ".join(str(cause).split()),
                       f" ({self.left_out} more such errors in the last minute)"
                       if self.left_out else "")
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self.said_at, self.left_out = now, 0
        return True


OUTAGE_LINES = OutageLines()


class VidpipeWorker(Worker):
    """RQ's forking worker, with a hook for killed horses and a shorter heartbeat grace.

    RQ declares a silent worker's job abandoned 60 s after its last heartbeat; here it
    takes job_monitoring_interval + heartbeat_grace (30 s by default), so a crashed
    host's step is retried well within a minute, yet a merely slow worker is not robbed.
    """

    # RQ backs off up to 60 s between reconnects while Redis is away; after an outage
    # work should resume within seconds of Redis coming back.
    max_connection_wait_time = 5.0

    def __init__(self, *args, heartbeat_grace: int = 30,
                 after_job: Callable[[], object] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.heartbeat_grace = heartbeat_grace
        self.after_job = after_job
        self.stopped_by: str | None = None  # the signal that stopped the worker mid-step
        self.stopping = False  # told to stop (SIGTERM, SIGINT)
        if OUTAGE_LINES not in self.log.filters:
            self.log.addFilter(OUTAGE_LINES)
        self.token_refused = False  # the web app refused WORKER_TOKEN: stopped, exit 1

    def request_stop(self, signum, frame) -> None:
        """SIGTERM or SIGINT (Ctrl-C of `make run` or `make worker`, honcho's stop, systemd):
        stop now, the running step too, and hand it back to the queue.

        RQ's warm shutdown waits for the step to end: minutes of transcription, while honcho
        sends SIGKILL after 5 s. That killed the worker but not its horse (a process group of
        its own), so the step's ffmpeg or whisper went on with nobody to stop it, honcho
        repeated "sending SIGKILL" ten times a second until they ended, and the step was
        left "running". Here the horse (with its ffmpeg or whisper, in its group) is killed at
        once; `handle_work_horse_killed` records the step as waiting again and RQ puts its
        job back in the queue, where the next worker takes it up.

        Only the first signal does that; the worker is then on its way out, and the later
        ones are blocked (a pending one does nothing, `request_force_stop`), as in the
        reconciler (jobs/reconciler.py, `_end`). Signals come in twos and threes: Ctrl-C of
        `make worker` and a service manager's SIGTERM to the whole group, a second Ctrl-C.
        One that came after RQ's `SystemExit` had begun, or after Python's exit had put the
        default handlers back, ended the worker by SIGTERM (status -15) instead of 0."""
        if self.stopping:  # a signal that was on its way when the first came
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        horse = self.horse_pid
        self.stopping = True
        if horse:
            self.stopped_by = signal.Signals(signum).name
            self.log.addFilter(self._no_unexpected_death)
        try:
            super().request_stop(signum, frame)  # idle: ends the loop; busy: after the job
        finally:
            if horse:
                log.info("stopping the running step (%s); it runs again on the next "
                         "worker", self.stopped_by)
                self.kill_horse()
            else:
                log.info("stopping (%s)", signal.Signals(signum).name)

    def request_force_stop(self, signum, frame) -> None:
        """RQ's cold shutdown, on a signal after the first (RQ installs it as the handler):
        it killed the horse, already killed by `request_stop`, then raised `SystemExit`
        wherever the stopping worker was, in its goodbye to Redis or in Python's exit
        ("Exception ignored in atexit callback" and a traceback). Such a signal was pending
        when `request_stop` blocked them: nothing is left for it to do."""

    def run_maintenance_tasks(self) -> None:
        """RQ's upkeep (its registries cleaned: at the first turn, then every 10 minutes),
        through an outage like any other of the worker's Redis calls. RQ let its connection
        error out of the loop: "found an unhandled exception, quitting..." with a traceback,
        and the worker started over as another. Here the turn goes on to RQ's dequeue, which
        waits for Redis and says so (OutageLines); the upkeep, not done, is due again at the
        next turn."""
        try:
            super().run_maintenance_tasks()
        except RedisConnectionError as exc:
            log.debug("upkeep of the job queue left for the next turn (Redis: %s)", exc)

    def bootstrap(self, *args, **kwargs) -> None:
        """RQ's start (registered, subscribed), then one line saying so: RQ's five are at
        DEBUG only (LOG_LEVEL)."""
        super().bootstrap(*args, **kwargs)
        log.info("Listening on queue %s as worker %s (pid %d)",
                 ", ".join(self.queue_names()), self.name, os.getpid())

    def _no_unexpected_death(self, record: logging.LogRecord) -> bool:
        """Drop RQ's "job … failed (Work-horse terminated unexpectedly; waitpid returned 9
        …)" for the horse killed on purpose: `handle_work_horse_killed` says what happened."""
        return "Work-horse terminated unexpectedly" not in record.getMessage()

    def handle_work_horse_killed(self, job: Job, retpid, ret_val, rusage) -> None:
        """What a dead horse's step records depends on who ended it.

        - Another delivery of its job took the step over (Redis restarted, the reconciler
          enqueued the job again under the same id): its attempt is stale already, and the
          job in Redis, with the attempt number its meta holds, is the live delivery's.
          Recording the death (hooks.horse_killed) would mark that live attempt retrying or
          failed: nothing is recorded. The hooks look again, in the one read that gives
          them the attempt number: a re-enqueue after this check is not taken for ours.
        - `request_stop` killed it: not a crash; its step waits for the next worker, and the
          kill does not count as one of the step's tries (STEP_RETRIES).
        - Anything else (SIGKILL, the OOM killer): a crash, recorded by hooks.horse_killed.
        """
        if hooks.superseded(job):
            self.log.warning("job %s: its work-horse died after another delivery of the job "
                             "took the step over; leaving that delivery alone", job.id)
            return
        if self.stopped_by is None:
            super().handle_work_horse_killed(job, retpid, ret_val, rusage)
            return
        job.retries_left = (job.retries_left or 0) + 1  # RQ's retry below takes one back
        try:
            hooks.attempt_interrupted(job, f"the worker was stopped ({self.stopped_by}) while "
                                           "this step ran; it runs again on the next worker")
        except Exception:  # the job still goes back to the queue
            self.log.exception("recording the stop of job %s failed", job.id)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the job in a work-horse; then `after_job` (a remote worker's sweep of what a
        killed horse left), here in the worker, which outlives its horses."""
        try:
            super().execute_job(job, queue)
        finally:
            if hooks.token_refused(job):  # no other step can be done here either
                self.token_refused = True
                self._stop_requested = True
                self.log.error("stopping: the web app refused this worker's WORKER_TOKEN; "
                               "set the same WORKER_TOKEN as the web app's and start it again")
            if self.after_job is not None:
                try:
                    self.after_job()
                except Exception:  # never stop the worker for a clean-up
                    self.log.exception("cleaning up after job %s failed", job.id)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None,
                           exc_string="", execution=None) -> None:
        """RQ's failure handling (a killed horse, in the worker; an exception, in the horse)
        writes the job's status (FAILED, or re-enqueued for a retry), its failed registry
        entry and result, and releases its dependants: all of them shared with another
        delivery of the same id once the reconciler has enqueued the job again. A
        superseded delivery only removes its own execution; RQ would otherwise fail the
        live delivery's job (which the reconciler then takes for the step's failure) or
        enqueue a wasted retry that takes the live attempt over. The check and RQ's writes
        are one transaction (jobs/delivery.py): a re-enqueue between them is not
        overwritten."""
        try:
            with delivery.fenced(self, job):
                super().handle_job_failure(job, queue, started_job_registry, exc_string,
                                           execution)
            return
        except delivery.Superseded:
            pass
        if self._stopped_job_id == job.id:
            self._stopped_job_id = None
        log.info("job %s: superseded by another delivery; its failure is not recorded",
                 job.id)
        self._leave_to_the_live_delivery(job, execution)

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry,
                           execution) -> None:
        """In the horse, once the step returned. A superseded delivery's attempt ended
        "stopped"; RQ would write FINISHED, its result and expiry over the live delivery's
        job hash and release its dependants: a killed horse of the live delivery was then
        ignored by its own worker (RQ handles no death of a FINISHED job) and its step stayed
        running with nobody on it. The superseded delivery only removes its own execution;
        the check and RQ's writes are one transaction, as for a failure."""
        try:
            with delivery.fenced(self, job):
                super().handle_job_success(job, queue, started_job_registry, execution)
            return
        except delivery.Superseded:
            pass
        log.info("job %s: superseded by another delivery; its end is not recorded",
                 job.id)
        self._leave_to_the_live_delivery(job, execution)

    def _leave_to_the_live_delivery(self, job: Job, execution) -> None:
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.execute()

    def teardown(self) -> None:
        """RQ's goodbye (unregistered, unsubscribed) on fresh connections.

        A stop signal raises StopRequested wherever the idle worker is, between a command
        sent and its answer read too: RQ's wait for a job (BLMOVE) was then left pending on
        a connection that went back to the pool, and the goodbye, sent on it behind the
        BLMOVE, waited for its 405 s. The worker hung until a SIGKILL and stayed counted
        for 8 minutes (/healthz, the pages). The pool's idle connections are closed first
        (the listening thread's, in use, is kept for its unsubscribe)."""
        if not self.is_horse:
            self.connection.connection_pool.disconnect(inuse_connections=False)
        super().teardown()

    def unsubscribe(self) -> None:
        """Stop listening for RQ's commands without waiting a minute for it.

        RQ unsubscribes first and stops the listening thread after; when the thread read the
        unsubscribe's reply before the stop, it went on to wait for a new subscription for
        RQ's `sleep_time` (60 s), and the stop (redis-py 8 joins without a timeout) waited
        with it: a worker told to stop took a minute to end in 2 of 4 tries (honcho's SIGKILL
        came after 5 s). With the thread's flag cleared first, the reply ends it."""
        thread = self.pubsub_thread
        if thread is not None:
            try:
                thread.stop(timeout=0)  # only clears its flag: the unsubscribe's reply wakes it
            except TypeError:  # redis-py before 8: stop() takes no timeout, and never waits
                thread.stop()
        super().unsubscribe()

    def handle_exception(self, job: Job, *exc_info) -> None:
        """A step that failed for an expected reason (bad media, a model error, too slow) is
        logged as one line; tracebacks are for bugs."""
        if exc_info and isinstance(exc_info[1], StepFailed):
            self.log.warning("job %s: %s", job.id, exc_info[1])
            call_exception_handlers(self._exc_handlers, job, *exc_info)
            return
        super().handle_exception(job, *exc_info)

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """RQ's heartbeat, which also registers the worker again when Redis lost its
        registration: a Redis restarted empty after an outage (nothing is kept on disk)
        has no trace of it, and RQ's loop reconnects without registering again. The worker
        went on working, counted by nobody: /healthz said 0 workers and the pages "No
        worker is running" beside runs it was doing."""
        super().heartbeat(timeout, pipeline)
        if pipeline is None:  # RQ's own pipeline, busy: maintain_heartbeats checks after it
            self._register_again_if_lost(timeout or self.worker_ttl + 60)

    def maintain_heartbeats(self, job: Job, execution) -> None:
        """RQ's heartbeats while a step runs, then the registration's check (heartbeat)."""
        super().maintain_heartbeats(job, execution)
        self._register_again_if_lost(self.job_monitoring_interval + 60)

    def _register_again_if_lost(self, ttl: int) -> None:
        if self.birth_date is None:  # not registered yet: RQ's start does it
            return
        if any(self.connection.hmget(self.key, "birth", "death")):  # there, or stopping
            return
        with self.connection.pipeline() as again:
            again.hset(self.key, mapping=self.serialize())
            worker_registration.register(self, again)
            again.expire(self.key, ttl)
            again.execute()
        log.info("registered again as worker %s: the job queue (Redis) had lost its "
                 "registration", self.name)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(job.timeout - working_time, interval)
        return int(interval) + self.heartbeat_grace


def build_worker(settings: Settings, name: str | None = None) -> VidpipeWorker:
    connection = connect(settings.redis_url)
    queue = Queue(settings.queue_name, connection=connection)
    return VidpipeWorker([queue], connection=connection, name=name,
                         job_monitoring_interval=settings.heartbeat_interval,
                         heartbeat_grace=settings.heartbeat_grace,
                         work_horse_killed_handler=hooks.horse_killed,
                         after_job=_sweeper(settings))


def _sweeper(settings: Settings) -> Callable[[], object] | None:
    """A worker on another host removes what its killed attempts left (jobs/remote.py)."""
    if not settings.server_url:
        return None  # the web host's GC removes attempt folders under MEDIA_ROOT
    sessions = session_factory(settings.database_url)
    return lambda: remote.sweep(settings, sessions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", help="worker name (default: RQ's)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        settings = Settings.from_env()
        settings.validate()
        settings.validate_remote_worker()
    except ConfigError as exc:
        log.error("vidpipe: %s", exc)
        return 1
    try:  # MEDIA_ROOT writable, the database at this code's migration (webapp/startup.py)
        unsure = startup.check(settings)
    except ConfigError as exc:
        log.error("vidpipe: %s", exc)
        return 1
    if unsure:
        log.warning("vidpipe: %s; starting anyway", unsure)
    try:  # a worker that never reached Redis has nothing to wait for: a typo, or no Redis
        connect(settings.redis_url).ping()
    except RedisError as exc:
        log.error("vidpipe: %s; not starting", unreachable(settings.redis_url, exc))
        return 1
    webhooks.configure(settings)  # its horses end tasks: they write the events
    if settings.server_url:
        try:
            unsure = remote.Server(settings, delays=()).check_token()
        except (remote.TokenRefused, remote.WebAppRefused) as exc:
            log.error("vidpipe: %s; not starting", exc)
            return 1
        if unsure:  # the web app may start after its workers: the steps will try again
            log.warning("could not check WORKER_TOKEN with %s now (%s); starting anyway",
                        settings.server_url, unsure)
        log.info("exchanging media with %s over HTTP as %s (cache: %d bytes in %s)",
                 settings.server_url, settings.worker_name, settings.worker_cache_bytes,
                 settings.media_root / "cache")
    worker = build_worker(settings, args.name)
    if args.name:
        try:
            _claim_name(worker)
        except ConfigError as exc:
            log.error("vidpipe: %s; not starting", exc)
            return 1
    if worker.after_job is not None:
        worker.after_job()  # what a worker killed on this host before left behind
    helper = reconciler.spawn() if settings.reconcile_interval > 0 and not args.burst else None
    try:
        worker = _work_through_outages(worker, settings, args.burst)
    finally:
        if helper is not None:
            helper.terminate()
            helper.wait(10)
    return 1 if worker.token_refused else 0


def _claim_name(worker: VidpipeWorker) -> None:
    """ConfigError when a live worker already holds the name given with --name (RQ refused
    the second with a ValueError and its traceback). One of this host that is gone (killed:
    its registration stays in Redis until it expires, minutes later, and a service manager's
    restarts failed until then) gives its name over."""
    death, host, pid = (value.decode() if value else "" for value in
                        worker.connection.hmget(worker.key, "death", "hostname", "pid"))
    if not (host or pid) or death:  # not registered, or unregistering: RQ takes it
        return
    if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        log.info("the worker named %r before this one (pid %s) is gone without unregistering "
                 "from the job queue: taking its name over", worker.name, pid)
        with worker.connection.pipeline() as pipeline:
            worker_registration.unregister(worker, pipeline)
            pipeline.delete(worker.key)
            pipeline.execute()
        return
    raise ConfigError(f"a worker named {worker.name!r} already serves the job queue (pid {pid} "
                      f"on {host}): give this one another --name, or stop that one")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: there
        return True
    return True


def _work_through_outages(worker: VidpipeWorker, settings: Settings,
                          burst: bool) -> VidpipeWorker:
    """Work; a worker that was working when Redis went away (RQ's loop lets some connection
    errors out, e.g. a reset while it reads) waits for Redis and goes on as a new worker
    (RQ's name: the old one may still be registered). One that never reached Redis, or a
    burst worker, ends with the error."""
    while True:
        try:
            worker.work(burst=burst, logging_level=rq_log_level())
            return worker
        except RedisConnectionError as exc:
            if worker.stopping:  # its goodbye to Redis failed: it stops all the same
                log.info("stopped without unregistering from the job queue (Redis does not "
                         "answer: %s)", exc)
                return worker
            if burst or worker.birth_date is None:
                raise
            log.warning("lost the job queue (Redis): %s; working again once it answers", exc)
        try:
            worker = _wait_for_redis(settings, worker)
        except StopRequested:  # SIGTERM/Ctrl-C while waiting: the old worker's handler
            log.info("stopped without unregistering from the job queue (Redis does not "
                     "answer)")
            return worker


def _wait_for_redis(settings: Settings, old: VidpipeWorker) -> VidpipeWorker:
    """A new worker, once Redis answers again (tried every second); StopRequested once the
    old one is told to stop. Its handler, still installed, raises that itself only when it
    was idle: RQ's loop may have left in the middle of a step (still "busy"), and RQ then
    only notes the stop, for after the step. Such a worker waited on for Redis until
    honcho's SIGKILL: the first signal blocks the later ones (`request_stop`)."""
    while True:
        time.sleep(1.0)
        if old.stopping:
            raise StopRequested
        try:
            worker = build_worker(settings)
            worker.connection.ping()
            return worker
        except RedisConnectionError:
            continue


if __name__ == "__main__":
    raise SystemExit(main())
