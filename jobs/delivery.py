"""A delivery's writes to its RQ job, refused once Redis holds another delivery of the job.

The reconciler enqueues a step again, under the same job id with a new token in the job's
meta (webapp.services.queue.DELIVERY), after Redis forgot the job while a work-horse ran
it. What ends the old delivery (RQ's end-of-job writes, the horse's meta saves) must then
leave the job hash, its registries and results to the new one. Checking the token and
writing after it left a window: a re-enqueue landing between the two was overwritten. Here
the check and the write are one transaction: the job hash is WATCHed, the token is read
under the watch, and the writes go in a MULTI/EXEC that Redis refuses if the hash changed
since; the check is then made again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq.job import Job

from jobs import hooks


class Superseded(BaseException):
    """Redis holds another delivery of the job: this delivery's writes were not made.

    A BaseException: RQ's handle_job_failure logs any Exception of its commit and goes on
    to release the job's dependants; this must reach the worker's own handler instead."""


class FencedPipeline(Pipeline):
    """A MULTI/EXEC pipeline that commits only while Redis holds `job`'s delivery."""

    def __init__(self, connection: Redis, job: Job) -> None:
        super().__init__(connection.connection_pool, connection.response_callbacks,
                         transaction=True, shard_hint=None)
        self.job = job

    def watch(self, *names: Any) -> Any:
        """WATCH the job's hash (with `names`), then check the token: from here on any
        change of the hash, a re-enqueue included, makes Redis refuse the commit."""
        answer = super().watch(self.job.key, *names)
        if hooks.superseded(self.job, self):
            self.reset()
            raise Superseded(self.job.id)
        return answer

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.explicit_transaction:
            # The caller WATCHed (through watch above) and retries a WatchError itself, as
            # RQ's handle_job_success does: its next watch() checks the token again.
            return super().execute(raise_on_error)
        commands = list(self.command_stack)  # written blind (RQ's handle_job_failure)
        while True:
            self.watch()
            try:
                return super().execute(raise_on_error)
            except WatchError:  # a heartbeat, or another delivery: look again
                self.command_stack = list(commands)


class _FencedConnection:
    """The worker's connection, but for `pipeline()`, which gives a FencedPipeline."""

    def __init__(self, connection: Redis, job: Job) -> None:
        self._connection, self._job = connection, job

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> FencedPipeline:
        return FencedPipeline(self._connection, self._job)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


@contextlib.contextmanager
def fenced(worker: Any, job: Job) -> Iterator[None]:
    """Within: the pipelines RQ's worker opens for `job`'s end commit only while Redis holds
    this delivery of it; Superseded is raised otherwise (nothing written)."""
    connection = worker.connection
    worker.connection = _FencedConnection(connection, job)
    try:
        yield
    finally:
        worker.connection = connection


def save_meta(job: Job) -> bool:
    """`job.save_meta()` unless Redis holds another delivery of the job; False if so."""
    def write(pipe: Pipeline) -> bool:
        if hooks.superseded(job, pipe):
            return False
        pipe.multi()
        pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))
        return True

    return job.connection.transaction(write, job.key, value_from_callable=True)
