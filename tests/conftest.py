"""Shared fixtures: a fresh database (SQLite and PostgreSQL), real Redis, app, client, workers."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import make_url, text
from werkzeug.test import Client

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
# SECRET_KEY of the apps and processes the tests start (32 characters, its minimum)
TEST_SECRET_KEY = "vidpipe-tests-secret-key-32chars"
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


@pytest.fixture(scope="session", autouse=True)
def processes_use_the_test_redis() -> Iterator[None]:
    """Every process a test starts works on the test Redis unless the test says otherwise:
    one started without REDIS_URL worked in Settings' default database (a developer's own
    vidpipe's), where a worker's registration outlived it by a minute."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_URL", TEST_REDIS_URL)
        yield


@pytest.fixture(scope="session", autouse=True)
def processes_keep_their_key_out_of_the_project_tree() -> Iterator[None]:
    """Every app and process a test starts has a SECRET_KEY unless the test says otherwise:
    without one, each wrote PROJECT_ROOT/instance/secret_key (the persisted key), in the
    clone the tests run from."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SECRET_KEY", TEST_SECRET_KEY)
        yield


# -- Nothing is written into the project tree ---------------------------------------------
_HYPOTHESIS_HOME: str | None = None
_TREE_BEFORE_COLLECTION: set[str] | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis (schemathesis, and the tests with @given) caches what it reads, each
    module's constants and its Unicode tables, in `.hypothesis/` of the working directory:
    the clone under `make test`, already while the tests are collected. On a clean clone
    the first test using it failed nothing_written_into_the_project_tree. Its caches go in
    a folder of the run instead, removed at its end (HYPOTHESIS_STORAGE_DIRECTORY, when
    set, still says where). Its example database is off in every test that uses it."""
    global _HYPOTHESIS_HOME, _TREE_BEFORE_COLLECTION
    _TREE_BEFORE_COLLECTION = _project_tree()  # what test modules write as they are imported
    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        return
    from hypothesis.configuration import set_hypothesis_home_dir

    _HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="vidpipe-tests-hypothesis-")
    set_hypothesis_home_dir(_HYPOTHESIS_HOME)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _HYPOTHESIS_HOME is not None:
        shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)


# A test writes under tmp_path (or another temporary folder), and so does every process it
# starts: a file or folder that appears in the clone (instance/, a media folder, a log, a
# .db) fails the test during which it appeared. It is left there, for a look.
TREE_NORMAL = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _project_tree() -> set[str]:
    """The files and folders of the project tree, relative, without TREE_NORMAL's (a walk
    of some 300 entries: about 1 ms)."""
    found: set[str] = set()
    folders = [str(PROJECT_ROOT)]
    while folders:
        try:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if entry.name in TREE_NORMAL:
                        continue
                    found.add(os.path.relpath(entry.path, PROJECT_ROOT))
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
        except FileNotFoundError:  # removed meanwhile
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def project_tree_seen() -> Iterator[set[str]]:
    """The project tree as it was when the run started, with what tests have been blamed
    for since; what appears during the last teardowns fails the run."""
    seen = _project_tree()
    if _TREE_BEFORE_COLLECTION is not None:  # a test module's import wrote there
        collected = sorted(seen - _TREE_BEFORE_COLLECTION)
        assert not collected, (f"written into the project tree {PROJECT_ROOT} while the "
                               f"tests were collected (a module's import): {collected}")
    yield seen
    new = sorted(_project_tree() - seen)
    assert not new, f"written into the project tree {PROJECT_ROOT} during the run: {new}"


@pytest.fixture(autouse=True)
def nothing_written_into_the_project_tree(project_tree_seen) -> Iterator[None]:
    """The test (with the fixtures set up for it, module-scoped ones too, and the processes
    it started) wrote nothing into the project tree."""
    yield
    new = sorted(_project_tree() - project_tree_seen)
    project_tree_seen.update(new)  # blamed once, on the test during which it appeared
    assert not new, (f"written into the project tree {PROJECT_ROOT} (write under tmp_path "
                     f"instead; not removed): {new}")


@pytest.fixture(scope="session", autouse=True)
def no_mount_outlives_the_run(no_process_outlives_the_run) -> Iterator[None]:
    """No small disk a test mounted (tests.helpers.small_disk) outlives the run: any left
    is unmounted, and the run fails naming it."""
    from tests.helpers import small_disks

    run = os.environ[RUN_MARK]  # set by no_process_outlives_the_run, which starts first
    yield
    left = small_disks(run)
    for mount in left:
        subprocess.run(["umount", "--lazy", mount], check=False)
    assert not left, f"test mounts outlived the run (unmounted now): {left}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Name the test in the environment before any of its fixtures starts a process."""
    os.environ[f"{RUN_MARK}_TEST"] = item.nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test's report gets the `failure_report()` of its fixtures that have one (the
    multi-host site: its hosts' logs), as the failure's own section: a module's fixture
    printing them at its end shows them only when its last test fails."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        describe = getattr(value, "failure_report", None)
        if callable(describe):
            with suppress(Exception):  # never a second failure of its own
                report.sections.append((f"{name}: at the failure", describe()))


# -- No error answer gives a server's internals away ---------------------------------------
# Every 4xx/5xx answer any test receives, from the Flask test client, Schemathesis (both are
# werkzeug's Client) or a real server (http.client), is scanned for the paths, URLs and
# secrets of the app that answered (of the environment, for real servers) and for the marks
# of an exception's own text. A test that received one fails, whatever it asserted itself.
LEAK_MARKS = ("Traceback (most recent call last)", "[SQL:", "sqlalchemy.", "psycopg",
              "sqlite3.", str(PROJECT_ROOT))
SECRET_MIN = 8  # shorter test secrets ("t") would match any text


def _internals(settings: Settings | None) -> set[str]:
    """What must never be in an error answer: the settings' paths, URLs and secrets."""
    found = {TEST_POSTGRES_URL, *LEAK_MARKS}
    if settings is not None:
        values = (str(settings.media_root), settings.database_url, settings.redis_url,
                  settings.api_token, settings.admin_password, settings.secret_key)
    else:
        values = tuple(os.environ.get(k, "") for k in (
            "MEDIA_ROOT", "DATABASE_URL", "REDIS_URL", "API_TOKEN", "ADMIN_PASSWORD",
            "SECRET_KEY"))
    media_root, database_url = values[0], values[1]
    found.update(v for v in values[2:] if len(v) >= SECRET_MIN)
    if media_root:
        found |= {media_root, str(Path(media_root).resolve())}
    if database_url:
        url = make_url(database_url)
        found |= {database_url, url.render_as_string(hide_password=False)}
        if url.database and url.get_backend_name() == "sqlite":
            found.add(url.database)
        found.update(o.rsplit("=", 1)[-1] for o in url.query.get("options", "").split()
                     if "search_path" in o)  # the test's private PostgreSQL schema
    return {v for v in found if v}


def _app_settings(application) -> Settings | None:
    """The Settings of a Flask app (unwrapped from the WSGI layers in front of it)."""
    app = getattr(application, "__self__", application)  # app.wsgi_app, a bound method
    extensions = getattr(app, "extensions", None)
    handles = extensions.get("vidpipe") if isinstance(extensions, dict) else None
    return getattr(handles, "settings", None)


@pytest.fixture(autouse=True)
def error_answers_leak_nothing(monkeypatch) -> Iterator[None]:
    leaks: list[str] = []

    def scan(where: str, status: int, body: bytes, settings: Settings | None) -> None:
        text = body.decode("utf-8", errors="replace")
        for found in _internals(settings):
            at = text.find(found)
            if at >= 0:
                leaks.append(f"{where} answered {status} with {found!r}: "
                             f"{text[max(0, at - 150):at + 150]!r}")

    client_open = Client.open

    def open_and_scan(self, *args, **kwargs):
        resp = client_open(self, *args, **kwargs)
        if resp.status_code >= 400 and not resp.direct_passthrough:
            scan(f"{resp.request.method} {resp.request.path}", resp.status_code,
                 resp.get_data(), _app_settings(self.application))
        return resp

    response_read = http.client.HTTPResponse.read

    def read_and_scan(self, amt=None):
        data = response_read(self, amt)
        if self.status >= 400 and data:
            # Scanned as a whole so far: a body read in parts is still seen whole.
            self._read_for_scan = getattr(self, "_read_for_scan", b"") + data
            scan("a server", self.status, self._read_for_scan, None)
        return data

    monkeypatch.setattr(Client, "open", open_and_scan)
    monkeypatch.setattr(http.client.HTTPResponse, "read", read_and_scan)
    yield
    assert not leaks, "error answers gave internals away:\n" + "\n".join(dict.fromkeys(leaks))


# -- No Redis key outlives the test ------------------------------------------------------
# A process started without the test's REDIS_URL works in Settings' default database (a
# developer's own vidpipe's); a worker that ends leaves its registration for a minute.


def _redis_keys(conn: Redis) -> set[bytes] | None:
    """Every key of conn's database; None when no Redis answers there (nothing to leave)."""
    try:
        return set(conn.scan_iter(count=1000))
    except RedisError:
        return None


def _registrations_of(conn: Redis, pids: set[int]) -> list[bytes]:
    """The keys of RQ workers of this host whose process is one of pids."""
    host = socket.gethostname().encode()
    return [key for key in conn.scan_iter(match="rq:worker:*", count=500, _type="hash")
            if conn.hget(key, "hostname") == host
            and int(conn.hget(key, "pid") or 0) in pids]


@pytest.fixture(autouse=True)
def no_redis_key_outlives_the_test(monkeypatch) -> Iterator[None]:
    """No key in Redis's default database appears during a test, and no worker the test
    started (its process a child of this one) is still registered at its end: both are
    deleted, and the test fails naming them."""
    started: set[int] = set()
    popen_init = subprocess.Popen.__init__

    def init_and_record(self, *args, **kwargs):
        popen_init(self, *args, **kwargs)
        started.add(self.pid)

    monkeypatch.setattr(subprocess.Popen, "__init__", init_and_record)
    default = Redis.from_url(Settings.redis_url)
    test = Redis.from_url(TEST_REDIS_URL)
    apart = default.connection_pool.connection_kwargs != test.connection_pool.connection_kwargs
    before = _redis_keys(default) if apart else None
    yield
    after = _redis_keys(default) if before is not None else None
    left = {"the default database": sorted(after - before) if after is not None else []}
    left["the test database"] = _registrations_of(test, started)
    for conn, keys in ((default, left["the default database"]), (test, left["the test database"])):
        if keys:
            conn.delete(*keys)
            conn.srem("rq:workers", *keys)
    default.close()
    test.close()
    assert not any(left.values()), f"Redis keys outlived the test (deleted now): {left}"


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
        # Everything a test writes (search_entries and publications go with videos); the
        # step costs too, or a pipeline run on PostgreSQL teaches the next test's "new
        # installation" what steps cost.
        conn.execute(text("TRUNCATE videos, processing_tasks, subtasks, step_costs, webhook_events "
                          "CASCADE"))
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
    settings.media_root.mkdir(parents=True)  # as start-up makes it (webapp/startup.py)
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


def start_worker(env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 module: str = "jobs.worker") -> subprocess.Popen:
    """A long-running worker process (`args` added to its command; `module` run in place of
    jobs.worker, one that wraps it) in its own session; the caller stops it.

    Its log goes to a file (`proc.log_path`): an unread pipe would fill and block it.
    """
    with tempfile.NamedTemporaryFile("w", prefix="worker-", suffix=".log",
                                     delete=False) as log:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT,
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
