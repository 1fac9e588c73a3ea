"""A killed work-horse whose exit status RQ could not read (found in review)."""

from __future__ import annotations

from rq.job import Job

from jobs import hooks
from tests import mediagen
from tests.helpers import progress_of, subtasks, upload_ok
from webapp.services import progress, queue


def test_a_horse_killed_without_an_exit_status_is_recorded(client, settings, redis_conn,
                                                          db_session, tmp_path):
    """RQ calls the work_horse_killed_handler with ret_val None when its wait for the horse
    found no child to reap ("Work-horse terminated unexpectedly; waitpid returned None",
    seen in tests/test_crashes.py runs). The hook must record the dead attempt like any
    other; raising there makes the whole worker quit ("found an unhandled exception,
    quitting...") and leaves the step running with nobody to notice it."""
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=2.0)
    vid = upload_ok(client, clip)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    attempt = progress.start_subtask(db_session, task_id, "transcode")  # what the horse did
    job = Job.fetch(queue.job_id(task_id, "transcode"), connection=redis_conn)
    job.meta["attempt"] = attempt
    job.save_meta()
    hooks.horse_killed(job, None, None, None)
    transcode = subtasks(progress_of(client, vid))["transcode"]
    assert transcode["status"] == "pending", transcode  # a retry comes (STEP_RETRIES)
    assert "killed" in transcode["error"]
