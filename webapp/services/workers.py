"""How many RQ workers serve the queue: for /healthz and the UI's "no worker" banner."""

from __future__ import annotations

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
