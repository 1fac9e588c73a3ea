"""Runs you can trust: 409 means one thing, a reprocess never destroys good results,
cancel stops the work by the step's own check, stale attempts are fenced, force is atomic."""

from __future__ import annotations

import os
import threading
from dataclasses import replace

import pytest
from rq.job import Job

from tests import mediagen
from tests.helpers import progress_of, publish_files, subtasks, upload_ok, wait_for
from tests.test_redis_outage import RedisServer
from webapp import create_app
from webapp.config import STEPS
from webapp.db import session_factory
from webapp.models import ACTIVE_STATUSES, ProcessingTask, Publication
from webapp.services import processing, progress, queue
from webapp.services.storage import STEP_OUTPUTS

pytestmark = pytest.mark.e2e


@pytest.fixture
def clip(tmp_path):
    return mediagen.make_video(tmp_path / "clip.mp4", duration=2.0)


@pytest.fixture
def long_video(tmp_path):
    return mediagen.make_video(tmp_path / "long.mp4", duration=8.0, size="1280x720")


def publish_everything(settings, video_id: str) -> str:
    """Every step of the video published by one (fake) earlier run; returns its task id."""
    task_id = None
    for step, names in STEP_OUTPUTS.items():
        task_id = publish_files(settings, video_id, step, {n: f"{n} v1".encode() for n in names})
    return task_id


def active_tasks(settings, video_id: str) -> list[ProcessingTask]:
    with session_factory(settings.database_url)() as session:
        return list(session.query(ProcessingTask).filter(
            ProcessingTask.video_id == video_id, ProcessingTask.status.in_(ACTIVE_STATUSES)))


def tool_processes(settings, video_id: str) -> list[str]:
    """Command lines of running processes (ffmpeg, ffprobe, whisper) that work on the video."""
    folder = str(settings.media_root / "videos" / video_id)
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if folder in cmdline:
            found.append(cmdline)
    return found


def running(client, vid: str, step: str):
    def check():
        sub = subtasks(progress_of(client, vid))[step]
        return sub["status"] == "running" and sub["progress"] > 0 and sub
    return check


def downloads(client, vid: str) -> dict[str, tuple[bytes, str]]:
    listed = client.get(f"/api/v1/videos/{vid}/artifacts").get_json()
    found = {}
    for a in listed:
        resp = client.get(a["url"])
        assert resp.status_code == 200, (a["name"], resp.status_code)
        found[a["name"]] = (resp.data, a["task_id"])
    return found


# -- 409 means one thing --------------------------------------------------------------------

def test_run_sync_while_a_reprocess_is_queued_is_409_even_with_nothing_to_do(client, settings,
                                                                               clip):
    vid = upload_ok(client, clip)["id"]
    publish_everything(settings, vid)
    queued = client.post(f"/api/v1/videos/{vid}/reprocess")
    assert queued.status_code == 202
    resp = client.post(f"/api/v1/videos/{vid}/run_sync")
    assert resp.status_code == 409, resp.get_json()
    assert resp.get_json()["task_id"] == queued.get_json()["task_id"]
    # with force, the queued reprocess is replaced by a run with nothing left to do
    forced = client.post(f"/api/v1/videos/{vid}/run_sync?force=true")
    assert forced.status_code == 202
    assert forced.get_json()["status"] == "completed"
    assert progress_of(client, vid)["task_id"] == forced.get_json()["task_id"]
    assert active_tasks(settings, vid) == []


# -- a reprocess never destroys good results ------------------------------------------------

def test_cancelled_reprocess_leaves_the_published_outputs_untouched(client, settings, long_video,
                                                                    worker):
    vid = upload_ok(client, long_video)["id"]
    first = client.post(f"/api/v1/videos/{vid}/run_sync").get_json()["task_id"]
    wait_for(lambda: progress_of(client, vid)["status"] == "completed", timeout=180)
    before = downloads(client, vid)
    assert {task for _, task in before.values()} == {first}

    client.post(f"/api/v1/videos/{vid}/reprocess")
    wait_for(running(client, vid, "transcode"), timeout=60, interval=0.05)
    # While the reprocess runs, everything published is still there, poster included.
    assert downloads(client, vid).keys() == before.keys()
    assert f"/api/v1/videos/{vid}/artifacts/poster.jpg" in client.get("/").get_data(as_text=True)
    assert client.post(f"/api/v1/videos/{vid}/cancel").status_code == 200

    wait_for(lambda: not tool_processes(settings, vid), timeout=3, interval=0.05,
             what="no ffmpeg/whisper working on the video")
    after = downloads(client, vid)
    assert after.keys() == before.keys()
    state = subtasks(progress_of(client, vid))
    for name, (data, task) in after.items():
        step = next(s for s, names in STEP_OUTPUTS.items() if name in names)
        if state[step]["status"] == "completed":  # published by the reprocess before cancel
            assert task != first
        else:
            assert (data, task) == before[name], name
    # only published folders are left on disk (the stopped step's goes just after its tool)
    runs = settings.media_root / "videos" / vid / "runs"

    def on_disk() -> set[str]:
        return {f"runs/{p.parent.name}/{p.name}" for p in runs.glob("*/*")}
    with session_factory(settings.database_url)() as session:
        published = {p.folder for p in session.query(Publication).filter_by(video_id=vid)}
    wait_for(lambda: on_disk() == published, timeout=60,
             what="only the published folders left on disk")
    assert on_disk() == published


# -- cancel stops the work by the step's own check of the database --------------------------

def test_a_step_stops_within_3_s_of_a_cancel_the_worker_is_not_told_about(
        client, settings, long_video, worker, redis_conn):
    vid = upload_ok(client, long_video)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    wait_for(running(client, vid, "transcode"), timeout=60, interval=0.05)
    assert tool_processes(settings, vid)
    with session_factory(settings.database_url)() as session:  # no RQ stop command
        assert progress.cancel_task(session, task_id, "cancelled behind RQ's back")
        session.commit()
    wait_for(lambda: not tool_processes(settings, vid), timeout=3, interval=0.05,
             what="no ffmpeg working on the video")
    job = Job.fetch(queue.job_id(task_id, "transcode"), connection=redis_conn)
    assert wait_for(lambda: job.get_status(refresh=True) == "finished" and job, timeout=60)
    assert job.return_value() == "stopped"
    runs = settings.media_root / "videos" / vid / "runs" / task_id
    wait_for(lambda: not runs.exists() or not any(runs.glob("transcode.*")), timeout=60)
    assert "preview.mp4" not in {a["name"] for a in
                                 client.get(f"/api/v1/videos/{vid}/artifacts").get_json()}


def test_transcription_stops_within_3_s_of_a_cancel_the_worker_is_not_told_about(
        client, settings, tmp_path, worker):
    """Whisper yields only between 30 s windows: it runs in a child process that the step
    kills once its check of the database says the attempt is no longer wanted."""
    text = " ".join(["The weather report for tomorrow morning says rain in the north."] * 30)
    audio = mediagen.make_audio_only(tmp_path / "talk.m4a", text)
    vid = upload_ok(client, audio)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    wait_for(running(client, vid, "transcribe"), timeout=90, interval=0.05)
    assert any("whisper" in c for c in tool_processes(settings, vid))
    with session_factory(settings.database_url)() as session:  # no RQ stop command
        assert progress.cancel_task(session, task_id, "cancelled behind RQ's back")
        session.commit()
    wait_for(lambda: not tool_processes(settings, vid), timeout=3, interval=0.05,
             what="no whisper working on the video")
    assert "transcript.json" not in {a["name"] for a in
                                     client.get(f"/api/v1/videos/{vid}/artifacts").get_json()}


# -- fencing --------------------------------------------------------------------------------

def test_attempts_are_fenced(db_session, client, settings, clip):
    vid = upload_ok(client, clip)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    first = progress.start_subtask(db_session, task_id, "transcode")
    assert first == 1
    # The same job delivered twice: the second is refused while the first runs.
    assert progress.start_subtask(db_session, task_id, "transcode") is None
    # A retry (the first attempt was declared dead) takes over.
    second = progress.start_subtask(db_session, task_id, "transcode", takeover=True)
    assert second == 2
    progress.report_progress(db_session, task_id, "transcode", second, 10)
    # The first attempt lives on and writes: all refused.
    assert not progress.attempt_is_current(db_session, task_id, "transcode", first)
    progress.report_progress(db_session, task_id, "transcode", first, 90)
    assert not progress.retry_subtask(db_session, task_id, "transcode", "died", first)
    assert not progress.finish_subtask(db_session, task_id, "transcode", "failed", "x",
                                       attempt=first)
    assert not progress.complete_subtask(db_session, task_id, "transcode", first)
    sub = subtasks(progress_of(client, vid))["transcode"]
    assert (sub["status"], sub["attempt"], sub["progress"]) == ("running", 2, 10.0)


def test_a_superseded_attempt_stops_and_is_never_published(client, settings, long_video,
                                                           worker, db_session):
    vid = upload_ok(client, long_video)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    wait_for(running(client, vid, "transcode"), timeout=60, interval=0.05)
    folder = settings.media_root / "videos" / vid / "runs" / task_id / "transcode.1"
    assert folder.is_dir()
    # Another attempt takes the step over (as a retry would, after a missed heartbeat).
    assert progress.start_subtask(db_session, task_id, "transcode", takeover=True) == 2
    wait_for(lambda: not folder.exists(), timeout=3, interval=0.05,
             what="the stale attempt removes its files")
    assert not [c for c in tool_processes(settings, vid) if "transcode.1" in c]
    sub = subtasks(progress_of(client, vid))["transcode"]
    assert (sub["status"], sub["attempt"], sub["progress"]) == ("running", 2, 0.0)
    with session_factory(settings.database_url)() as session:
        assert session.get(Publication, (vid, "transcode")) is None
    client.post(f"/api/v1/videos/{vid}/cancel")


# -- force is one transaction ---------------------------------------------------------------

def test_concurrent_forced_triggers_all_get_202_and_leave_one_active_task(app, settings, clip):
    client = app.test_client()
    vid = upload_ok(client, clip)["id"]
    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    answers: list[int] = []
    barrier = threading.Barrier(8)

    def force():
        barrier.wait()
        resp = app.test_client().post(f"/api/v1/videos/{vid}/reprocess?force=true")
        answers.append(resp.status_code)

    threads = [threading.Thread(target=force) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [202] * 8
    active = active_tasks(settings, vid)
    assert len(active) == 1
    assert progress_of(client, vid)["task_id"] == active[0].id
    with session_factory(settings.database_url)() as session:
        statuses = [t.status for t in session.query(ProcessingTask).filter_by(video_id=vid)]
    assert sorted(statuses) == ["cancelled"] * 8 + ["queued"]


def test_forced_trigger_with_the_queue_down_is_503_and_leaves_the_old_run(
        settings, clip, tmp_path, db_session):
    server = RedisServer(tmp_path)
    server.start()
    try:
        app = create_app(replace(settings, redis_url=server.url))
        client = app.test_client()
        vid = upload_ok(client, clip)["id"]
        old = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
        server.stop()
        resp = client.post(f"/api/v1/videos/{vid}/reprocess?force=true")
        assert resp.status_code == 503, resp.get_json()
        assert [t.id for t in active_tasks(settings, vid)] == [old]
        assert progress_of(client, vid)["status"] == "queued"
    finally:
        server.stop()


def test_queue_lost_during_a_forced_switch_the_reconciler_enqueues_the_new_task(
        settings, clip, tmp_path, monkeypatch):
    from tests.conftest import start_worker, stop_worker

    server = RedisServer(tmp_path)
    server.start()
    worker = None
    try:
        monkeypatch.setenv("REDIS_URL", server.url)
        monkeypatch.setenv("RECONCILE_INTERVAL", "1")
        app = create_app(replace(settings, redis_url=server.url))
        client = app.test_client()
        vid = upload_ok(client, clip)["id"]
        old = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
        real_stop_jobs = queue.stop_jobs

        def redis_dies_now(connection, task_id):  # the outage hits right after the switch
            server.stop()
            real_stop_jobs(connection, task_id)

        monkeypatch.setattr(processing.queue, "stop_jobs", redis_dies_now)
        resp = client.post(f"/api/v1/videos/{vid}/reprocess?force=true")
        assert resp.status_code == 202, resp.get_json()
        new = resp.get_json()["task_id"]
        assert new != old
        assert [t.id for t in active_tasks(settings, vid)] == [new]  # recorded, queued
        server.start()  # back, and empty
        worker = start_worker()
        state = wait_for(lambda: (s := progress_of(client, vid))["status"] == "completed" and s,
                         timeout=90, what="the forced task completes")
        assert state["task_id"] == new
    finally:
        if worker is not None:
            stop_worker(worker)
        server.stop()


def test_every_step_of_a_force_replaced_task_ends(client, settings, clip, db_session):
    vid = upload_ok(client, clip)["id"]
    old = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    client.post(f"/api/v1/videos/{vid}/reprocess", json={"force": True})
    state = {s.name: s.status for s in db_session.get(ProcessingTask, old).subtasks}
    assert state == dict.fromkeys(STEPS, "cancelled")


def test_a_run_made_in_the_clocks_future_is_still_recovered_when_its_jobs_are_lost(
        client, settings, clip, redis_conn, db_session):
    """The clock went back two hours after a trigger (or the web host that made the task
    runs ahead of the workers' host), so the task's created_at is in the future, and Redis
    then lost its jobs. The reconciler leaves a task alone for its first 15 s (it may be
    between its commit and its enqueue) and told that by created_at: it passed this one
    over for two hours, queued with nobody working on it. It counts those 15 s itself."""
    from datetime import timedelta

    from sqlalchemy import update

    from tests.cleanup import purge_queue
    from tests.conftest import start_worker, stop_worker
    from webapp.models import utcnow

    vid = upload_ok(client, clip)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/run_sync").get_json()["task_id"]
    db_session.execute(update(ProcessingTask).where(ProcessingTask.id == task_id)
                       .values(created_at=utcnow() + timedelta(hours=2)))
    db_session.commit()
    assert purge_queue(redis_conn, settings.queue_name, [task_id])  # Redis lost its jobs
    worker = start_worker({"RECONCILE_INTERVAL": "1"})
    try:
        state = wait_for(lambda: (s := progress_of(client, vid))["status"] not in
                         ACTIVE_STATUSES and s, timeout=90, interval=0.5,
                         what="the run ending")
    finally:
        stop_worker(worker)
    assert (state["task_id"], state["status"], state["progress"]) == (
        task_id, "completed", 100.0)
