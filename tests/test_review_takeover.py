"""Redis restarted while a step runs: the step taken over completes (found in review)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from tests import mediagen
from tests.helpers import progress_of, subtasks, upload_ok, wait_for
from tests.test_redis_outage import outage_app, redis_server, worker_proc  # noqa: F401
from webapp.db import session_factory
from webapp.models import ProcessingTask

pytestmark = pytest.mark.e2e


def backdate(settings, task_id: str) -> None:
    """Make the task older than the reconciler's grace (instead of waiting 15 s)."""
    with session_factory(settings.database_url)() as session:
        task = session.get(ProcessingTask, task_id)
        session.execute(update(ProcessingTask).where(ProcessingTask.id == task_id)
                        .values(created_at=task.created_at - timedelta(seconds=60)))
        session.commit()


def test_redis_restarted_while_a_step_runs_the_taken_over_step_completes(
        outage_app, redis_server, settings, tmp_path, worker_proc):  # noqa: F811
    """Redis restarts (empty) while a worker transcodes. The reconciler enqueues the step
    again and a new attempt takes it over; the old attempt stops. The old job's end (RQ
    writes it under the same job id) must not make the reconciler fail the new attempt."""
    video = mediagen.make_video(tmp_path / "long.mp4", duration=60.0, size="1280x720")
    client = outage_app.test_client()
    worker_proc()
    vid = upload_ok(client, video)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    wait_for(lambda: (s := subtasks(progress_of(client, vid))["transcode"])["status"]
             == "running" and s["progress"] > 0, timeout=60, interval=0.05)
    backdate(settings, task_id)
    redis_server.stop()
    redis_server.start()  # back, and empty: the reconciler enqueues the steps again
    worker_proc()  # a second worker to take the step over while the first one's horse lives
    wait_for(lambda: subtasks(progress_of(client, vid))["transcode"]["attempt"] >= 2,
             timeout=60, interval=0.1, what="the step taken over")
    state = wait_for(lambda: (s := progress_of(client, vid))["status"] not in
                     ("queued", "running") and s, timeout=180, what="the task ends")
    transcode = subtasks(state)["transcode"]
    assert state["status"] == "completed", (state["error"], transcode)
