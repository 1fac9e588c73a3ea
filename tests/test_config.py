"""Number settings: a value that is not a number, or out of its range, stops the web process
and the worker at start-up with one sentence naming the setting (README, "Configuration"),
not with a traceback, and not later at the first job that reads it. So does a secret too
short to withstand guessing (README, "Security")."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command as alembic_command
from alembic.config import Config
from sqlalchemy import text

from tests.cleanup import purge_queue
from tests.helpers import free_port, silent_server
from webapp.config import MAKE_A_SECRET, PROJECT_ROOT, ConfigError, Settings
from webapp.db import CONNECT_TIMEOUT, dispose, get_engine

BAD = [
    ("TRANSCODE_NICE", "20", "a whole number from 0 to 19"),
    ("WEIGHT_TRANSCODE", "0", "a number above 0"),
    ("WEIGHT_TRANSCRIBE", "nan", "a number above 0"),
    ("PROBE_TIMEOUT", "abc", "a number above 0"),
    ("TRUSTED_PROXIES", "-1", "a whole number of at least 0"),
    ("MAX_UPLOAD_BYTES", "2G", "a whole number above 0"),
    ("STEP_RETRIES", "1.5", "a whole number of at least 0"),
    ("HEARTBEAT_INTERVAL", "0", "a whole number above 0"),
    ("RECONCILE_INTERVAL", "inf", "a number of at least 0"),
]


@pytest.fixture(autouse=True)
def test_queue(monkeypatch, redis_conn) -> Iterator[str]:
    """The workers these tests start (they inherit the environment) serve a queue of their
    own, whose keys go at the end: a worker's registration outlives it by a minute."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("QUEUE_NAME", name)
    yield name
    purge_queue(redis_conn, name)


@pytest.mark.parametrize(("name", "value", "rule"), BAD)
def test_a_bad_number_is_a_sentence_naming_the_setting(monkeypatch, name, value, rule):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value) == f"{name} must be {rule}; got {value!r}."


def test_good_numbers_are_read(monkeypatch):
    for name, value in {"TRANSCODE_NICE": "0", "WEIGHT_TRANSCODE": "2.5", "PROBE_TIMEOUT": "3",
                        "STEP_RETRIES": " 0 ", "PROGRESS_INTERVAL": "0"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert (settings.transcode_nice, settings.weights["transcode"], settings.probe_timeout,
            settings.step_retries, settings.progress_interval) == (0, 2.5, 3.0, 0, 0.0)


def _start(command: list[str], tmp_path: Path, env: dict[str, str]):
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, **env,
                                            "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})


@pytest.mark.parametrize(("name", "value", "says"), [
    *((name, value, f"{name} must be {rule}; got {value!r}.") for name, value, rule in (
        BAD[0], BAD[3], ("WEB_WORKERS", "abc", "a whole number above 0"),
        ("WEB_THREADS", "0", "a whole number above 0"))),
    ("CORS_ORIGINS", "*", "CORS_ORIGINS: '*' is not an origin"),
    ("ALLOWED_HOSTS", "videos.example.com:443",
     "ALLOWED_HOSTS: 'videos.example.com:443' has a port"),
])
def test_the_web_master_stops_with_the_sentence_before_it_binds(tmp_path, name, value, says):
    done = _start([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
                   "127.0.0.1:0", "wsgi:app"], tmp_path, {name: value})
    assert done.returncode != 0
    assert f"vidpipe: {says}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Listening at" not in done.stderr


@pytest.mark.parametrize(("name", "value", "rule"), [BAD[1], BAD[5]])
def test_the_worker_stops_with_the_sentence(tmp_path, name, value, rule):
    done = _start([sys.executable, "-m", "jobs.worker", "--burst"], tmp_path, {name: value})
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"vidpipe: {name} must be {rule}; got {value!r}." in done.stderr
    assert "Traceback" not in done.stderr



def test_the_web_process_opens_no_control_socket_shared_with_other_gunicorns(tmp_path):
    """gunicorn's control socket (for `gunicornc`) defaults to one path per user, so two
    services (or two vidpipes) took it from each other on every worker fork, and the first to
    stop deleted the other's: `gunicornc -c "show stats"` answered for another service."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.update(HOME=str(home), WEB_WORKERS="1", DATABASE_URL=_migrated(tmp_path),
               MEDIA_ROOT=str(tmp_path / "media"))
    log = tmp_path / "web.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                                 "--bind", "127.0.0.1:0", "wsgi:app"], cwd=PROJECT_ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while "Booting worker" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        time.sleep(1)  # the control socket used to come up just after the first worker
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert "Booting worker" in text, text
    assert "Control socket" not in text, text
    assert not (home / ".gunicorn").exists()


# A secret one character short of its minimum: the sentence names it, its length and the
# minimum, and how to make a good one.
SHORT_SECRETS = [
    ("API_TOKEN", "x" * 15, 16),
    ("WORKER_TOKEN", "x" * 15, 16),
    ("ADMIN_PASSWORD", "x" * 7, 8),
    ("SECRET_KEY", "x" * 31, 32),  # was any length, "k" too: the cookie's key, guessed offline
]


def _short_secret_sentence(name: str, value: str, minimum: int) -> str:
    return (f"{name} is {len(value)} characters long, too short to withstand guessing: it "
            f"must have at least {minimum}. Make a good one with {MAKE_A_SECRET} and set "
            "the same on every host that uses it.")


def test_the_command_the_short_secret_sentence_gives_works_on_a_plain_debian():
    """Debian has no `python` in /usr/bin, only `python3`: the command said must run there
    and make a secret long enough for every one of them."""
    made = subprocess.run(MAKE_A_SECRET, shell=True, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, check=True).stdout.strip()
    assert len(made) >= max(minimum for _, _, minimum in SHORT_SECRETS), made


@pytest.mark.parametrize(("name", "value", "minimum"), SHORT_SECRETS)
def test_a_short_secret_stops_start_up_with_a_sentence(monkeypatch, name, value, minimum):
    monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    with pytest.raises(ConfigError) as caught:
        settings.validate()
    assert str(caught.value) == _short_secret_sentence(name, value, minimum)
    monkeypatch.setenv(name, value + "y")  # the minimum itself is enough
    Settings.from_env().validate()


def test_log_level_is_one_of_four_and_rq_speaks_up_only_at_debug(monkeypatch):
    from webapp.config import rq_log_level

    monkeypatch.setenv("LOG_LEVEL", "verbose")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env().validate()
    assert str(caught.value) == ("LOG_LEVEL must be DEBUG, INFO (the default), WARNING or "
                                 "ERROR; got 'VERBOSE'.")
    for level, rq_level in (("debug", "DEBUG"), ("INFO", "WARNING"), ("", "WARNING"),
                            ("warning", "WARNING"), ("error", "ERROR")):
        monkeypatch.setenv("LOG_LEVEL", level)
        Settings.from_env().validate()
        assert rq_log_level() == rq_level, level


def test_at_debug_a_worker_writes_rqs_lines_but_not_redis_pys_handshakes(tmp_path):
    """redis-py wrote "Failed to enable maintenance notifications: unknown subcommand
    'MAINT_NOTIFICATIONS'" at DEBUG for every new connection, read as a fault."""
    done = subprocess.run(WORKER, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60, check=False,
                          env={**os.environ, "DATABASE_URL": _migrated(tmp_path),
                               "MEDIA_ROOT": str(tmp_path / "media"), "LOG_LEVEL": "debug"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert " DEBUG rq.worker: " in done.stderr, done.stderr
    assert " redis.connection: " not in done.stderr, done.stderr


def test_unset_secrets_are_not_too_short(monkeypatch):
    for name, _, _ in SHORT_SECRETS:
        monkeypatch.delenv(name, raising=False)
    Settings.from_env().validate()  # unset leaves its part open (or closed): not weak


def test_the_web_master_stops_at_a_short_secret_before_it_binds(tmp_path):
    done = _start([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
                   "127.0.0.1:0", "wsgi:app"], tmp_path, {"API_TOKEN": "secret"})
    assert done.returncode != 0
    says = _short_secret_sentence("API_TOKEN", "secret", 16)
    assert f"vidpipe: {says}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Listening at" not in done.stderr


def test_the_worker_stops_at_a_short_secret(tmp_path):
    done = _start([sys.executable, "-m", "jobs.worker", "--burst"], tmp_path,
                  {"WORKER_TOKEN": "secret"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"vidpipe: {_short_secret_sentence('WORKER_TOKEN', 'secret', 16)}" in done.stderr
    assert "Traceback" not in done.stderr


# DATABASE_URL typos: each stops start-up (and `make migrate`) with one sentence; the
# password stays out of it.
BAD_DATABASE_URLS = [
    ("postgres://vidpipe:pw@127.0.0.1/vidpipe",
     "DATABASE_URL must begin postgresql+psycopg:// (SQLAlchemy does not know postgres://); "
     "got 'postgres://vidpipe:***@127.0.0.1/vidpipe'."),
    ("instance/vidpipe.db",
     "DATABASE_URL must be a database URL such as postgresql+psycopg://user:password@host/"
     "vidpipe or sqlite:////var/lib/vidpipe/vidpipe.db; got 'instance/vidpipe.db'."),
    ("mysql://vidpipe:pw@127.0.0.1/vidpipe",
     "DATABASE_URL must name a PostgreSQL or SQLite database, such as postgresql+psycopg://"
     "user:password@host/vidpipe or sqlite:////var/lib/vidpipe/vidpipe.db; got "
     "'mysql://vidpipe:***@127.0.0.1/vidpipe'."),
]


@pytest.mark.parametrize(("url", "says"), BAD_DATABASE_URLS)
def test_a_database_url_that_cannot_work_is_a_sentence(url, says):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(database_url=url).validate()
    assert str(caught.value) == says


def test_database_urls_that_work_pass():
    for url in ("sqlite:////tmp/x.db", "postgresql+psycopg://u:p@h/db?options=-csearch_path%3Ds",
                "postgresql+psycopg://u@h:5433/db"):
        Settings.from_env(database_url=url).validate()


@pytest.mark.parametrize(("url", "says"), BAD_DATABASE_URLS[:2])
def test_the_web_worker_and_migrate_stop_at_a_bad_database_url(url, says):
    """The web master stops before it binds, instead of each of its workers failing to boot
    with a traceback; the worker does not start taking jobs it would fail; `make migrate`
    says it in alembic's one FAILED line (it said it twice: logged, then printed)."""
    env = {**os.environ, "DATABASE_URL": url}
    for command in ([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
                     "127.0.0.1:0", "wsgi:app"],
                    [sys.executable, "-m", "jobs.worker", "--burst"],
                    [str(Path(sys.executable).parent / "alembic"), "upgrade", "head"]):
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=60, check=False, env=env)
        said = done.stdout + done.stderr  # alembic prints its FAILED line to stdout
        assert done.returncode != 0, (command, said[-2000:])
        assert said.count(f"vidpipe: {says}") == 1, (command, said[-2000:])
        assert "Traceback" not in said and "Listening at" not in said, (command, said[-2000:])
        assert ":pw@" not in said


def test_a_redis_url_that_cannot_work_stops_start_up_with_a_sentence():
    """REDIS_URL without its scheme (or another's): the web process and the worker stopped
    with redis-py's ValueError and a traceback."""
    says = ("REDIS_URL must be a Redis URL such as redis://127.0.0.1:6379/0 (redis://:PASSWORD"
            "@host:port/db with a password, rediss:// over TLS, unix:///path/to/redis.sock): ")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(redis_url="http://:pw@127.0.0.1:6379/0").validate()
    assert str(caught.value) == (says + "Redis URL must specify one of the following schemes "
                                 "(redis://, rediss://, unix://); got 'http://:***@127.0.0.1:"
                                 "6379/0'.")
    for url in ("redis://127.0.0.1:6379/0", "rediss://:pw@h:6380/1", "unix:///run/redis.sock"):
        Settings.from_env(redis_url=url).validate()
    done = subprocess.run([sys.executable, "-m", "jobs.worker", "--burst"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "REDIS_URL": "127.0.0.1:6379"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"vidpipe: {says}" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_redis_url_whose_database_is_no_number_stops_start_up():
    """redis-py passes over a database it cannot read (`/1O`: a letter O) and connects to
    database 0: the web process and the worker started on another queue than the one set."""
    for url in ("redis://127.0.0.1:6379/1O", "redis://:pw@127.0.0.1:6379/abc",
                "rediss://h:6380/-1"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(redis_url=url).validate()
        shown = url.replace(":pw@", ":***@")
        assert str(caught.value) == ("REDIS_URL's database (after the port) must be a whole "
                                     "number of at least 0, such as redis://127.0.0.1:6379/0; "
                                     f"got {shown!r}.")
    for url in ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/", "redis://h:6379/15",
                "redis://h:6379/?db=3", "unix:///run/redis.sock?db=2"):
        Settings.from_env(redis_url=url).validate()
    done = subprocess.run([sys.executable, "-m", "jobs.worker", "--burst"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "REDIS_URL": "redis://127.0.0.1:6379/1O"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert "vidpipe: REDIS_URL's database" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Listening" not in done.stderr, done.stderr


def test_migrate_says_which_database_does_not_answer():
    url = f"postgresql+psycopg://vidpipe:pw@127.0.0.1:{free_port()}/vidpipe"
    done = subprocess.run([str(Path(sys.executable).parent / "alembic"), "upgrade", "head"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "DATABASE_URL": url})
    said = done.stdout + done.stderr  # alembic prints its FAILED line to stdout
    assert done.returncode != 0, said[-2000:]
    assert ("FAILED: vidpipe: could not open the database at "
            f"{url.replace(':pw@', ':***@')}: connection failed" in said), said
    assert said.count("could not open the database") == 1, said  # not logged, then printed
    assert "Traceback" not in said


# -- what the web process and the worker check before they start (webapp/startup.py) ------

WEB = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0",
       "wsgi:app"]
WORKER = [sys.executable, "-m", "jobs.worker", "--burst"]


def _migrated(tmp_path: Path, revision: str = "head") -> str:
    url = f"sqlite:///{tmp_path / 'vidpipe.db'}"
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logger"] = False
    alembic_command.upgrade(cfg, revision)
    dispose(url)
    return url


def _refused(command_line: list[str], env: dict[str, str], says: str) -> None:
    done = subprocess.run(command_line, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, **env})
    assert done.returncode != 0, done.stderr[-2000:]
    assert f"vidpipe: {says}" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Listening at" not in done.stderr, (
        done.stderr[-2000:])
    assert "Listening on" not in done.stderr, done.stderr[-2000:]  # the worker took no job


def test_a_database_behind_on_migrations_stops_the_web_and_the_worker(tmp_path):
    """A `git pull` without `make migrate` (or a worker host upgraded before the web host):
    every request and step failed on a missing table or column, each step using up its
    retries. Now neither starts, and the sentence says what to run."""
    url = _migrated(tmp_path, "0014")
    env = {"DATABASE_URL": url, "MEDIA_ROOT": str(tmp_path / "media")}
    says = (f"the database at {url} is at migration 0014, but this vidpipe needs 0015: run "
            "`make migrate` (on the web host, when workers run elsewhere), then start this "
            "again.")
    _refused(WEB, env, says)
    _refused(WORKER, env, says)


def test_a_database_never_migrated_or_migrated_by_a_newer_vidpipe_stops_start_up(tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    _refused(WORKER, {"DATABASE_URL": empty, "MEDIA_ROOT": str(tmp_path / "media")},
             f"the database at {empty} has no vidpipe tables yet: run `make migrate` "
             "(alembic upgrade head) first.")
    assert not (tmp_path / "empty.db").exists()  # an empty database there hid the typo
    url = _migrated(tmp_path)
    with get_engine(url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    dispose(url)
    _refused(WEB, {"DATABASE_URL": url, "MEDIA_ROOT": str(tmp_path / "media")},
             f"the database at {url} is at migration 0099, which this vidpipe does not know "
             "(it needs 0015): a newer vidpipe migrated it; run that version here too.")


def test_a_media_root_or_sqlite_folder_that_cannot_be_written_stops_start_up(tmp_path):
    """Uploads were 500s with a traceback (and /healthz "ok"), every page was a 500 for a
    SQLite file whose folder could not be written."""
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    url = _migrated(tmp_path)
    media = not_a_folder / "media"
    says = (f"MEDIA_ROOT {media} cannot be written by this user (Not a directory): uploads "
            "and outputs go there; make it writable, or set MEDIA_ROOT to a folder that is.")
    for command_line in (WEB, WORKER):
        _refused(command_line, {"DATABASE_URL": url, "MEDIA_ROOT": str(media)}, says)
    _refused(WEB, {"DATABASE_URL": f"sqlite:///{not_a_folder / 'x.db'}",
                   "MEDIA_ROOT": str(tmp_path / "media")},
             f"the SQLite database {not_a_folder / 'x.db'} cannot be opened (")


def test_a_sqlite_folder_that_does_not_exist_stops_everything_and_is_not_made(tmp_path):
    """A typo in DATABASE_URL's path (`/var/lib/vidpip/vidpipe.db`): `make migrate` made the
    folder and a new database there, and the service ran on it, empty, beside the real one;
    the web process and the worker made the folder and an empty file before refusing."""
    folder = tmp_path / "missing" / "sub"
    url = f"sqlite:///{folder / 'x.db'}"
    says = (f"DATABASE_URL's SQLite database {folder / 'x.db'} is in a folder that does not "
            f"exist ({folder}): make the folder, or correct the path in DATABASE_URL.")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(database_url=url).validate()
    assert str(caught.value) == says
    env = {"DATABASE_URL": url, "MEDIA_ROOT": str(tmp_path / "media")}
    _refused(WEB, env, says)
    _refused(WORKER, env, says)
    done = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "webapp",
                           "reindex"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, **env})
    assert (done.returncode, done.stderr.strip()) == (1, f"Error: vidpipe: {says}")
    for migration in (["upgrade", "head"], ["downgrade", "base"], ["current"]):
        done = subprocess.run([str(Path(sys.executable).parent / "alembic"), *migration],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                              check=False, env={**os.environ, **env})
        said = done.stdout + done.stderr  # alembic prints its FAILED line to stdout
        assert done.returncode != 0, (migration, said[-2000:])
        assert said.count(f"FAILED: vidpipe: {says}") == 1, (migration, said[-2000:])
        assert "Traceback" not in said, (migration, said[-2000:])
    assert not (tmp_path / "missing").exists()


def test_a_media_root_on_a_full_disk_is_said_to_be_full(tmp_path):
    """A disk so full that no file can be made (ext4 at 100 %, here a tmpfs out of inodes)
    was told to be made writable."""
    from tests.helpers import small_disk

    url = _migrated(tmp_path)
    with small_disk(tmp_path / "disk", 256 * 1024, inodes=8) as disk:
        with contextlib.suppress(OSError):
            for n in range(100):
                (disk / f"filler-{n}").touch()
        media = disk
        says = (f"MEDIA_ROOT {media} is on a disk that is full (No space left on device): "
                "uploads and outputs go there; free space on it, or set MEDIA_ROOT to a "
                "folder on a disk with room.")
        for command_line in (WEB, WORKER):
            _refused(command_line, {"DATABASE_URL": url, "MEDIA_ROOT": str(media)}, says)


def test_a_postgresql_server_not_answering_yet_is_a_warning_not_a_refusal(tmp_path):
    """It may be starting too (a reboot): the worker starts, and waits for it in its steps."""
    url = f"postgresql+psycopg://vidpipe:pw@127.0.0.1:{free_port()}/vidpipe"
    done = subprocess.run(WORKER, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "DATABASE_URL": url,
                                            "MEDIA_ROOT": str(tmp_path / "media")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (f"vidpipe: the database at {url.replace(':pw@', ':***@')} does not answer now ("
            in done.stderr), done.stderr
    assert "; starting anyway" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("change", "says"), [
    ({"database": "vidpipe_no_such_database"},
     "has no such database: create it (createdb), or correct the database's name in it ("),
    ({"username": "vidpipe_no_such_role", "password": "pw"},
     "has no such user: create it (createuser), or correct the user in it ("),
])
def test_a_postgresql_server_that_refuses_database_url_stops_start_up(tmp_path, change, says):
    """The server answered "database … does not exist" (or no such role): the worker said
    the database "does not answer now", started anyway, and failed every step it took."""
    from sqlalchemy.engine import make_url

    from tests.conftest import TEST_POSTGRES_URL

    url = make_url(TEST_POSTGRES_URL).set(**change).render_as_string(hide_password=False)
    shown = url.replace(":pw@", ":***@")
    env = {"DATABASE_URL": url, "MEDIA_ROOT": str(tmp_path / "media")}
    for command_line in (WORKER, WEB):
        _refused(command_line, env, f"the PostgreSQL server of DATABASE_URL {shown} answers, "
                                    f"but {says}")


def test_the_web_process_says_at_start_that_redis_does_not_answer_and_starts(tmp_path):
    """The worker stops on it; the web process started without a word, and the first sign
    was a 503 to a trigger."""
    port = free_port()
    log = tmp_path / "web.log"
    with log.open("w") as out:
        proc = subprocess.Popen(WEB, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "DATABASE_URL": _migrated(tmp_path),
                                     "MEDIA_ROOT": str(tmp_path / "media"), "WEB_WORKERS": "1",
                                     "REDIS_URL": f"redis://:a-secret@127.0.0.1:{port}/0"})
    try:
        deadline = time.monotonic() + 60
        while "Booting worker" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)
    said = log.read_text()
    assert (f"[WARNING] vidpipe: the job queue (Redis) at redis://127.0.0.1:{port}/0 does not "
            f"answer (Error 111 connecting to 127.0.0.1:{port}. Connection refused.): start it "
            "(`make redis` starts a local one) or set REDIS_URL to where it runs, with its "
            "password if it has one; starting anyway (runs cannot start, and /healthz says "
            "so, until it answers)" in said), said
    assert "Listening at" in said and "a-secret" not in said and "Traceback" not in said


def test_a_redis_database_past_the_servers_last_is_said_as_such(tmp_path):
    """REDIS_URL naming database 9999 of a Redis with 16: the worker said the job queue
    "does not answer" and to start it (`make redis`), though it answered."""
    from tests.conftest import TEST_REDIS_URL

    url = TEST_REDIS_URL.rsplit("/", 1)[0] + "/9999"
    _refused(WORKER, {"DATABASE_URL": _migrated(tmp_path), "REDIS_URL": url,
                      "MEDIA_ROOT": str(tmp_path / "media")},
             f"the job queue (Redis) at {url} has no database of the number REDIS_URL names "
             "(DB index is out of range): set one below the server's `databases` setting (16 "
             "by default, numbered from 0); not starting")


def test_reindex_says_the_database_is_not_migrated(tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    done = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "webapp",
                           "reindex"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60, check=False,
                          env={**os.environ, "DATABASE_URL": empty,
                               "MEDIA_ROOT": str(tmp_path / "media")})
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip() == (f"Error: vidpipe: the database at {empty} has no vidpipe "
                                   "tables yet: run `make migrate` (alembic upgrade head) "
                                   "first."), done.stderr
    assert not (tmp_path / "empty.db").exists()


def test_reindex_with_a_bad_setting_says_only_the_sentence(tmp_path):
    """`flask --app webapp reindex` printed create_app's traceback, the sentence only at its
    end (exit status 1 too, but the reader had to find the line that mattered)."""
    done = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "webapp",
                           "reindex"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60, check=False,
                          env={**os.environ, "DATABASE_URL": _migrated(tmp_path),
                               "MEDIA_ROOT": str(tmp_path / "media"),
                               "CHINESE_SCRIPT": "cyrillic"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip() == ("Error: vidpipe: CHINESE_SCRIPT must be 'simplified' (the "
                                   "default) or 'traditional'; got 'cyrillic'."), done.stderr


@pytest.mark.parametrize("command", [["--help"], ["routes"], ["shell"]])
def test_any_flask_command_with_a_bad_setting_says_only_the_sentence(tmp_path, command):
    """`flask --app webapp --help` printed create_app's traceback (Flask shows one for any
    error while it lists an app's commands), then its help, with exit status 0."""
    done = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "webapp",
                           *command], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL,
                          env={**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
                               "MEDIA_ROOT": str(tmp_path / "media"), "LOG_LEVEL": "loud"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip() == ("Error: vidpipe: LOG_LEVEL must be DEBUG, INFO (the "
                                   "default), WARNING or ERROR; got 'LOUD'."), done.stderr
    assert done.stdout == ""


def test_a_port_in_use_is_one_sentence_at_once(tmp_path):
    """`make run` twice, or another program on PORT: gunicorn said "Connection in use" five
    times over five seconds and then "Can't connect"; now one sentence says what to do."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                               "wsgi:app"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=60, check=False,
                              env={**os.environ, "PORT": str(port), "HOST": "127.0.0.1",
                                   "DATABASE_URL": _migrated(tmp_path),
                                   "MEDIA_ROOT": str(tmp_path / "media")})
    assert done.returncode != 0
    assert (f"vidpipe: 127.0.0.1:{port} is in use already (another vidpipe, `make run` "
            "started twice, or another program): stop that, or set PORT to a free port."
            in done.stderr), done.stderr
    assert "Connection in use" not in done.stderr and "Listening at" not in done.stderr
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(("env", "says"), [
    ({"PORT": "99999"}, "PORT must be a whole number from 1 to 65535; got '99999'."),
    ({"PORT": "0"}, "PORT must be a whole number from 1 to 65535; got '0'."),
    ({"PORT": "-1"}, "PORT must be a whole number from 1 to 65535; got '-1'."),
    ({"HOST": "192.0.2.55", "ALLOW_INSECURE": "1", "ALLOWED_HOSTS": "videos.example.com"},
     "cannot listen on 192.0.2.55:"),
])
def test_a_port_or_host_gunicorn_cannot_listen_on_is_a_sentence(tmp_path, env, says):
    """PORT=99999 was a traceback (OverflowError), a HOST that is not this machine's five
    retries over five seconds and "Can't connect". PORT=0 listened on a port the kernel
    picked, named only in gunicorn's "Listening at" line."""
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                           "wsgi:app"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60, check=False,
                          env={**os.environ, "DATABASE_URL": _migrated(tmp_path),
                               "MEDIA_ROOT": str(tmp_path / "media"),
                               "PORT": str(free_port()), **env})
    assert done.returncode != 0
    assert f"vidpipe: {says}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Listening at" not in done.stderr


def test_a_worker_name_too_long_to_record_stops_start_up(monkeypatch, tmp_path):
    """WORKER_NAME was cut to 200 characters without a word: the steps then named a worker
    nobody had configured."""
    monkeypatch.setenv("WORKER_NAME", "w" * 201)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value) == ("WORKER_NAME must be at most 200 characters (it is recorded "
                                 "with each step); got 201.")
    done = _start(WORKER, tmp_path, {"WORKER_NAME": "w" * 201})
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"vidpipe: {caught.value}" in done.stderr and "Traceback" not in done.stderr
    monkeypatch.setenv("WORKER_NAME", " " + "w" * 200 + " ")
    assert Settings.from_env().worker_name == "w" * 200


@pytest.mark.parametrize("value", ["ture", "2", "y es"])
def test_a_yes_no_setting_that_is_neither_is_a_sentence(monkeypatch, value):
    """ALLOW_INSECURE=ture was taken for "no" without a word."""
    monkeypatch.setenv("ALLOW_INSECURE", value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value) == ("ALLOW_INSECURE must be 1 (or true, yes, on) or 0 (or false, "
                                 f"no, off); got {value!r}.")


def test_yes_no_settings_are_read(monkeypatch):
    for value, meant in (("1", True), ("Yes", True), (" on ", True), ("true", True),
                         ("0", False), ("off", False), ("FALSE", False), ("", False)):
        monkeypatch.setenv("ALLOW_INSECURE", value)
        assert Settings.from_env().allow_insecure is meant, value


@pytest.fixture
def silent_database():
    """The URL of a "PostgreSQL" that accepts connections and never answers (a hung server;
    a host that drops packets behaves alike), on this machine; closed at the end."""
    with silent_server() as port:
        yield f"postgresql+psycopg://vidpipe@127.0.0.1:{port}/vidpipe"


def test_a_database_that_never_answers_is_down_within_seconds(silent_database, tmp_path):
    """libpq waits without end for a connection by default: /healthz (and every request)
    hung, and so would the worker's start-up check. Now each gives up after
    CONNECT_TIMEOUT seconds."""
    from webapp import create_app

    settings = Settings.from_env(database_url=silent_database, media_root=tmp_path / "media")
    client = create_app(settings).test_client()
    started = time.monotonic()
    health = client.get("/healthz")
    assert (health.status_code, health.get_json()["checks"]["database"]) == (
        503, "down: no answer within 2 s: the database server DATABASE_URL names is "
             "overloaded, stopped or unreachable")
    assert time.monotonic() - started < CONNECT_TIMEOUT + 10
    dispose(silent_database)
    started = time.monotonic()
    done = subprocess.run(WORKER, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**os.environ, "DATABASE_URL": silent_database,
                               "MEDIA_ROOT": str(tmp_path / "media")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "does not answer now" in done.stderr and "; starting anyway" in done.stderr
    assert time.monotonic() - started < CONNECT_TIMEOUT + 30


def test_make_run_says_a_workers_count_that_is_no_number_before_anything_starts():
    """honcho said WORKERS=abc with a traceback, after the setup and the migration."""
    done = subprocess.run(["make", "run", "WORKERS=abc"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "vidpipe: WORKERS must be a whole number of at least 0; got 'abc'." in done.stderr
    assert "Traceback" not in done.stderr
    assert "system-deps" not in done.stdout and "honcho" not in done.stdout, done.stdout


# A stand-in for the interpreter the Makefile makes its virtualenv with: `-m venv DIR` gives
# DIR/bin/activate and a pip that writes its arguments to DIR/pip.log (the real install takes
# minutes and the package index; what is checked here is the Makefile's own logic).
_FAKE_PYTHON = """#!/bin/sh
[ "$1" = "-m" ] && [ "$2" = "venv" ] || exit 2
mkdir -p "$3/bin" && touch "$3/bin/activate"
printf '#!/bin/sh\\necho "$*" >> "%s/pip.log"\\n' "$3" > "$3/bin/pip"
chmod +x "$3/bin/pip"
"""


@pytest.mark.parametrize("cut_short", [True, False])
def test_make_deps_makes_the_virtualenv_again_after_an_install_cut_short(tmp_path, cut_short):
    """Ctrl-C during the first `make run`'s pip install left gunicorn's metadata without
    bin/gunicorn; the next `pip install` took gunicorn as installed, and `make run` failed
    from then on. Such an install leaves its mark, and the virtualenv is made again."""
    python = tmp_path / "python"
    python.write_text(_FAKE_PYTHON)
    python.chmod(0o755)
    venv = tmp_path / "venv"
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
    (venv / "half-installed-package").touch()
    if cut_short:
        (venv / ".installing").touch()
    done = subprocess.run(["make", f"VENV={venv}", f"PYTHON={python}", f"{venv}/.installed"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    remade = "the last install into" in done.stdout
    assert remade == cut_short, done.stdout
    assert (venv / "half-installed-package").exists() != cut_short
    assert (venv / "pip.log").read_text().splitlines() == [
        "install --quiet --upgrade pip", "install --quiet -e .[dev]"]
    assert (venv / ".installed").exists() and not (venv / ".installing").exists()
