"""Crashes: work-horses and whole workers killed with SIGKILL mid-step."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from rq.job import Job

from jobs import hooks, reconciler
from tests import mediagen
from tests.conftest import start_worker, stop_worker
from tests.helpers import progress_of, subtasks, upload_ok, wait_for
from tests.procs import horse_of, horses
from webapp import create_app
from webapp.services import progress, queue

pytestmark = pytest.mark.e2e
FAST_RECOVERY = {"HEARTBEAT_INTERVAL": "1", "HEARTBEAT_GRACE": "10", "RECONCILE_INTERVAL": "1"}


@pytest.fixture
def long_video(tmp_path):
    return mediagen.make_video(tmp_path / "long.mp4", duration=8.0, size="1280x720")


@pytest.fixture
def workers():
    procs: list[subprocess.Popen] = []

    def start(**env):
        proc = start_worker({**FAST_RECOVERY, **env})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        for horse in horses(proc):
            os.killpg(horse, signal.SIGKILL)
        stop_worker(proc)


def transcode_running(client, vid):
    def check():
        sub = subtasks(progress_of(client, vid))["transcode"]
        return sub["status"] == "running" and sub["progress"] > 0 and sub
    return check


def kill_horse(worker: subprocess.Popen) -> None:
    horse = horse_of(worker)
    os.killpg(horse, signal.SIGKILL)  # the horse leads its own group: ffmpeg dies too


def test_killed_horse_is_retried_and_the_task_completes(client, long_video, workers, settings):
    worker = workers()
    vid = upload_ok(client, long_video)["id"]
    client.post(f"/api/v1/videos/{vid}/reprocess")
    wait_for(transcode_running(client, vid), timeout=60, interval=0.05)
    kill_horse(worker)
    # Between the death and the retry's start the task is queued (no step runs): not an end.
    state = wait_for(lambda: (s := progress_of(client, vid))["status"] not in (
        "queued", "running") and s, timeout=120)
    assert state["status"] == "completed", state
    transcode = subtasks(state)["transcode"]
    assert (transcode["status"], transcode["attempt"]) == ("completed", 2)
    artifacts = settings.media_root / "videos" / vid / "artifacts"
    assert not list(artifacts.glob(".*part*"))


def test_killed_horse_without_retries_fails_then_resumes(settings, long_video, workers):
    client = create_app(replace(settings, step_retries=0)).test_client()
    worker = workers()
    vid = upload_ok(client, long_video)["id"]
    client.post(f"/api/v1/videos/{vid}/reprocess")
    wait_for(transcode_running(client, vid), timeout=60, interval=0.05)
    kill_horse(worker)
    state = wait_for(lambda: (s := progress_of(client, vid))["status"] == "failed" and s,
                     timeout=60)
    transcode = subtasks(state)["transcode"]
    assert transcode["status"] == "failed"
    assert "killed (signal 9)" in transcode["error"]
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202  # no stuck 409
    state = wait_for(lambda: (s := progress_of(client, vid))["status"] == "completed" and s,
                     timeout=120)
    assert [n for n, s in subtasks(state).items() if not s["reused"]] == ["transcode"]


def test_whole_worker_killed_is_noticed_and_a_later_worker_finishes(client, long_video,
                                                                   workers):
    worker = workers()
    vid = upload_ok(client, long_video)["id"]
    client.post(f"/api/v1/videos/{vid}/reprocess")
    wait_for(transcode_running(client, vid), timeout=60, interval=0.05)
    horse = horse_of(worker)
    os.killpg(horse, signal.SIGKILL)
    worker.send_signal(signal.SIGKILL)  # a host crash: nobody is left to report anything
    worker.wait()
    assert subtasks(progress_of(client, vid))["transcode"]["status"] == "running"
    workers()  # a replacement worker, started after the crash
    # within 60 s the dead attempt stops claiming to run, and the new worker retries it
    wait_for(lambda: subtasks(progress_of(client, vid))["transcode"]["attempt"] >= 2,
             timeout=60, interval=0.5)
    state = wait_for(lambda: (s := progress_of(client, vid))["status"] == "completed" and s,
                     timeout=120)
    assert subtasks(state)["transcode"]["attempt"] == 2


def _reconciler_in_its_pass(env: dict[str, str]):
    """tests/slow_reconciler.py started, once it stands still in its first pass (lock held)."""
    proc = start_worker(env, module="tests.slow_reconciler")
    wait_for(lambda: proc.poll() is not None or "in its pass" in Path(proc.log_path).read_text(),
             timeout=60, interval=0.1, what="the reconciler's first pass")
    assert proc.poll() is None, Path(proc.log_path).read_text()
    return proc


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # Redis's lock alone
def test_a_reconciler_cut_off_in_its_pass_holds_up_the_others_at_most_its_lock_time(
        settings, redis_conn):
    """A reconciler that stands still in the middle of a pass, as on a host whose link goes
    down, cannot renew the pass's lock: the others take over when it expires. It was a
    fixed 60 s, during which no host's reconciler could declare the cut-off host's steps
    abandoned (test_multihost's takeover took over 60 s)."""
    proc = _reconciler_in_its_pass({})
    key = reconciler.LOCK_KEY.format(queue=settings.queue_name)
    try:
        proc.send_signal(signal.SIGSTOP)  # alive, but never heard from again
        stopped = time.monotonic()
        assert reconciler.reconcile(settings, redis_conn) is None  # it holds the lock
        freed = wait_for(lambda: not redis_conn.exists(key) and time.monotonic(), timeout=45,
                         interval=0.1, what="the stopped reconciler's lock expiring")
        # Freed LOCK_SECONDS after the last renewal, which came before the stop; the slack
        # is this test's polling on a busy machine (the old lock held 60 s).
        assert freed - stopped <= reconciler.LOCK_SECONDS + 3, freed - stopped
        assert reconciler.reconcile(settings, redis_conn) is not None  # this process's pass
    finally:
        proc.kill()  # (a stopped process takes SIGKILL at once)
        proc.wait(10)
        stop_worker(proc)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_pass_longer_than_its_lock_time_keeps_the_lock_and_releases_it_at_its_end(
        settings, redis_conn):
    """The lock is renewed while its pass runs (here a 3 s lock, a 9 s pass): a slow pass is
    never joined by a second reconciler, and its end frees the lock at once."""
    proc = _reconciler_in_its_pass({"LOCK_SECONDS": "3", "PASS_SECONDS": "9"})
    key = reconciler.LOCK_KEY.format(queue=settings.queue_name)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 7:  # more than twice the lock's time
            assert reconciler.reconcile(settings, redis_conn) is None
            assert redis_conn.pttl(key) > 0
            time.sleep(0.25)
        # Its pass ends ~9 s in, and the next starts 5 s later (RECONCILE_INTERVAL): this
        # process's passes run in between.
        wait_for(lambda: reconciler.reconcile(settings, redis_conn) is not None, timeout=30,
                 interval=0.25, what="a pass of this process once the slow one ended")
        assert "outlasted its lock" not in Path(proc.log_path).read_text()
    finally:
        stop_worker(proc)


def test_uploads_abandoned_in_staging_are_swept(settings):
    from jobs.reconciler import sweep_staging

    staging = settings.media_root / "staging"
    staging.mkdir(parents=True)
    old, fresh = staging / "old-upload", staging / "live-upload"
    old.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 100)
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    assert sweep_staging(settings) == 1
    assert not old.exists() and fresh.exists()


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
