"""Redis outages: a private redis-server is really stopped and restarted (empty) mid-test."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from sqlalchemy import update

from jobs import reconciler
from tests import mediagen
from tests.conftest import TEST_REDIS_URL, start_worker, stop_worker
from tests.helpers import (
    always,
    assert_json_error,
    free_port,
    progress_of,
    subtasks,
    upload_ok,
    wait_for,
)
from tests.procs import REDIS_SERVER, horse_of
from webapp import create_app
from webapp.config import PROJECT_ROOT
from webapp.db import session_factory
from webapp.models import ProcessingTask
from webapp.services.queue import connect

pytestmark = pytest.mark.e2e


def redis_port() -> int:
    """A free port for a private redis-server: in TEST_REDIS_PORTS ("5300-5399") if set
    (machines where test runs share the host keep to a range each), else any."""
    ports = os.environ.get("TEST_REDIS_PORTS")
    if not ports:
        return free_port()
    low, high = (int(p) for p in ports.split("-"))
    for port in range(low, high + 1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {ports}")


class RedisServer:
    """A redis-server of the test's own that keeps nothing on disk, like production here."""

    def __init__(self, tmp_path) -> None:
        self.port = redis_port()
        self.dir = tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, timeout=60, interval=0.05, what="the redis-server answering")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # no shutdown save, no goodbye: like a crash
            self.proc.wait()

    def answers(self) -> bool:
        try:
            return bool(Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except Exception:
            return False


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def outage_app(settings, redis_server, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_server.url)  # for the workers
    monkeypatch.setenv("RECONCILE_INTERVAL", "1")
    return create_app(replace(settings, redis_url=redis_server.url))


@pytest.fixture
def clip(tmp_path):
    return mediagen.make_video(tmp_path / "clip.mp4", duration=2.0)


@pytest.fixture
def worker_proc():
    procs = []

    def start(**env: str):
        procs.append(start_worker(env))
        return procs[-1]

    yield start
    for proc in procs:
        stop_worker(proc)


def test_with_redis_down_the_service_degrades_honestly_and_recovers(
        outage_app, redis_server, clip, db_session, worker_proc):
    from webapp.models import ProcessingTask

    client = outage_app.test_client()
    worker = worker_proc()  # started while Redis is up; it must survive the outage
    vid = upload_ok(client, clip)["id"]
    # Connected before the outage: on a loaded machine its start-up can outlast the upload,
    # and a worker that first meets Redis while it is down exits (a different case).
    wait_for(lambda: "Listening on" in Path(worker.log_path).read_text(), timeout=60,
             what="the worker listening")
    redis_server.stop()

    resp = client.post(f"/api/v1/videos/{vid}/run_sync")
    body = assert_json_error(resp, 503)
    assert "Redis" in body["message"] and resp.headers["Retry-After"] == "5"
    assert db_session.query(ProcessingTask).count() == 0
    assert progress_of(client, vid)["status"] == "pending"
    assert client.get("/api/v1/videos").status_code == 200
    assert client.get(f"/api/v1/videos/{vid}/artifacts").status_code == 200
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["checks"]["redis"].startswith("down")
    page = client.get(f"/videos/{vid}").get_data(as_text=True)
    assert 'id="queue-banner"' in page
    assert upload_ok(client, clip)["id"]  # uploads do not need the queue

    redis_server.start()  # back, and empty
    assert client.get("/healthz").status_code == 200
    assert 'id="queue-banner"' not in client.get("/").get_data(as_text=True)
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    state = wait_for(lambda: (s := progress_of(client, vid))["status"] == "completed" and s,
                     timeout=90)
    assert state["progress"] == 100


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # about Redis only
def test_a_worker_says_an_outage_once_and_its_end_and_stops_during_one_when_told(
        outage_app, redis_server, worker_proc):
    """A worker waiting out a Redis outage wrote two error lines every 2 to 5 seconds (RQ's
    main loop and its command thread) and its reconciler one every pass: ~500 lines per
    worker in ten minutes, and nothing said when it ended. And Ctrl-C during the outage
    left it waiting for Redis (its goodbye to Redis failed, taken for a new outage) until
    honcho's SIGKILL 5 s later."""
    worker = worker_proc()
    log = Path(worker.log_path)
    wait_for(lambda: "Listening on" in log.read_text(), timeout=60, what="the worker up")
    redis_server.stop()
    # Both say it once they meet the outage (waited for: a loaded machine's reconciler
    # may come to its next pass late) ...
    wait_for(lambda: "the job queue (Redis) does not answer (" in (text := log.read_text())
             and "reconciler: Redis unavailable" in text,
             timeout=15, what="the worker and its reconciler saying Redis does not answer")

    def said_once() -> bool:
        said = log.read_text()
        return (said.count("does not answer"), said.count("could not connect to Redis"),
                said.count("reconciler: Redis unavailable")) == (1, 0, 1)

    # ... and not again over a 2-5 s retry, twice over, and the reconciler's 1 s passes.
    try:
        always(said_once, within=4.5, interval=0.2, what="the outage said once")
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{log.read_text()[-3000:]}") from None
    redis_server.start()
    wait_for(lambda: "reconciler: Redis answers again (after " in log.read_text(),
             timeout=15, what="the reconciler saying Redis answers again")
    redis_server.stop()
    wait_for(lambda: log.read_text().count("reconciler: Redis unavailable") == 2, timeout=15,
             what="the reconciler seeing the second outage")
    os.killpg(worker.pid, signal.SIGTERM)  # Ctrl-C of `make run`: honcho's SIGTERM
    assert worker.wait(5) == 0, log.read_text()[-3000:]
    assert "stopped without unregistering from the job queue" in log.read_text()


def test_jobs_forgotten_by_a_restarted_redis_are_enqueued_again(
        outage_app, redis_server, clip, worker_proc):
    client = outage_app.test_client()
    vid = upload_ok(client, clip)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/run_sync").get_json()["task_id"]
    redis_server.stop()
    redis_server.start()  # nothing kept on disk: the queue is gone
    assert not Redis.from_url(redis_server.url).keys("rq:job:*")
    started = time.monotonic()
    worker_proc()
    state = wait_for(lambda: (s := progress_of(client, vid))["status"] == "completed" and s,
                     timeout=60)
    assert state["task_id"] == task_id
    assert time.monotonic() - started < 60


def backdate(settings, task_id: str) -> None:
    """Make the task older than the reconciler's grace (instead of waiting 15 s)."""
    with session_factory(settings.database_url)() as session:
        task = session.get(ProcessingTask, task_id)
        session.execute(update(ProcessingTask).where(ProcessingTask.id == task_id)
                        .values(created_at=task.created_at - timedelta(seconds=60)))
        session.commit()


def start_a_long_transcode(client, tmp_path) -> tuple[str, str]:
    """Upload a 60 s 720p video and reprocess it; once its transcode has made progress:
    (video id, task id)."""
    video = mediagen.make_video(tmp_path / "long.mp4", duration=60.0, size="1280x720")
    vid = upload_ok(client, video)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    wait_for(lambda: (s := subtasks(progress_of(client, vid))["transcode"])["status"]
             == "running" and s["progress"] > 0, timeout=60, interval=0.05)
    return vid, task_id


def restart_redis_empty(settings, redis_server, task_id: str) -> None:
    """Redis restarts with nothing in it, the task past the reconciler's grace: its jobs
    are enqueued again at the reconciler's next pass."""
    backdate(settings, task_id)
    redis_server.stop()
    redis_server.start()


def wait_for_the_takeover(client, vid: str) -> None:
    """Attempt 2 of the transcode runs and has made progress (its horse has told the job
    which attempt it runs)."""
    wait_for(lambda: (s := subtasks(progress_of(client, vid))["transcode"])["attempt"]
             == 2 and s["status"] == "running" and s["progress"] > 0,
             timeout=60, interval=0.1, what="the step taken over")


def test_redis_restarted_while_a_step_runs_the_taken_over_step_completes(
        outage_app, redis_server, settings, tmp_path, worker_proc):
    """Redis restarts (empty) while a worker transcodes. The reconciler enqueues the step
    again and a new attempt takes it over; the old attempt stops. The old job's end (RQ
    writes it under the same job id) must not make the reconciler fail the new attempt."""
    client = outage_app.test_client()
    worker_proc()
    vid, task_id = start_a_long_transcode(client, tmp_path)
    restart_redis_empty(settings, redis_server, task_id)
    worker_proc()  # a second worker to take the step over while the first one's horse lives
    wait_for(lambda: subtasks(progress_of(client, vid))["transcode"]["attempt"] >= 2,
             timeout=60, interval=0.1, what="the step taken over")
    state = wait_for(lambda: (s := progress_of(client, vid))["status"] not in
                     ("queued", "running") and s, timeout=180, what="the task ends")
    transcode = subtasks(state)["transcode"]
    assert state["status"] == "completed", (state["error"], transcode)


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "talk.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=44100:duration=1800", "-c:a", "aac",
                    "-b:a", "32k", str(path)], check=True)
    return path


def test_redis_restarted_during_extract_audio_the_transcription_still_runs(
        outage_app, redis_server, settings, long_audio, worker_proc):
    """The old extraction's job, which has the new one's id, ends when its attempt sees it
    was taken over, and RQ then releases the transcription while the new extraction still
    runs: the transcription must wait for it, not end "not run because extract_audio
    running" and fail the task."""
    client = outage_app.test_client()
    worker_proc()
    worker_proc()
    vid = upload_ok(client, long_audio)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    wait_for(lambda: subtasks(progress_of(client, vid))["extract_audio"]["status"]
             == "running", timeout=60, interval=0.02)
    backdate(settings, task_id)
    redis_server.stop()
    redis_server.start()  # back, and empty
    settings_now = outage_app.extensions["vidpipe"].settings
    reconciler.reconcile(settings_now, connect(redis_server.url))  # enqueues both again
    # The transcription of the 30 minutes would take minutes: once it has started (or the
    # task ended), what matters is known.
    state = wait_for(lambda: ((s := progress_of(client, vid))["status"] not in
                              ("queued", "running")
                              or subtasks(s)["transcribe"]["status"] == "running") and s,
                     timeout=120, what="the transcription starts or the task ends")
    steps = subtasks(state)
    assert steps["extract_audio"]["status"] == "completed", steps["extract_audio"]
    assert steps["transcribe"]["status"] in ("running", "completed"), (
        state["error"], steps["transcribe"])
    client.post(f"/api/v1/videos/{vid}/cancel")


@pytest.mark.parametrize("retries", [0, 1])
def test_a_superseded_horse_killed_after_the_takeover_leaves_the_live_attempt_alone(
        retries, settings, redis_server, tmp_path, worker_proc, monkeypatch):
    """Redis restarts (empty) while a worker transcodes; the step's job is enqueued again
    under the same id and a second worker's attempt 2 takes the step over. The first
    worker's horse, frozen meanwhile (it cannot notice the takeover), is then killed (the
    OOM killer). Its worker must not take the death for the live attempt's: neither fail
    the step or the task, nor mark attempt 2 as retrying and run a wasted attempt 3."""
    monkeypatch.setenv("STEP_RETRIES", str(retries))
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RECONCILE_INTERVAL", "1")
    app = create_app(replace(settings, redis_url=redis_server.url, step_retries=retries))
    client = app.test_client()
    old = worker_proc()
    vid, task_id = start_a_long_transcode(client, tmp_path)
    horse = horse_of(old)
    os.killpg(horse, signal.SIGSTOP)  # frozen with its ffmpeg (swapping, a stuck disk)
    try:
        restart_redis_empty(settings, redis_server, task_id)
        worker_proc()
        wait_for_the_takeover(client, vid)
        os.killpg(horse, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(horse, signal.SIGKILL)
    seen = set()

    def ended():
        state = progress_of(client, vid)
        seen.add(subtasks(state)["transcode"]["attempt"])
        return state["status"] not in ("queued", "running") and state

    state = wait_for(ended, timeout=180, interval=0.1, what="the task ends")
    transcode = subtasks(state)["transcode"]
    assert state["status"] == "completed", (state["error"], transcode)
    assert transcode["attempt"] == 2 and seen <= {1, 2}, (seen, transcode)


def test_the_live_attempt_killed_after_the_superseded_one_stopped_is_retried(
        outage_app, redis_server, settings, tmp_path, worker_proc):
    """Redis restarts (empty) while a worker transcodes; a second worker's attempt 2 takes
    the step over and the old attempt ends ("stopped"), under the job id the two deliveries
    share. Then attempt 2's horse is killed (SIGKILL): the step must be retried (attempt 3)
    and the task complete, not stay running with nobody working on it."""
    client = outage_app.test_client()
    old = worker_proc(LOG_LEVEL="DEBUG")  # RQ's own lines too: its "Job OK" below
    vid, task_id = start_a_long_transcode(client, tmp_path)
    restart_redis_empty(settings, redis_server, task_id)
    new = worker_proc()
    wait_for_the_takeover(client, vid)
    wait_for(lambda: "attempt 1 stopped" in Path(old.log_path).read_text()
             and "Job OK" in Path(old.log_path).read_text().split("attempt 1 stopped")[-1],
             timeout=30, what="the old attempt's job ended")
    os.killpg(horse_of(new), signal.SIGKILL)
    state = wait_for(lambda: (s := progress_of(client, vid))["status"] not in
                     ("queued", "running") and s, timeout=120, what="the task ends")
    transcode = subtasks(state)["transcode"]
    assert state["status"] == "completed", (state["error"], transcode)
    assert transcode["attempt"] == 3, transcode


def test_a_worker_that_finds_no_redis_at_start_says_so_in_a_sentence(settings):
    """`make worker` with Redis down or REDIS_URL mistyped: the worker does not start (it has
    nothing to wait for), and says where it looked and what to do, not a traceback, and
    without the password in REDIS_URL."""
    port = free_port()  # nothing listens there
    url = f"redis://:a-redis-password@127.0.0.1:{port}/3"
    done = subprocess.run([sys.executable, "-m", "jobs.worker"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "REDIS_URL": url})
    assert done.returncode == 1, done.stderr[-2000:]
    assert (f"vidpipe: the job queue (Redis) at redis://127.0.0.1:{port}/3 does not answer ("
            in done.stderr), done.stderr
    assert "start it (`make redis` starts a local one) or set REDIS_URL" in done.stderr
    assert "Traceback" not in done.stderr and "a-redis-password" not in done.stderr



@contextlib.contextmanager
def redis_with_a_password(tmp_path: Path):
    """A private redis-server on a free port whose password is "the-right-one"; its port."""
    port = redis_port()
    server = subprocess.Popen([*REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                               "--requirepass", "the-right-one", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:  # not yet listening: refused (redis-py gives up after ~3 s)
        try:
            return bool(Redis(port=port, password="the-right-one",
                              socket_connect_timeout=0.5).ping())
        except RedisError:
            return False

    try:
        wait_for(answers, timeout=60, interval=0.05, what="the private redis-server")
        yield port
    finally:
        server.kill()
        server.wait()

@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_refused_by_redis_at_start_says_so_not_that_it_does_not_answer(settings,
                                                                                tmp_path):
    """A Redis that wants a password REDIS_URL lacks (or has wrong): the worker said Redis
    "does not answer" and to start it, which sent people to start a second Redis."""
    with redis_with_a_password(tmp_path) as port:
        for url in (f"redis://127.0.0.1:{port}/3", f"redis://:a-wrong-one@127.0.0.1:{port}/3"):
            done = subprocess.run([sys.executable, "-m", "jobs.worker"], cwd=PROJECT_ROOT,
                                  capture_output=True, text=True, timeout=60, check=False,
                                  env={**os.environ, "REDIS_URL": url})
            assert done.returncode == 1, done.stderr[-2000:]
            assert (f"vidpipe: the job queue (Redis) at redis://127.0.0.1:{port}/3 refuses "
                    "REDIS_URL's credentials (" in done.stderr), done.stderr
            assert "put its password in REDIS_URL" in done.stderr, done.stderr
            assert "does not answer" not in done.stderr and "a-wrong-one" not in done.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_dashboard_says_the_queue_is_down_without_a_traceback(settings, caplog):
    """rq-dashboard's pages and the data its open page asks for every few seconds were each a
    500 "internal error" with a traceback in the log while Redis was down."""
    app = create_app(replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    client = app.test_client()
    paths = ("/rq/0/data/queues.json", "/rq/0/data/workers.json", "/rq/0/view/workers",
             "/rq/0/view/jobs", "/rq/0/view/job/no-such-job",
             "/rq/")  # was 200 "Connection Error"
    for path in paths:
        resp = client.get(path)
        assert resp.status_code == 503, (path, resp.status_code)
        assert "the job queue (Redis) is unavailable; try again in a moment" in resp.get_data(
            as_text=True), path
    assert not any(r.exc_info for r in caplog.records), caplog.text
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and said[0].startswith(  # one line for the operator (the outage's)
        f"GET {paths[0]} answered 503: the job queue (Redis) is unavailable"), said


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_open_dashboard_says_an_outage_once_a_minute_and_its_end(
        settings, redis_server, caplog, monkeypatch):
    """An open rq-dashboard page asks for its data every 2.5 s: with Redis down each request
    wrote a warning, some 240 in ten minutes. Said once, again at most once a minute with
    how many were left out (as RQ's reconnect errors in the worker), and its end."""
    from webapp import dashboard

    monkeypatch.setattr(dashboard, "OUTAGE_REMINDER_SECONDS", 1.5)
    client = create_app(replace(settings, redis_url=redis_server.url)).test_client()
    data = "/rq/0/data/queues.json"

    def lines():
        said = [(r.levelname, r.getMessage()) for r in caplog.records
                if "the job queue (Redis)" in r.getMessage()]
        caplog.clear()
        return said

    caplog.set_level(logging.INFO)
    assert client.get(data).status_code == 200
    assert lines() == []  # nothing to say while Redis answers
    redis_server.stop()
    for path in (data, "/rq/0/data/workers.json", data, data):
        assert client.get(path).status_code == 503
    [(level, said)] = lines()
    assert level == "WARNING" and said.startswith(
        f"GET {data} answered 503: the job queue (Redis) is unavailable ("), said
    time.sleep(1.6)  # a reminder's time (a minute in service)
    for _ in range(3):
        assert client.get(data).status_code == 503
    [(level, said)] = lines()
    assert level == "WARNING" and re.fullmatch(
        rf"GET {data} answered 503: the job queue \(Redis\) is still unavailable after \d+ s "
        r"\(.+\); 3 more such requests since it was last said", said), said
    assert client.get("/rq/static/js/jquery-3.5.1.min.js").status_code == 200  # no Redis read
    assert lines() == []
    redis_server.start()
    assert client.get(data).status_code == 200
    [(level, said)] = lines()
    assert level == "INFO" and re.fullmatch(
        r"the job queue \(Redis\) answers again \(unavailable for \d+ s\)", said), said
    assert client.get(data).status_code == 200 and lines() == []
    redis_server.stop()  # a new outage is said at once
    assert client.get(data).status_code == 503
    assert [level for level, _ in lines()] == ["WARNING"]


@pytest.mark.parametrize("user", ["", "vidpipe"])
def test_make_redis_starts_a_local_redis_with_the_credentials_of_redis_url(user):
    """scripts/ensure-redis.sh (`make run`, `make redis`) started its Redis without the
    password REDIS_URL carries: the app was then refused (AUTH), or, had it no password,
    worked with a Redis open to every local user. The password is not on the command line
    (anyone may read it in ps), and the Redis listens on the loopback address only."""
    port = redis_port()
    password = "pass word/with:odd@chars\"é"
    url = f"redis://{user}:{quote(password, safe='')}@127.0.0.1:{port}/0"
    try:
        done = subprocess.run(["scripts/ensure-redis.sh"], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "REDIS_URL": url, "PYTHON": sys.executable})
        assert done.returncode == 0, done.stdout + done.stderr
        assert Redis.from_url(url).ping()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")  # without credentials
            assert sock.recv(100).startswith(b"-NOAUTH"), "it is open to anybody"
        info = Redis.from_url(url).info("server")
        cmdline = Path(f"/proc/{info['process_id']}/cmdline").read_bytes()
        assert password.encode() not in cmdline and b"pass" not in cmdline, cmdline
        assert Redis.from_url(url).config_get("bind") == {"bind": "127.0.0.1"}
        assert not list(Path("/tmp/vidpipe-redis").glob("auth.*")), "its config file is left"
    finally:
        for stop in (url, f"redis://127.0.0.1:{port}/0"):  # the one it started, either way
            with contextlib.suppress(RedisError):
                Redis.from_url(stop, retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)


def test_make_redis_does_not_start_a_plain_redis_for_a_socket_or_tls_url(tmp_path):
    """REDIS_URL=unix://… or rediss://… with nothing answering: ensure-redis.sh started a plain
    redis-server on 127.0.0.1 (6379, or the URL's port) and waited for it in vain ("did not come
    up" after half a minute; over TLS it hung, and left that Redis running)."""
    port = redis_port()
    for url in (f"unix://{tmp_path}/redis.sock", f"rediss://:a-password@127.0.0.1:{port}/0"):
        started = time.monotonic()
        done = subprocess.run(["scripts/ensure-redis.sh"], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "REDIS_URL": url, "PYTHON": sys.executable})
        assert done.returncode == 1, done.stdout + done.stderr
        assert time.monotonic() - started < 10
        assert "`make redis` starts only a plain local one" in done.stderr, done.stderr
        assert "starting redis-server" not in done.stdout and "a-password" not in done.stderr
    with pytest.raises(ConnectionRefusedError):  # no redis-server left on that port
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_make_redis_says_a_redis_with_a_password_refuses_rather_than_starting_another(
        tmp_path):
    """scripts/ensure-redis.sh (`make run`, `make redis`) took a Redis that refused REDIS_URL's
    password (or its lack of one) for none at all: it started redis-server on the same
    port, which could not listen, and said "redis-server did not come up" half a minute
    later."""
    with redis_with_a_password(tmp_path) as port:
        for url in (f"redis://:a-wrong-one@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0"):
            started = time.monotonic()
            done = subprocess.run(["scripts/ensure-redis.sh"], cwd=PROJECT_ROOT,
                                  capture_output=True, text=True, timeout=60, check=False,
                                  env={**os.environ, "REDIS_URL": url,
                                       "PYTHON": sys.executable})
            assert done.returncode == 1, done.stdout + done.stderr
            assert time.monotonic() - started < 15
            assert (f"a Redis answers at redis://127.0.0.1:{port}/0 but refuses this "
                    "REDIS_URL (" in done.stderr), done.stderr
            assert "put its password in REDIS_URL" in done.stderr
            assert "starting redis-server" not in done.stdout and "a-wrong-one" not in (
                done.stdout + done.stderr)
        ok = subprocess.run(["scripts/ensure-redis.sh"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=60, check=False,
                            env={**os.environ, "PYTHON": sys.executable,
                                 "REDIS_URL": f"redis://:the-right-one@127.0.0.1:{port}/0"})
        assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")


def test_make_redis_says_a_database_past_the_servers_last_is_none_of_its(tmp_path):
    """A REDIS_URL database past the server's last (redis://…/20 of a Redis with 16): the
    script said "put its password in REDIS_URL", which there was none to put."""
    port = Redis.from_url(TEST_REDIS_URL).connection_pool.connection_kwargs["port"]
    done = subprocess.run(["scripts/ensure-redis.sh"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHON": sys.executable,
                               "REDIS_URL": f"redis://127.0.0.1:{port}/9999"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == (f"a Redis answers at redis://127.0.0.1:{port}/9999 but has no "
                           "database of the number REDIS_URL names (DB index is out of "
                           "range): set one below its `databases` setting (16 by default, "
                           "numbered from 0)\n"), done.stderr
    assert "starting redis-server" not in done.stdout


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # about Redis only
def test_a_video_page_open_during_an_outage_says_it_as_it_starts_and_ends(
        outage_app, redis_server, clip):
    """The queue banner was the page's, as it was loaded: a run's page polled on through an
    outage saying "waiting for a worker", no word of Redis, and one loaded during it still
    said Redis was down once it was back. The polled panel says it, and of the run."""
    from bs4 import BeautifulSoup

    client = outage_app.test_client()
    vid = upload_ok(client, clip)["id"]
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202  # no worker
    html = client.get(f"/videos/{vid}").get_data(as_text=True)
    token = BeautifulSoup(html, "html.parser").select_one('meta[name="csrf-token"]')["content"]
    hx = {"HX-Request": "true", "X-CSRFToken": token}

    def poll(etag: str | None) -> tuple[str | None, object]:
        resp = client.get(f"/videos/{vid}/panel?poll=1",
                          headers={**hx, **({"If-None-Match": etag} if etag else {})})
        if resp.status_code == 304:
            return etag, None
        assert resp.status_code == 200, resp.status_code
        panel = BeautifulSoup(resp.get_data(as_text=True), "html.parser")
        return resp.headers["ETag"], panel.select_one("#queue-banner")

    etag, banner = poll(None)
    assert banner is None
    redis_server.stop()

    def banner_said():
        nonlocal etag
        etag, banner = poll(etag)
        return banner and " ".join(banner.get_text().split())

    said = wait_for(banner_said, timeout=10, what="the polled panel saying Redis is down")
    assert said == ("The job queue (Redis) is not answering: this run's steps that are "
                    "already running go on; the others wait until it is back. Progress and "
                    "results below are still up to date."), said
    page = BeautifulSoup(client.get(f"/videos/{vid}").get_data(as_text=True), "html.parser")
    assert len(page.select("#queue-banner")) == 1
    assert page.select_one("#progress-panel #queue-banner")

    redis_server.start()

    def banner_gone():  # a fresh panel (not a 304 keeping the old one) without it
        new_etag, banner = poll(etag)
        return new_etag != etag and banner is None

    wait_for(banner_gone, timeout=10, what="the banner gone with the outage")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # about Redis only
def test_a_worker_that_waited_out_an_outage_is_counted_again(outage_app, redis_server,
                                                             worker_proc):
    """Redis restarted empty (nothing kept on disk) had lost the worker's registration, and
    RQ reconnects without writing it again: the worker worked on, counted by nobody.
    /healthz said 0 workers, and the pages "No worker is running" beside its runs."""
    client = outage_app.test_client()
    worker = worker_proc()
    log = Path(worker.log_path)
    wait_for(lambda: "Listening on" in log.read_text(), timeout=60, what="the worker up")
    wait_for(lambda: client.get("/healthz").get_json()["workers"] == 1, timeout=10,
             what="/healthz counting the worker")
    redis_server.stop()
    wait_for(lambda: "the job queue (Redis) does not answer (" in log.read_text(),
             timeout=15, what="the worker saying Redis does not answer")
    redis_server.start()
    wait_for(lambda: client.get("/healthz").get_json()["workers"] == 1, timeout=20,
             what="/healthz counting the worker again after the outage")
    assert worker.poll() is None
    assert "registered again as worker" in log.read_text()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # about Redis only
def test_redis_lost_during_a_workers_upkeep_is_an_outage_like_any_other(settings, redis_server,
                                                                         caplog):
    """RQ's upkeep (cleaning its registries: at a worker's first turn, then every 10 min)
    let the connection error out: RQ logged "found an unhandled exception, quitting..." with
    a traceback, then the worker started over as another (CI saw it, the worker's first turn
    slowed down by load). It is an outage like any other now: no line of its own, the
    worker goes on to its next turn (where RQ waits for Redis and says so), and the upkeep
    runs again once Redis answers."""
    from jobs.worker import build_worker

    worker = build_worker(replace(settings, redis_url=redis_server.url))
    worker.register_birth()
    redis_server.stop()
    with caplog.at_level(logging.DEBUG):
        worker.run_maintenance_tasks()  # raised the ConnectionError
    assert worker.last_cleaned_at is None  # due again at the next turn
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    redis_server.start()
    worker.run_maintenance_tasks()
    assert worker.last_cleaned_at is not None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # about Redis only
def test_a_page_loaded_during_an_outage_stops_saying_it_once_redis_answers(
        outage_app, redis_server):
    """The library (or a video not running) loaded during an outage said "The job queue
    (Redis) is not answering" until it was reloaded, long after Redis was back: its banner
    asks every 5 s whether it still holds ("nothing new" while it does), and is replaced by
    the watch of a page loaded while Redis answers once it does. (In a browser, and the
    way there too: test_ui_outage.py.)"""
    from bs4 import BeautifulSoup

    client = outage_app.test_client()
    redis_server.stop()
    html = client.get("/").get_data(as_text=True)
    assert '<p id="queue-banner" class="banner" hx-get=' in html
    page = BeautifulSoup(html, "html.parser")
    banner = page.select_one("#queue-status[role=status] > #queue-banner")
    assert (banner["hx-get"], banner["hx-trigger"], banner["hx-swap"]) == (
        "/queue-banner?shown=1", "every 5s", "outerHTML")
    nothing_new = client.get("/queue-banner?shown=1")
    assert nothing_new.status_code == 204 and nothing_new.get_data() == b""
    again = BeautifulSoup(client.get("/queue-banner?shown=0").get_data(as_text=True),
                          "html.parser")
    assert again.select_one("#queue-banner[hx-get]").get_text() == banner.get_text()
    redis_server.start()
    # The census behind the answer is at most 2 s old.
    resp = wait_for(lambda: (r := client.get("/queue-banner?shown=1")).status_code == 200 and r,
                    timeout=5, what="an answer saying Redis is back")
    # Attributes apart, as HTML has them (a parser that forgives nothing reads no hx-get).
    assert resp.get_data(as_text=True).startswith('<span id="queue-watch" hx-get=')
    watch = BeautifulSoup(resp.get_data(as_text=True), "html.parser").select_one("#queue-watch")
    assert (watch["hx-get"], watch["hx-trigger"], watch["hx-swap"]) == (
        "/queue-banner?shown=0", "every 10s", "outerHTML")
    assert watch.get_text() == ""
    assert client.get("/queue-banner?shown=0").status_code == 204


_LOST_WHILE_WORKING = """
import logging, os
from dataclasses import replace
from datetime import datetime, timezone
from redis.exceptions import ConnectionError as RedisConnectionError
from jobs import worker as w
from webapp.config import Settings, configure_logging
configure_logging()
settings = Settings.from_env()
old = w.build_worker(settings)  # built while Redis answered; it then went away
old.birth_date = datetime.now(timezone.utc)  # it had been working
if os.environ.get("LOST_BUSY"):  # on a step: RQ's loop left before it said idle again
    old._state = "busy"
def work(**_):  # RQ's loop as it ends on a reset it lets out: its handlers installed
    old._install_signal_handlers()
    raise RedisConnectionError("Error while reading from Redis : (104, 'Connection reset')")
old.work = work
w._work_through_outages(old, replace(settings, redis_url=os.environ["GONE_URL"]), False)
old.connection.delete(old.key)  # a busy one's stop noted there by RQ, in the test's Redis
logging.getLogger("jobs.worker").info("returned")
"""


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_a_worker_waiting_for_a_lost_redis_stops_when_told(tmp_path, busy):
    """RQ's loop lets some connection errors out (a reset while it reads, as Redis stops):
    the worker then waits for Redis, a second at a time. A SIGTERM (honcho's, on Ctrl-C)
    during that wait raised RQ's StopRequested out of the sleep: a traceback and exit 1
    (seen once in the full suite's outage test above). It stops, saying so, with 0.

    Busy: RQ's loop left in the middle of a step (its worker still "busy"); RQ's handler
    then only noted the stop, for after a step that was over, and the worker waited on
    for Redis until honcho's SIGKILL (a second signal, a second later, ended it)."""
    env = {**os.environ, "REDIS_URL": TEST_REDIS_URL,
           "GONE_URL": f"redis://127.0.0.1:{free_port()}/0", "PYTHONPATH": str(PROJECT_ROOT),
           **({"LOST_BUSY": "1"} if busy else {})}
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", _LOST_WHILE_WORKING], cwd=PROJECT_ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        wait_for(lambda: "lost the job queue (Redis)" in log.read_text(), timeout=30,
                 what="the worker waiting for Redis")
        time.sleep(0.3)  # in its second-long sleep
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = log.read_text()
    assert "stopped without unregistering from the job queue" in said, said
    assert "Traceback" not in said and "returned" in said, said
