"""How many threads a transcription takes when WHISPER_THREADS is left at 0: the host's
cores shared among the queue's workers on this host, counted in the real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from redis import Redis
from rq import Queue, Worker

from tests.cleanup import purge_queue
from webapp.services import workers


@pytest.fixture
def queue_name(redis_conn: Redis) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    purge_queue(redis_conn, name)


def register(redis_conn: Redis, queue_name: str, hostname: str | None = None) -> Worker:
    """A worker registered in Redis as a started one is (RQ's own registration)."""
    worker = Worker([Queue(queue_name, connection=redis_conn)], connection=redis_conn,
                    name=f"test-{uuid.uuid4().hex[:12]}")
    if hostname is not None:
        worker.hostname = hostname
    worker.register_birth()
    return worker


def test_cores_are_shared_among_workers() -> None:
    assert workers.split_cores(1, available=2) == 2
    assert workers.split_cores(2, available=2) == 1
    assert workers.split_cores(3, available=2) == 1  # never 0
    assert workers.split_cores(2, available=8) == 4
    assert workers.split_cores(0, available=4) == 4  # nobody registered yet: this one
    assert workers.cores() >= 1


def test_a_set_value_is_used_as_it_is(redis_conn, queue_name) -> None:
    register(redis_conn, queue_name)
    assert workers.transcription_threads(3, redis_conn, queue_name) == 3
    assert workers.transcription_threads(1, None, queue_name) == 1


def test_the_default_counts_this_hosts_workers_of_the_queue(redis_conn, queue_name) -> None:
    started = []
    try:
        assert workers.transcription_threads(0, redis_conn, queue_name) == workers.cores()
        started.append(register(redis_conn, queue_name))
        started.append(register(redis_conn, queue_name))
        # Workers on other hosts, or serving another queue, have cores of their own.
        started.append(register(redis_conn, queue_name, hostname="elsewhere.example"))
        other = f"{queue_name}-other"
        started.append(register(redis_conn, other))
        assert workers.workers_on_this_host(redis_conn, queue_name) == 2
        assert workers.transcription_threads(0, redis_conn, queue_name) == max(
            1, workers.cores() // 2)
        # A worker that stops unregisters: the next transcription gets its share back.
        started.pop(0).register_death()
        assert workers.transcription_threads(0, redis_conn, queue_name) == workers.cores()
    finally:
        for worker in started:
            worker.register_death()
        purge_queue(redis_conn, f"{queue_name}-other")


def test_without_redis_the_worker_counts_itself_alone(queue_name) -> None:
    unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    assert workers.transcription_threads(0, unreachable, queue_name) == workers.cores()
    assert workers.transcription_threads(0, None, queue_name) == workers.cores()
