"""Database hiccups in the middle of a step: progress writes are best-effort, the step goes on.

A real worker transcodes while the test restarts a private PostgreSQL cluster, or holds
SQLite's write lock longer than the busy timeout. The step and its task must complete
with their first attempt, the progress the API shows must never go back, and it must move
again once the database answers.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from jobs import steps
from tests import mediagen
from tests.cleanup import purge_queue
from tests.conftest import TEST_REDIS_URL, migrate, start_worker, stop_worker
from tests.helpers import progress_of, subtasks, upload_ok, wait_for
from tests.pgcluster import private_cluster
from webapp import create_app
from webapp.config import Settings
from webapp.db import dispose, get_engine
from webapp.services.media.preview import transcode_preview

# Deadlines: the step starts within START, the task ends within END (several times the
# planned step), all well inside the test's timeout.
START, END = 60, 150
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(START + END + 60 + 60)]
# How long the transcode step should take: past a 3 s outage, and well past SQLite's
# 10 s busy timeout (webapp/db.py) for a lock held that long.
RESTART_STEP_SECONDS = 15.0
LOCK_STEP_SECONDS = 40.0
CLIP_SECONDS = 8.0
OUTAGE = 3.0  # seconds PostgreSQL is down, at least
WARNING = "progress not written"  # jobs/attempt.py, AttemptWatch: a failed progress write


@dataclass(frozen=True)
class Calibrated:
    clip: Path  # a silent 720p clip of CLIP_SECONDS
    cost: float  # seconds this machine takes to encode a second of it into a preview


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Calibrated:
    """Machines and their load differ by several times, so the encode cost is measured,
    with the step's own code and settings, to give each test a video as long as it needs:
    a step that ends before the hiccup does tests nothing."""
    folder = tmp_path_factory.mktemp("probe")
    clip = mediagen.make_video(folder / "clip.mp4", duration=CLIP_SECONDS, size="1280x720",
                               audio=False, compact=True)
    started = time.monotonic()
    transcode_preview(clip, folder / "preview.mp4", CLIP_SECONDS, has_audio=False, threads=1)
    return Calibrated(clip, (time.monotonic() - started) / CLIP_SECONDS)


def slow_video(folder: Path, calibrated: Calibrated, seconds: float) -> Path:
    """A silent 720p video whose preview takes about `seconds` to encode here."""
    copies = math.ceil(seconds / (calibrated.cost * CLIP_SECONDS))
    return mediagen.make_repeated(calibrated.clip, folder / "slow.mp4", min(60, max(2, copies)))


def use_database(monkeypatch, tmp_path: Path, url: str) -> Settings:
    """Settings for `url`, exported so that the worker process uses them too."""
    env = {"DATABASE_URL": url, "REDIS_URL": TEST_REDIS_URL,
           "MEDIA_ROOT": str(tmp_path / "media"), "QUEUE_NAME": f"test-{uuid.uuid4().hex[:12]}",
           "PROGRESS_INTERVAL": "0.2", "FFMPEG_THREADS": "1"}  # one thread, as measured
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() when the poll was sent (it read the database after)
    status: str
    progress: float
    step_status: str
    step_progress: float


class Poller:
    """Asks the API for the video's progress every 50 ms in a thread, recording every
    answer; answers that fail (the database is away) are counted, not recorded."""

    def __init__(self, client, video_id: str, step: str) -> None:
        self.client, self.video_id, self.step = client, video_id, step
        self.seen: list[Seen] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            # Stamped when sent, not when answered: a poll sent before the lock was taken
            # could be answered after it (a loaded machine) with what it read before, and
            # count as one sent while it was held.
            sent = time.monotonic()
            try:
                resp = self.client.get(f"/api/v1/videos/{self.video_id}/reprocess")
                state = resp.get_json() if resp.status_code == 200 else None
            except Exception:  # the database is down: the API cannot answer
                state = None
            if state is None:
                self.failures += 1
                continue
            sub = next(s for s in state["subtasks"] if s["name"] == self.step)
            self.seen.append(Seen(sent, state["status"], state["progress"],
                                  sub["status"], sub["progress"]))

    def latest(self) -> Seen | None:
        return self.seen[-1] if self.seen else None

    def step_moving(self) -> bool:
        last = self.latest()
        return bool(last and last.step_status == "running" and last.step_progress > 0)

    def ended(self) -> bool:
        last = self.latest()
        return bool(last and last.status not in ("queued", "running"))

    def between(self, start: float, end: float = float("inf")) -> list[Seen]:
        return [s for s in self.seen if start <= s.at <= end]

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(10)


def read_log(worker) -> str:
    return Path(worker.log_path).read_text(errors="replace")


@contextlib.contextmanager
def running_task(settings: Settings, client, video: Path, redis_conn: Redis
                 ) -> Iterator[tuple[str, object]]:
    """Upload the video, start one worker and reprocess; yields (video id, worker).
    The worker is stopped and the queue's Redis keys deleted whatever happens."""
    vid = upload_ok(client, video)["id"]
    worker = start_worker()
    task_id = None
    try:
        resp = client.post(f"/api/v1/videos/{vid}/reprocess")
        assert resp.status_code == 202, resp.get_json()
        task_id = resp.get_json()["task_id"]
        yield vid, worker
    finally:
        stop_worker(worker)
        purge_queue(redis_conn, settings.queue_name, [task_id] if task_id else [])


def assert_completed_first_try(client, vid: str, poller: Poller, worker) -> None:
    """The task completed, every step on its first attempt, and the progress the API
    showed never went back."""
    state = client.get(f"/api/v1/videos/{vid}/reprocess").get_json()
    assert (state["status"], state["progress"], state["error"]) == ("completed", 100, None)
    ran = [s for s in state["subtasks"] if s["status"] != "skipped"]
    assert [(s["name"], s["status"], s["attempt"], s["error"]) for s in ran] == [
        (s["name"], "completed", 1, None) for s in ran], state["subtasks"]
    totals = [s.progress for s in poller.seen]
    assert totals == sorted(totals), totals
    steps = [s.step_progress for s in poller.seen]
    assert steps == sorted(steps), steps
    log = read_log(worker)
    assert "retrying" not in log, log[-3000:]


def test_progress_survives_a_postgresql_restart(calibrated, monkeypatch, tmp_path,
                                                redis_conn):
    video = slow_video(tmp_path, calibrated, RESTART_STEP_SECONDS)
    with private_cluster() as cluster:
        migrate(cluster.url)
        settings = use_database(monkeypatch, tmp_path, cluster.url)
        client = create_app(settings).test_client()
        try:
            with (running_task(settings, client, video, redis_conn) as (vid, worker),
                  Poller(client, vid, "transcode") as poller):
                wait_for(poller.step_moving, timeout=START, interval=0.05,
                         what="transcode running")
                before = poller.latest()
                cluster.stop()
                stopped = time.monotonic()
                # Down for OUTAGE seconds at least, and until a progress write has failed.
                wait_for(lambda: (WARNING in read_log(worker)
                                  and time.monotonic() - stopped >= OUTAGE),
                         timeout=30, interval=0.1,
                         what="a failed progress write in the worker's log")
                cluster.start()
                restarted = time.monotonic()
                wait_for(poller.ended, timeout=END, interval=0.2, what="the task ended")
                assert before.status == "running"
                moved = [s for s in poller.between(restarted)
                         if s.step_status == "running" and s.step_progress > before.step_progress]
                assert moved, "the step's progress did not move after the restart"
                assert_completed_first_try(client, vid, poller, worker)
                print(f"outage: {poller.failures} polls failed; worker log:\n"
                      + "\n".join(line for line in read_log(worker).splitlines()
                                  if WARNING in line))
        finally:
            dispose(cluster.url)


def lock_warning(log: str) -> bool:
    return any(WARNING in line and "database is locked" in line for line in log.splitlines())


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[float]:
    """Hold SQLite's write lock (BEGIN IMMEDIATE) from a connection of our own; yields the
    moment it was taken (time.monotonic())."""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield time.monotonic()
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def test_step_outlasts_a_held_sqlite_write_lock(calibrated, sqlite_template, monkeypatch,
                                                tmp_path, redis_conn):
    video = slow_video(tmp_path, calibrated, LOCK_STEP_SECONDS)
    path = tmp_path / "vidpipe.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite:///{path}"
    settings = use_database(monkeypatch, tmp_path, url)
    client = create_app(settings).test_client()
    try:
        with (running_task(settings, client, video, redis_conn) as (vid, worker),
              Poller(client, vid, "transcode") as poller):
            wait_for(poller.step_moving, timeout=START, interval=0.05, what="transcode running")
            with write_lock_held(path) as taken:
                # Held until a progress write has given up: longer than the busy timeout.
                wait_for(lambda: lock_warning(read_log(worker)), timeout=60, interval=0.1,
                         what="a progress write failing on the lock")
                released = time.monotonic()
            held = poller.between(taken + 0.5, released)  # polls sent after it was taken
            wait_for(poller.ended, timeout=END, interval=0.2, what="the task ended")
            assert released - taken >= 10, "the lock was not held beyond the busy timeout"
            # Nothing could be written while the lock was held ...
            assert held and len({(s.step_status, s.step_progress) for s in held}) == 1, held
            # ... and the step's progress moved again once it was released.
            frozen = held[-1].step_progress
            assert held[-1].step_status == "running"
            moved = [s for s in poller.between(released)
                     if s.step_status == "running" and s.step_progress > frozen]
            assert moved, "the step's progress did not move after the lock was released"
            assert_completed_first_try(client, vid, poller, worker)
    finally:
        dispose(url)


def test_a_connection_lost_right_after_the_start_is_recorded_does_not_orphan_the_step(
        client, settings, tmp_path, database_url):
    """The step's start (`start_subtask`) commits, then the connection dies (a PostgreSQL
    restart, a failover) while the attempt reads the published inputs. `with_retries` runs
    the whole start again: the step shows running already, so the job gives up ("not run")
    and leaves the step running with no attempt working on it; the reconciler later fails
    it ("its job finished without recording a result"). The start is retried with backoff
    to survive exactly this."""
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=2.0)
    vid = upload_ok(client, clip)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    engine = get_engine(settings.database_url)
    killed = []

    def connection_dies(conn, cursor, statement, parameters, context, executemany):
        # The first read of the publications after the step is recorded running: the
        # server really ends this connection (pg_terminate_backend from another one).
        # SQLite has no server to end it: there the read fails as a lost connection would.
        if killed or "FROM publications" not in statement:
            return
        if not database_url.startswith("postgresql"):
            killed.append("sqlite")
            raise OperationalError(statement, parameters, Exception("connection lost"))
        killed.append(conn.connection.dbapi_connection.info.backend_pid)
        with engine.pool._creator() as other:  # a connection outside the pool
            other.execute("SELECT pg_terminate_backend(%s)", (killed[0],))
            other.commit()

    event.listen(engine, "before_cursor_execute", connection_dies)
    try:
        result = steps.transcode(task_id)
    finally:
        event.remove(engine, "before_cursor_execute", connection_dies)
    assert killed, "the start never read the publications"
    transcode = subtasks(progress_of(client, vid))["transcode"]
    assert (result, transcode["status"]) == ("completed", "completed"), transcode


def test_a_reconciler_says_a_database_outage_once_and_its_end(monkeypatch, tmp_path,
                                                             redis_conn):
    """PostgreSQL down: the reconciler beside a worker wrote "database unavailable" at every
    pass (every 5 s by default, for each worker; every second here), burying the log, and
    nothing when it ended. It says it once, then once a minute, and says when it is over,
    as it does for Redis."""
    with private_cluster() as cluster:
        migrate(cluster.url)
        settings = use_database(monkeypatch, tmp_path, cluster.url)
        worker = start_worker({"RECONCILE_INTERVAL": "1"})
        log = Path(worker.log_path)
        try:
            wait_for(lambda: "Listening on" in log.read_text(), timeout=60,
                     what="the worker up")
            cluster.stop()
            wait_for(lambda: "reconciler: database unavailable (" in log.read_text(),
                     timeout=60, what="the reconciler saying the database is down")
            time.sleep(4.5)  # four more passes
            assert log.read_text().count("database unavailable") == 1, log.read_text()[-3000:]
            cluster.start()
            wait_for(lambda: "reconciler: database answers again (after " in
                     log.read_text(), timeout=60,
                     what="the reconciler saying the database answers again")
        finally:
            stop_worker(worker)
            purge_queue(redis_conn, settings.queue_name)
            dispose(cluster.url)
