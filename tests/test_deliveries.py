"""Two deliveries of one step's job (jobs/delivery.py): the old one's end never overwrites
the new one, even when the reconciler's re-enqueue lands between its check and its write.

The race is forced, not waited for: `hooks.superseded` (the check) is wrapped so that the
first time it answers "still mine", Redis forgets the job and the reconciler's enqueue
(webapp.services.queue.enqueue_steps with takeover) makes a new delivery of it, right
there. A worker of this process then ends the old delivery with RQ's own handlers, on the
real Redis and database.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, replace

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.utils import now

from jobs import hooks
from jobs.runner import _remember_attempt
from jobs.worker import VidpipeWorker
from tests import mediagen
from tests.helpers import progress_of, subtasks, upload_ok
from webapp import create_app
from webapp.db import session_factory
from webapp.services import progress, queue
from webapp.services.queue import DELIVERY, connect

STEP = "transcode"  # the first job in the queue (queue.ENQUEUE_ORDER)


@dataclass
class OldDelivery:
    """A worker has dequeued the step's job and its horse runs attempt 1."""

    client: object
    settings: object
    video_id: str
    task_id: str
    worker: VidpipeWorker
    rq_queue: Queue
    job: Job
    execution: object
    redis: Redis

    def take_over(self, horse_started: bool = True) -> str:
        """Redis forgets the job and the reconciler enqueues it again (a new delivery);
        with `horse_started`, the new delivery's horse has taken the step over (attempt 2)
        and saved its attempt number. The new delivery's token."""
        self.redis.delete(self.job.key)
        queue.enqueue_steps(self.redis, self.settings, self.task_id, self.video_id, [STEP],
                            2.0, takeover=True)
        new = Job.fetch(self.job.id, connection=self.redis)
        if horse_started:
            with session_factory(self.settings.database_url)() as session:
                new.meta["attempt"] = progress.start_subtask(session, self.task_id, STEP,
                                                             takeover=True)
            new.save_meta()
        return new.meta[DELIVERY]

    def live_job(self) -> Job:
        return Job.fetch(self.job.id, connection=self.redis)

    def step(self) -> dict:
        return subtasks(progress_of(self.client, self.video_id))[STEP]


@pytest.fixture(params=[0, 1], ids=["no-retries", "retries"])
def old(request, settings, tmp_path, monkeypatch):
    retries = request.param
    monkeypatch.setenv("STEP_RETRIES", str(retries))
    settings = replace(settings, step_retries=retries)
    client = create_app(settings).test_client()
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=2.0)
    vid = upload_ok(client, clip)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    connection = connect(settings.redis_url)
    rq_queue = Queue(settings.queue_name, connection=connection)
    worker = VidpipeWorker([rq_queue], connection=connection,
                           work_horse_killed_handler=hooks.horse_killed)
    try:
        job, _ = worker.dequeue_job_and_maintain_ttl(timeout=1)
        assert job.id == queue.job_id(task_id, STEP)
        execution = worker.prepare_execution(job)
        worker.prepare_job_execution(job)
        job.started_at = now()
        with session_factory(settings.database_url)() as session:  # what the horse does
            job.meta["attempt"] = progress.start_subtask(session, task_id, STEP)
        job.save_meta()
        yield OldDelivery(client, settings, vid, task_id, worker, rq_queue, job, execution,
                          connection)
    finally:
        connection.delete(worker.key, worker.executions_key)
        connection.close()


@pytest.fixture
def race(old, monkeypatch):
    """The first check that finds the job still the old delivery's is followed at once by
    the new delivery. Yields the list of the new delivery's tokens (one once it came)."""
    check = hooks.superseded
    tokens: list[str] = []

    def superseded_then_taken_over(job, connection=None):
        answer = check(job) if connection is None else check(job, connection)
        if not answer and not tokens:
            tokens.append(old.take_over())
        return answer

    monkeypatch.setattr(hooks, "superseded", superseded_then_taken_over)
    return tokens


def assert_the_new_delivery_is_intact(old: OldDelivery, token: str) -> None:
    live = old.live_job()
    assert live.meta[DELIVERY] == token, "the new delivery's job hash was overwritten"
    assert live.get_status() == JobStatus.QUEUED
    assert old.rq_queue.job_ids.count(old.job.id) == 1  # no wasted retry beside it
    assert old.job.id not in old.rq_queue.failed_job_registry.get_job_ids()
    assert old.job.id not in old.rq_queue.finished_job_registry.get_job_ids()
    assert live.return_value() is None


def test_a_horse_killed_while_its_job_is_enqueued_again_leaves_the_live_attempt_alone(
        old, race):
    """The old worker's horse is found dead; its worker checks the job (still its own) and
    the reconciler's new delivery, whose horse runs attempt 2, lands right after. The old
    worker's hook must not read attempt 2 from the new meta and fail or retry it, and RQ's
    failure writes must not reach the new job."""
    old.worker.handle_work_horse_killed(old.job, 12345, signal.SIGKILL, None)
    old.worker.handle_job_failure(old.job, old.rq_queue,
                                  exc_string="Work-horse terminated unexpectedly",
                                  execution=old.execution)
    assert race, "the race was not run"
    step = old.step()
    assert (step["status"], step["attempt"], step["error"]) == ("running", 2, None), step
    assert progress_of(old.client, old.video_id)["status"] == "running"
    assert_the_new_delivery_is_intact(old, race[0])


def test_a_failure_written_while_its_job_is_enqueued_again_is_not_written(old, race):
    """The old horse's attempt raised; RQ's failure handling checks the job (still its own)
    and the new delivery lands before RQ's writes: FAILED (then taken by the reconciler
    for the step's failure) or a retry that replaces the new job must not be written."""
    old.job.ended_at = now()
    old.worker.handle_job_failure(old.job, old.rq_queue, exc_string="Traceback: boom",
                                  execution=old.execution)
    assert race, "the race was not run"
    assert_the_new_delivery_is_intact(old, race[0])


def test_an_end_written_while_its_job_is_enqueued_again_is_not_written(old, race):
    """The old horse's attempt ended "stopped" (taken over); RQ's success handling checks
    the job (still its own) and the new delivery lands before RQ's writes: FINISHED (after
    which RQ ignores the death of the new delivery's horse) must not be written."""
    old.job.ended_at = now()
    old.job._result = "stopped"
    old.worker.handle_job_success(old.job, old.rq_queue, old.rq_queue.started_job_registry,
                                  old.execution)
    assert race, "the race was not run"
    assert_the_new_delivery_is_intact(old, race[0])


@pytest.mark.parametrize("when", ["before", "during"])
def test_the_old_horse_never_saves_its_meta_over_the_new_deliverys(old, race, when):
    """The old horse tells its job which attempt it runs after the new delivery came
    (before), or while it comes (during: right after the horse checked the job). The new
    delivery's meta (its token, its horse's attempt 2) must stay."""
    token = old.take_over() if when == "before" else None
    _remember_attempt(old.job, 1)
    if when == "during":
        assert race, "the race was not run"
        token = race[0]
    meta = old.live_job().meta
    assert (meta[DELIVERY], meta["attempt"]) == (token, 2), meta


def test_the_same_delivery_saves_its_meta_and_ends_as_before(old):
    """Without another delivery the fenced writes are RQ's own: the meta is saved and the
    job ends FINISHED with its result."""
    _remember_attempt(old.job, 7)
    assert old.live_job().meta["attempt"] == 7
    old.job.ended_at = now()
    old.job._result = "completed"
    old.worker.handle_job_success(old.job, old.rq_queue, old.rq_queue.started_job_registry,
                                  old.execution)
    live = old.live_job()
    assert live.get_status() == JobStatus.FINISHED and live.return_value() == "completed"
    assert old.job.id in old.rq_queue.finished_job_registry.get_job_ids()
