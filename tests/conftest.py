"""Shared fixtures: a fresh database (SQLite and PostgreSQL), real Redis, app, client, workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from redis import Redis
from sqlalchemy import text

from tests import procs
from tests.cleanup import purge_queue
from webapp import create_app
from webapp.config import PROJECT_ROOT, Settings
from webapp.db import dispose, get_engine, session_factory

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgresql")
# In the environment of every process the tests start (children inherit it): the run's id,
# and under RUN_MARK_TEST the test during which it started.
RUN_MARK = "VIDPIPE_TEST_RUN"
EXIT_GRACE = 10.0  # seconds for processes stopped by the last teardowns to finish exiting


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_run() -> Iterator[None]:
    """No worker, reconciler, gunicorn, redis-server, ffmpeg... started by a test survives
    the run: survivors are killed, and the run fails naming them."""
    run = uuid.uuid4().hex
    os.environ[RUN_MARK] = run
    yield
    del os.environ[RUN_MARK]
    deadline = time.monotonic() + EXIT_GRACE
    while (left := procs.marked(RUN_MARK, run)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in left:
        procs.kill(proc.pid)
    assert not left, "processes outlived the test run (killed now):\n" + "\n".join(
        map(str, left))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Name the test in the environment before any of its fixtures starts a process."""
    os.environ[f"{RUN_MARK}_TEST"] = item.nodeid


def migrate(url: str) -> None:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


@pytest.fixture(scope="session")
def redis_conn() -> Redis:
    conn = Redis.from_url(TEST_REDIS_URL)
    conn.ping()  # a missing Redis is a failure, never a skip
    return conn  # not flushed: every test has its own queue, and test runs may overlap


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("db") / "template.db"
    migrate(f"sqlite:///{path}")
    get_engine(f"sqlite:///{path}").dispose()
    return path


@contextmanager
def private_schema(prefix: str = "vidpipe_test") -> Iterator[str]:
    """A PostgreSQL schema of its own, dropped on exit: the URL whose search_path is it."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = get_engine(TEST_POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in TEST_POSTGRES_URL else "?"
    url = f"{TEST_POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        dispose(url)
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(scope="session")
def postgres_url():
    """A private schema for this test session, so parallel runs never share tables."""
    with private_schema() as url:
        migrate(url)
        yield url


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path) -> str:
    """A migrated, empty database on each backend in turn."""
    if request.param == "sqlite":
        path = tmp_path / "vidpipe.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    with get_engine(url).begin() as conn:
        conn.execute(text("TRUNCATE videos, processing_tasks, subtasks CASCADE"))
    return url


@pytest.fixture
def settings(database_url, tmp_path, redis_conn, monkeypatch) -> Settings:
    """Settings exported to the environment too, so worker processes see the same ones."""
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "MEDIA_ROOT": str(tmp_path / "media"),
        "QUEUE_NAME": f"test-{uuid.uuid4().hex[:12]}",
        "PROGRESS_INTERVAL": "0.2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    yield settings
    # No Redis key of the test outlives it: its queue's, and its tasks' jobs and results.
    purge_queue(redis_conn, settings.queue_name, _task_ids(settings.database_url))


def _task_ids(url: str) -> list[str]:
    try:
        with get_engine(url).connect() as conn:
            return list(conn.execute(text("SELECT id FROM processing_tasks")).scalars())
    except Exception:  # a test that broke its database still gets its queue's keys purged
        return []


@pytest.fixture
def app(settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def db_session(settings):
    with session_factory(settings.database_url)() as session:
        yield session


def run_worker(burst: bool = True, timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    """Run a real RQ worker process (`python -m jobs.worker --burst`) until the queue is empty."""
    cmd = [sys.executable, "-m", "jobs.worker", "--burst"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False, **popen)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def start_worker(env: dict[str, str] | None = None) -> subprocess.Popen:
    """A long-running worker process in its own session; the caller stops it.

    Its log goes to a file (`proc.log_path`): an unread pipe would fill and block it.
    """
    with tempfile.NamedTemporaryFile("w", prefix="worker-", suffix=".log",
                                     delete=False) as log:
        proc = subprocess.Popen([sys.executable, "-m", "jobs.worker"], cwd=PROJECT_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    proc.log_path = log.name
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    """Stop a worker started by start_worker, and whatever it left in its session (a horse
    still working after a SIGKILL, its ffmpeg, its reconciler); print its log's tail
    (pytest shows it on failure)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    run = os.environ.get(RUN_MARK)

    def survivors() -> list[int]:  # the run's mark: never a stranger that reused the pid
        return [pid for pid in procs.in_session(proc.pid)
                if run is not None and procs.environ(pid).get(RUN_MARK) == run]

    deadline = time.monotonic() + 10
    while (left := survivors()) and time.monotonic() < deadline:
        for pid in left:
            procs.kill(pid)
        time.sleep(0.05)
    log = Path(proc.log_path)
    if log.exists():
        print("worker log (tail):\n" + log.read_text(errors="replace")[-3000:])
        log.unlink()


@pytest.fixture
def worker(settings):
    """One real RQ worker process serving this test's queue (settings are in its env)."""
    proc = start_worker()
    yield proc
    stop_worker(proc)
