"""The RQ side of a task: enqueue its step jobs in dependency order, and stop them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.exceptions import AuthenticationError, RedisError, WatchError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Callback, Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Dependency, Job, JobStatus
from rq.utils import now

from webapp.config import STEPS, Settings
from webapp.services.errors import QueueUnavailable

log = logging.getLogger(__name__)

# Steps that consume another step's output; RQ runs them after their parent ends,
# whether it succeeded or not (the job itself decides to work or give up).
NEEDS: dict[str, str] = {"transcribe": "extract_audio"}
JOB_FUNCTIONS = {step: f"jobs.steps.{step}" for step in STEPS}
# The order a task's jobs enter the queue: longest first. The preview's encode is by far
# the longest step; started first, it runs on one worker while the short steps (audio,
# then its transcription, then thumbnails) share the others, instead of waiting behind
# them (docs/PERFORMANCE.md, section 1). STEPS keeps the order steps are shown in.
ENQUEUE_ORDER = ("transcode", "extract_audio", "transcribe", "thumbnails")
FAILURE_CALLBACK = "jobs.hooks.on_failure"
FAILURE_TTL = 7 * 24 * 3600  # seconds a failed (or cancelled) job stays in Redis
STOPPED_CALLBACK = "jobs.hooks.on_stopped"
DELIVERY = "delivery"  # job.meta key: a token of the enqueue that made this job hash


def connect(redis_url: str) -> Redis:
    """A Redis client that fails fast when the server is away."""
    return Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=10,
                          health_check_interval=30)


def address(redis_url: str) -> str:
    """REDIS_URL without its user and password, to name the server in a sentence or a log."""
    parts = urlsplit(redis_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def no_such_database(exc: BaseException) -> bool:
    """Whether Redis answered that REDIS_URL's database number is past its last one (its
    `databases` setting): a server that answers, so "start it" is the wrong advice."""
    return "db index is out of range" in str(exc).lower()


def unreachable(redis_url: str, exc: RedisError) -> str:
    """The sentence for a process that cannot start without Redis: where it looked, what
    Redis (or the network) said, and what to do."""
    said = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, AuthenticationError):
        # It answered: "does not answer ... start it" sent people to start a Redis that ran.
        return (f"the job queue (Redis) at {address(redis_url)} refuses REDIS_URL's "
                f"credentials ({said}): put its password in REDIS_URL "
                "(redis://:PASSWORD@host:port/db, or redis://USER:PASSWORD@… for an ACL user)")
    if no_such_database(exc):
        # It answered too: REDIS_URL's database number is past the server's last one.
        return (f"the job queue (Redis) at {address(redis_url)} has no database of the "
                f"number REDIS_URL names ({said}): set one below the server's `databases` "
                "setting (16 by default, numbered from 0)")
    return (f"the job queue (Redis) at {address(redis_url)} does not answer ({said}): start "
            "it (`make redis` starts a local one) or set REDIS_URL to where it runs, with "
            "its password if it has one")


def check_available(connection: Redis) -> None:
    """QueueUnavailable unless Redis answers now (before a change that needs the queue)."""
    try:
        connection.ping()
    except RedisError as exc:
        raise _unavailable(exc) from exc


def _unavailable(exc: RedisError) -> QueueUnavailable:
    # redis-py's words name the server's address (or socket path): the log gets them.
    log.warning("the job queue (Redis) is unavailable: %s", exc)
    return QueueUnavailable("the job queue (Redis) is unavailable; try again in a moment")


def job_id(task_id: str, step: str) -> str:
    return f"{task_id}-{step}"


def job_timeout(settings: Settings, duration: float | None) -> int:
    """Seconds a step may run: a base plus a budget per second of media."""
    return int(settings.job_timeout_base + settings.job_timeout_per_second * (duration or 0))


def enqueue_steps(connection: Redis, settings: Settings, task_id: str, video_id: str,
                  steps: Iterable[str], duration: float | None,
                  after: Iterable[str] = (), takeover: bool = False) -> list[str]:
    """Enqueue one job per step to run; returns the job ids. Raises QueueUnavailable.

    `after` names steps whose jobs are already in the queue: dependants wait for them.
    `takeover`: the jobs replace jobs that vanished (the reconciler), so their first attempt
    may take over a step that still shows running (see progress.start_subtask).
    """
    queue = Queue(settings.queue_name, connection=connection)
    wanted = [s for s in ENQUEUE_ORDER if s in set(steps)]
    waiting = set(wanted) | set(after)
    specs = []
    for step in wanted:
        parent = NEEDS.get(step)
        depends = None
        if parent in waiting:
            depends = Dependency(jobs=[job_id(task_id, parent)], allow_failure=True,
                                 enqueue_at_front=True)
        specs.append(dict(
            func=JOB_FUNCTIONS[step],
            args=(task_id,),
            job_id=job_id(task_id, step),
            depends_on=depends,
            timeout=job_timeout(settings, duration),
            result_ttl=24 * 3600,
            failure_ttl=FAILURE_TTL,
            # A crashed attempt (killed horse, dead worker) is tried again by any worker.
            retry=Retry(max=settings.step_retries) if settings.step_retries else None,
            on_failure=Callback(FAILURE_CALLBACK),
            on_stopped=Callback(STOPPED_CALLBACK),
            description=f"{step} of video {video_id} (task {task_id})",
            meta={"task_id": task_id, "video_id": video_id, "step": step,
                  "max_tries": settings.step_retries + 1, "takeover": takeover,
                  # Tells this delivery of the job id from one the reconciler enqueues
                  # again later under the same id (RQ's own retries keep it): see
                  # jobs.hooks.superseded.
                  DELIVERY: uuid.uuid4().hex},
        ))
    try:
        if all(NEEDS.get(step) not in after for step in wanted):
            _enqueue_together(queue, specs)
        else:  # a parent is already in the queue, maybe running or ended: RQ checks it
            queue.enqueue_many([Queue.prepare_data(**spec) for spec in specs])
    except RedisError as exc:
        raise _unavailable(exc) from exc
    return [job_id(task_id, step) for step in wanted]


def _enqueue_together(queue: Queue, specs: list[dict]) -> None:
    """Enqueue jobs whose parents are all among them, in one MULTI/EXEC.

    RQ's own enqueue checks each dependant's parents under WATCH (several round trips per
    job) because a parent may already have ended. Here every parent is created in the same
    transaction, so none can have ended before its dependants are registered: they are
    saved deferred and registered with their parents at once, as RQ's setup_dependencies
    does for an unfinished parent, and RQ enqueues them when the parent ends.

    Each job is made with its final status and written with one HSET, the queue is named in
    rq:queues once and the ids to run go in one RPUSH, in order: RQ's enqueue_job writes the
    status and then the whole job, and names the queue, once per job (17 commands for a
    task's 4 jobs, 9 here). What a worker finds is the same.

    The first job's hash is WATCHed before MULTI (one more round trip). A MULTI/EXEC whose
    answer was lost (a socket timeout, a reset) may have run: a client that retries
    (redis-py's Redis() made without from_url, up to 10 times; a REDIS_URL with
    ?retry_on_timeout=true) sent an unwatched one again, pushing every job id twice, and the
    copy that found its step running ended over the live job; one that does not (connect's)
    raised, and the trigger deleted a task whose jobs ran. Under WATCH redis-py raises
    WatchError instead of sending it again, and whether the transaction ran is read off
    Redis (`_landed`): it did, and this enqueue is done; it did not, or Redis cannot tell,
    and the error goes to the caller as it came.
    """
    queued = []
    first = Job.key_for(specs[0]["job_id"])
    with queue.connection.pipeline() as pipe:
        pipe.watch(first)
        pipe.multi()
        for spec in specs:
            deferred = spec["depends_on"] is not None
            job = queue.create_job(**spec,
                                   status=JobStatus.DEFERRED if deferred else JobStatus.QUEUED)
            if deferred:
                job.register_dependency(pipeline=pipe)
            else:
                job.enqueued_at = now()
                queued.append(job.id)
            job.save(pipeline=pipe)
            job.cleanup(ttl=job.ttl, pipeline=pipe)
        if queued:
            pipe.sadd(queue.redis_queues_keys, queue.key)
            pipe.rpush(queue.key, *queued)
        try:
            pipe.execute()
        except (WatchError, RedisConnectionError, RedisTimeoutError):
            if _landed(queue, first, specs[0]["meta"][DELIVERY]):
                log.warning("the job queue's answer to the enqueue of %s was lost, but "
                            "its jobs are in Redis", specs[0]["job_id"])
                return
            raise


def _landed(queue: Queue, key: str, delivery: str) -> bool:
    """Whether Redis holds the job hash `key` with this enqueue's delivery token: the
    MULTI/EXEC that wrote it (and every other job of the enqueue) ran. False when it holds
    none, another delivery's, or Redis does not answer (it cannot tell)."""
    try:
        raw = queue.connection.hget(key, "meta")
        meta = queue.serializer.loads(raw) if raw else None
    except Exception:  # Redis still away, or a meta that cannot be read: it cannot tell
        return False
    return isinstance(meta, dict) and meta.get(DELIVERY) == delivery


def stop_jobs(connection: Redis, task_id: str) -> None:
    """Cancel a task's waiting jobs and stop its running ones; best effort."""
    for step in STEPS:
        try:
            job = Job.fetch(job_id(task_id, step), connection=connection)
        except NoSuchJobError:
            continue
        except RedisError:
            log.warning("could not reach Redis to stop jobs of task %s", task_id)
            return
        try:
            if job.get_status(refresh=False) == JobStatus.STARTED:
                send_stop_job_command(connection, job.id)
            elif not job.is_finished and not job.is_failed:
                job.cancel()
                # RQ keeps a cancelled job (hash, dependency sets) with no expiry: without
                # this every cancelled or replaced run would leave its jobs in Redis for
                # good. Kept as long as a failed job is.
                job.cleanup(ttl=job.failure_ttl or FAILURE_TTL)
        except (InvalidJobOperation, RedisError) as exc:
            log.info("job %s not stopped: %s", job.id, exc)
