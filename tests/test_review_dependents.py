"""Redis restarted while the audio is extracted: the transcription still runs after it
(found in review). The superseded extraction's job, which has the new job's id, used to
release the transcription while the new extraction ran: it was cancelled ("not run
because extract_audio running") and the task failed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from jobs import reconciler
from tests import mediagen  # noqa: F401
from tests.helpers import progress_of, subtasks, upload_ok, wait_for
from tests.test_redis_outage import outage_app, redis_server, worker_proc  # noqa: F401
from webapp.db import session_factory
from webapp.models import ProcessingTask
from webapp.services.queue import connect

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory):
    import subprocess

    path = tmp_path_factory.mktemp("audio") / "talk.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=44100:duration=1800", "-c:a", "aac",
                    "-b:a", "32k", str(path)], check=True)
    return path


def test_redis_restarted_during_extract_audio_the_transcription_still_runs(
        outage_app, redis_server, settings, long_audio, worker_proc):  # noqa: F811
    client = outage_app.test_client()
    worker_proc()
    worker_proc()
    vid = upload_ok(client, long_audio)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    wait_for(lambda: subtasks(progress_of(client, vid))["extract_audio"]["status"]
             == "running", timeout=60, interval=0.02)
    with session_factory(settings.database_url)() as session:
        task = session.get(ProcessingTask, task_id)
        session.execute(update(ProcessingTask).where(ProcessingTask.id == task_id)
                        .values(created_at=task.created_at - timedelta(seconds=60)))
        session.commit()
    redis_server.stop()
    redis_server.start()  # back, and empty
    settings_now = outage_app.extensions["vidpipe"].settings
    reconciler.reconcile(settings_now, connect(redis_server.url))  # enqueues both again
    # The transcription of the 30 minutes would take minutes: once it has started (or the
    # task ended), what matters is known.
    state = wait_for(lambda: (s := progress_of(client, vid))["status"] not in
                     ("queued", "running") or subtasks(s)["transcribe"]["status"] == "running"
                     and s, timeout=120, what="the transcription starts or the task ends")
    steps = subtasks(state)
    assert steps["extract_audio"]["status"] == "completed", steps["extract_audio"]
    assert steps["transcribe"]["status"] in ("running", "completed"), (
        state["error"], steps["transcribe"])
    client.post(f"/api/v1/videos/{vid}/cancel")
