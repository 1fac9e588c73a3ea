"""How many RQ workers serve the queue: for /healthz and the UI's "no worker" banner, and
for the threads a transcription takes by default."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker


def live_workers(connection: Redis, queue_name: str) -> int:
    """Workers listening on the queue whose registration has not expired. Raises RedisError.

    RQ's Worker.count counts its registry set as it is, a worker killed without
    unregistering included; Worker.all drops (and unregisters) workers whose key expired.
    That key lives until worker_ttl + 60 s after the last heartbeat (8 min for an idle
    worker, 65 s for a busy one with RQ's defaults): a worker that was SIGKILLed counts
    for that long. One that stops normally (SIGTERM, Ctrl-C) unregisters at once.
    """
    return len(Worker.all(queue=Queue(queue_name, connection=connection)))


def workers_on_this_host(connection: Redis, queue_name: str) -> int:
    """Live workers of the queue registered from this host (RQ records
    `socket.gethostname()`), this one included. Raises RedisError."""
    host = socket.gethostname()
    workers = Worker.all(queue=Queue(queue_name, connection=connection))
    return sum(1 for w in workers if w.hostname == host)


def cores() -> int:
    """The CPUs this process may run on (its affinity mask, as taskset or a container's
    cpuset leaves it)."""
    return len(os.sched_getaffinity(0))


def split_cores(workers: int, available: int | None = None) -> int:
    """Threads for one worker's transcription: the cores shared out among the workers, at
    least 1."""
    return max(1, (cores() if available is None else available) // max(1, workers))


def transcription_threads(configured: int, connection: Redis | None, queue_name: str) -> int:
    """WHISPER_THREADS when it is set (> 0); for 0, this host's cores ÷ the queue's workers
    on it.

    CTranslate2's own default (4 threads, whatever the cores) oversubscribes small hosts:
    on 2 cores the `base` model transcribed a 7-minute talk in 45.8 s with 1 thread, 51.8 s
    with 2 and 50.1 s with the default, alone, and whisper shares the cores with the
    other worker's x264 in a pipeline (docs/PERFORMANCE.md, sections 1 and 1b). Without
    Redis (no connection, or no answer) the worker counts itself alone.
    """
    if configured > 0:
        return configured
    workers = 1
    if connection is not None:
        with contextlib.suppress(RedisError):
            workers = workers_on_this_host(connection, queue_name)
    return split_cores(workers)


class WorkerCensus:
    """live_workers, asked at most once per `ttl` seconds per web process.

    The video page polls its panel every second while a task is active, and the panel
    says when no worker lives: the census keeps that from costing a Redis round trip per
    poll. None stands for "Redis did not answer" (the queue banner speaks for that).
    """

    def __init__(self, connection: Redis, queue_name: str, ttl: float = 2.0) -> None:
        self.connection, self.queue_name, self.ttl = connection, queue_name, ttl
        self._lock = threading.Lock()  # one count at a time per process (gthread workers)
        self._value: int | None = None
        self._expires = float("-inf")

    def count(self) -> int | None:
        """Live workers as of at most `ttl` seconds ago; None when Redis did not answer."""
        with self._lock:
            if time.monotonic() >= self._expires:
                try:
                    self._value = live_workers(self.connection, self.queue_name)
                except RedisError:
                    self._value = None
                self._expires = time.monotonic() + self.ttl
            return self._value
