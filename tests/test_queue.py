"""The RQ side of a task (webapp/services/queue.py) against the real Redis: what a worker
finds after a trigger, and after the reconciler enqueues lost jobs again."""

from __future__ import annotations

import uuid

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.connection import Connection
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from rq import Queue
from rq.job import Job, JobStatus

from tests import mediagen
from tests.helpers import upload_ok
from webapp.config import STEPS
from webapp.services import queue
from webapp.services.errors import QueueUnavailable


@pytest.fixture
def rq_queue(settings, redis_conn) -> Queue:
    return Queue(settings.queue_name, connection=redis_conn)


def fetch(redis_conn, task_id: str, step: str) -> Job:
    return Job.fetch(queue.job_id(task_id, step), connection=redis_conn)


def test_a_new_tasks_jobs_reach_redis_in_one_transaction(settings, redis_conn, rq_queue,
                                                         monkeypatch):
    conn = queue.connect(settings.redis_url)
    # The connection exists, and RQ knows the server's version, before counting.
    Queue(settings.queue_name, connection=conn).get_redis_server_version()
    sent = []
    real_send = Connection.send_packed_command
    monkeypatch.setattr(Connection, "send_packed_command",
                        lambda self, *a, **k: (sent.append(1), real_send(self, *a, **k))[1])
    task_id = str(uuid.uuid4())
    ids = queue.enqueue_steps(conn, settings, task_id, "video-1", STEPS, duration=30.0)
    monkeypatch.undo()
    # The WATCH of the first job (see test_an_enqueue_whose_answer_was_lost_queues_each_job_once),
    # then the one MULTI/EXEC.
    assert len(sent) == 2, f"{len(sent)} round trips to Redis"
    assert sorted(ids) == sorted(queue.job_id(task_id, s) for s in STEPS)
    # What workers find: the longest step first, then the audio and the thumbnails; the
    # transcription waits for the audio.
    assert rq_queue.job_ids == [
        queue.job_id(task_id, s) for s in ("transcode", "extract_audio", "thumbnails")]
    assert rq_queue.deferred_job_registry.get_job_ids() == [queue.job_id(task_id, "transcribe")]
    parent = fetch(redis_conn, task_id, "extract_audio")
    assert parent.dependent_ids == [queue.job_id(task_id, "transcribe")]
    deliveries = set()
    for step in STEPS:
        job = fetch(redis_conn, task_id, step)
        assert job.func_name == f"jobs.steps.{step}" and tuple(job.args) == (task_id,)
        assert job.origin == settings.queue_name
        assert job.timeout == queue.job_timeout(settings, 30.0)
        assert job.retries_left == settings.step_retries
        assert job.failure_callback.__name__ == "on_failure"
        deliveries.add(job.meta.pop(queue.DELIVERY))
        assert job.meta == {"task_id": task_id, "video_id": "video-1", "step": step,
                            "max_tries": settings.step_retries + 1, "takeover": False}
    assert len(deliveries) == len(STEPS)  # a token of each enqueue (jobs.hooks.superseded)
    child = fetch(redis_conn, task_id, "transcribe")
    assert child.get_status() == JobStatus.DEFERRED
    assert (child.allow_dependency_failures, child.enqueue_at_front) == (True, True)
    assert child._dependency_ids == [queue.job_id(task_id, "extract_audio")]


def _lose_first_transaction(monkeypatch, run_it: bool) -> list[int]:
    """The first MULTI/EXEC sent fails as a timeout: after Redis ran it (its answer lost) when
    `run_it`, before it reached Redis otherwise. Later ones go through. Counts the calls."""
    calls = []
    real = Pipeline._execute_transaction

    def execute(self, connection, commands, raise_on_error):
        calls.append(1)
        if len(calls) == 1:
            if run_it:
                watching = self.watching
                real(self, connection, commands, raise_on_error)
                # The real call read EXEC's answer, and so cleared the pipeline's watch; an
                # answer lost on its way never gets that far.
                self.watching = watching
            raise RedisTimeoutError("Timeout reading from socket")
        return real(self, connection, commands, raise_on_error)

    monkeypatch.setattr(Pipeline, "_execute_transaction", execute)
    return calls


@pytest.fixture(params=["connect", "retrying"])
def enqueue_conn(request, settings) -> Redis:
    """The app's connection (queue.connect: redis-py's from_url retries nothing), and one
    that sends a failed command again (redis-py's Redis() made without from_url does, up to
    10 times; a REDIS_URL with ?retry_on_timeout=true once)."""
    if request.param == "connect":
        return queue.connect(settings.redis_url)
    return Redis.from_url(settings.redis_url, socket_timeout=10, retry=Retry(NoBackoff(), 10))


def test_an_enqueue_whose_answer_was_lost_queues_each_job_once(settings, redis_conn, rq_queue,
                                                               enqueue_conn, monkeypatch):
    """EXEC ran but its answer was lost (a socket timeout, a reset). A connection that sends
    a failed command again sent the transaction again, and every job id was pushed twice:
    the copy that found its step running ended over the live job, and the reconciler failed
    the step. One that does not raised, and the trigger deleted a task whose jobs ran."""
    calls = _lose_first_transaction(monkeypatch, run_it=True)
    task_id = str(uuid.uuid4())
    ids = queue.enqueue_steps(enqueue_conn, settings, task_id, "video-1", STEPS, duration=30.0)
    monkeypatch.undo()
    assert sorted(ids) == sorted(queue.job_id(task_id, s) for s in STEPS)
    assert redis_conn.lrange(rq_queue.key, 0, -1) == [
        queue.job_id(task_id, s).encode() for s in ("transcode", "extract_audio", "thumbnails")]
    assert len(calls) == 1  # not sent again
    assert rq_queue.deferred_job_registry.get_job_ids() == [queue.job_id(task_id, "transcribe")]
    assert fetch(redis_conn, task_id, "extract_audio").dependent_ids == [
        queue.job_id(task_id, "transcribe")]


def test_an_enqueue_lost_before_it_reached_redis_is_unavailable_and_queues_nothing(
        settings, redis_conn, rq_queue, enqueue_conn, monkeypatch):
    """The request itself was lost: nothing ran, and Redis says so (no job of this enqueue):
    the caller hears QueueUnavailable (a trigger is undone), nothing waits in the queue, and
    the transaction is not sent again (a trigger's 503 says "try again")."""
    calls = _lose_first_transaction(monkeypatch, run_it=False)
    task_id = str(uuid.uuid4())
    with pytest.raises(QueueUnavailable):
        queue.enqueue_steps(enqueue_conn, settings, task_id, "video-1", STEPS, duration=30.0)
    monkeypatch.undo()
    assert len(calls) == 1
    assert redis_conn.lrange(rq_queue.key, 0, -1) == []
    assert not any(redis_conn.exists(Job.key_for(queue.job_id(task_id, s))) for s in STEPS)


def test_every_step_has_its_place_in_the_queue():
    assert sorted(queue.ENQUEUE_ORDER) == sorted(STEPS)


@pytest.mark.parametrize("parent_status", [JobStatus.QUEUED, JobStatus.STARTED,
                                           JobStatus.FINISHED, JobStatus.FAILED])
def test_a_lost_job_enqueued_again_waits_only_for_a_parent_still_to_end(
        settings, redis_conn, rq_queue, parent_status):
    """The reconciler's case: the transcription's job vanished, its parent is still known."""
    task_id = str(uuid.uuid4())
    parent = rq_queue.create_job("jobs.steps.extract_audio", args=(task_id,),
                                 job_id=queue.job_id(task_id, "extract_audio"))
    parent.origin = rq_queue.name
    parent.save()
    parent.set_status(parent_status)
    queue.enqueue_steps(redis_conn, settings, task_id, "video-1", ["transcribe"], 10.0,
                        after={"extract_audio"})
    child = fetch(redis_conn, task_id, "transcribe")
    ended = parent_status in (JobStatus.FINISHED, JobStatus.FAILED)  # allow_failure
    assert child.get_status() == (JobStatus.QUEUED if ended else JobStatus.DEFERRED)
    assert (child.id in rq_queue.job_ids) is ended


def test_without_retries_jobs_have_none(settings, redis_conn):
    from dataclasses import replace

    task_id = str(uuid.uuid4())
    queue.enqueue_steps(redis_conn, replace(settings, step_retries=0), task_id, "v",
                        ["transcode"], None)
    assert fetch(redis_conn, task_id, "transcode").retries_left is None


@pytest.mark.parametrize("how", ["cancel", "force"])
def test_jobs_of_a_cancelled_task_do_not_stay_in_redis_forever(client, settings, redis_conn,
                                                               tmp_path, how):
    """A task cancelled (or replaced by a forced run) before its jobs ran: RQ's cancel keeps
    the jobs' hashes with no expiry, so every cancelled run would leave keys for good."""
    from webapp.config import STEPS
    from webapp.services import queue

    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=2.0)
    vid = upload_ok(client, clip)["id"]
    old = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    if how == "cancel":
        assert client.post(f"/api/v1/videos/{vid}/cancel").status_code == 200
    else:
        assert client.post(f"/api/v1/videos/{vid}/reprocess?force=true").status_code == 202
    keys = [k for step in STEPS for k in (f"rq:job:{queue.job_id(old, step)}",
                                          f"rq:job:{queue.job_id(old, step)}:dependents",
                                          f"rq:job:{queue.job_id(old, step)}:dependencies")]
    forever = [k for k in keys if redis_conn.exists(k) and redis_conn.ttl(k) < 0]
    assert not forever, forever
