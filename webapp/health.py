"""GET /healthz: is the database answering, is Redis answering, can MEDIA_ROOT take files,
how many workers listen.

Each check runs in a thread of its own and is waited for at most CHECK_TIMEOUT seconds, all
of them at once: a database or Redis that accepts connections and never answers held the
answer for 10 s (the connect and socket timeouts), while a monitor (and, on a kept-alive
connection, every poll the web worker's event loop serves: webapp/webworker.py) waited. A
check still running from an earlier request is waited for, not started again, so an outage
holds at most one thread of each kind per web process.

A check that fails says so as a sentence an operator can act on, naming the setting
(DATABASE_URL, REDIS_URL, MEDIA_ROOT) and never its value: /healthz is public, and the
value may hold a password. The log has the details (a URL without its password).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from flask import Blueprint
from redis import Redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from webapp import extensions as ext
from webapp.config import shown_database_url
from webapp.db import check_engine
from webapp.services.queue import address, no_such_database
from webapp.services.workers import live_workers
from webapp.startup import write_probe

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)

CHECK_TIMEOUT = 2.0  # seconds each check may take before it is said to have timed out
# When a check gives up by itself (its connect and read timeouts): a second after it is said
# to have timed out, so that the answer says so whatever the race; its thread ends then.
CHECK_GIVES_UP = 3
_lock = threading.Lock()
# (id of the app's handles, check name) -> the check's result, while it may still run
_running: dict[tuple[int, str], tuple[float, Future]] = {}
_last_said: dict[tuple[int, str], str] = {}  # what each check said last, to log its changes
_redis_clients: dict[str, Redis] = {}  # REDIS_URL -> the checks' client


@bp.get("/healthz")
def healthz():
    """200 when the database and Redis answer and MEDIA_ROOT takes files, 503 naming what
    is down, as a sentence saying what to do (each check waits at most 2 s).

    `workers` counts the live RQ workers on the queue (null when Redis is down). Zero
    workers is still a 200: this web process is healthy, and the UI tells users that
    their tasks wait for a worker.
    """
    handles = ext.handles()
    settings = handles.settings
    started = {
        "database": _start(handles, "database", lambda: _database(settings.database_url)),
        "redis": _start(handles, "redis", lambda: _redis(_redis_client(settings.redis_url),
                                                          settings.queue_name)),
        "media": _start(handles, "media", lambda: _media(settings.media_root)),
    }
    checks, workers = {}, None
    for name, (since, future) in started.items():
        try:
            result = future.result(timeout=max(0.0, since + CHECK_TIMEOUT - time.monotonic()))
        except FutureTimeout:
            checks[name] = f"down: {TIMED_OUT[name]}"
            _log_change(handles, name, checks[name], _detail(name, None, settings))
            continue
        except Exception as exc:  # noqa: BLE001 - said as a sentence, logged in full
            checks[name] = f"down: {_said(name, exc)}"
            _log_change(handles, name, checks[name], _detail(name, exc, settings))
            continue
        checks[name] = "ok"
        _log_change(handles, name, "ok", "")
        if name == "redis":
            workers = result
    healthy = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if healthy else "unavailable", "checks": checks, "workers": workers}
    return body, 200 if healthy else 503


def _log_change(handles: object, name: str, said: str, detail: str) -> None:
    """A line when a check's answer changes, not at every probe of a monitor."""
    key = (id(handles), name)
    with _lock:
        before = _last_said.get(key, "ok")
        _last_said[key] = said
    if said == before:
        return
    if said == "ok":
        log.info("/healthz: the %s check passes again", name)
    else:
        log.warning("/healthz: the %s check fails: %s", name, detail)


def _detail(name: str, exc: BaseException | None, settings) -> str:
    """For the log: where, and what the exception says (a URL without its password); no
    exception: it timed out."""
    if name == "database":
        where = shown_database_url(settings.database_url)
    elif name == "redis":
        where = address(settings.redis_url)
    else:
        where = str(settings.media_root)
    if exc is None:
        return f"{where}: no answer within {CHECK_TIMEOUT:g} s"
    said = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
    return f"{where}: {type(exc).__name__}: {said}"


def _start(handles: object, name: str, check: Callable[[], object]) -> tuple[float, Future]:
    """The running check of this kind, or a new one in a thread of its own."""
    key = (id(handles), name)
    with _lock:
        running = _running.get(key)
        if running is not None and not running[1].done():
            return running
        future: Future = Future()
        begun = (time.monotonic(), future)
        _running[key] = begun

    def run() -> None:
        try:
            future.set_result(check())
        except BaseException as exc:  # noqa: BLE001 - handed to the request
            future.set_exception(exc)

    threading.Thread(target=run, name=f"healthz-{name}", daemon=True).start()
    return begun


def _database(url: str) -> None:
    with check_engine(url, CHECK_GIVES_UP).connect() as connection:
        connection.execute(text("SELECT 1"))


def _redis_client(url: str) -> Redis:
    """A client of the app's Redis that gives up after CHECK_GIVES_UP seconds (the app's
    own waits 10 s for an answer)."""
    with _lock:
        client = _redis_clients.get(url)
        if client is None:
            client = _redis_clients[url] = Redis.from_url(
                url, socket_connect_timeout=CHECK_GIVES_UP, socket_timeout=CHECK_GIVES_UP)
    return client


def _redis(connection: Redis, queue_name: str) -> int:
    connection.ping()
    return live_workers(connection, queue_name)


def _media(media_root: Path) -> None:
    """A file with a few bytes in it can be made in MEDIA_ROOT (as uploads are)."""
    write_probe(media_root, ".healthz-", 4096)


TIMED_OUT = {
    "database": (f"no answer within {CHECK_TIMEOUT:g} s: the database server DATABASE_URL "
                 "names is overloaded, stopped or unreachable"),
    "redis": (f"no answer within {CHECK_TIMEOUT:g} s: the Redis REDIS_URL names is "
              "overloaded, stopped or unreachable"),
    "media": (f"no answer within {CHECK_TIMEOUT:g} s from the disk MEDIA_ROOT is on (a "
              "network file system that does not answer?)"),
}


def _said(name: str, exc: BaseException) -> str:
    """What to tell an operator about `exc`, from the check `name`: a sentence of our own,
    never the exception's text (it may name hosts, users or paths)."""
    detail = " ".join(str(getattr(exc, "orig", None) or exc).split())
    said = detail.lower()
    if name == "media":
        return _said_of_media(exc)
    if name == "database":
        setting, what = "DATABASE_URL", "the database"
    else:
        setting, what = "REDIS_URL", "Redis"
        if isinstance(exc, AuthenticationError) or any(
                word in said for word in ("noauth", "wrongpass", "invalid password",
                                          "invalid username-password")):
            return (f"Redis refuses {setting}'s credentials: put its password (and user) "
                    f"in {setting}")
        if isinstance(exc, RedisTimeout):
            return (f"Redis did not answer in time: the Redis {setting} names is "
                    f"overloaded, stopped or unreachable")
        if no_such_database(exc):
            return (f"Redis has no database of the number {setting} names: set one below "
                    f"its `databases` setting (16 by default, numbered from 0)")
        if "loading" in said:
            return "Redis is still loading its data after a start: wait for it"
        if isinstance(exc, ResponseError):
            code = detail.split()[0] if detail else type(exc).__name__  # LOADING, MISCONF
            return f"Redis answers with an error ({code}): Redis's log says why"
    if "password authentication failed" in said or "authentication failed" in said:
        return f"{what} refuses {setting}'s user or password: correct them in {setting}"
    if "connection refused" in said:
        return (f"nothing listens at the host and port {setting} names (connection "
                f"refused): start {what}, or correct {setting}")
    if any(word in said for word in ("name or service not known", "could not translate host",
                                     "nodename nor servname", "temporary failure in name")):
        return f"the host name in {setting} is not known (DNS): correct {setting}"
    if "timeout" in said or "timed out" in said:
        return (f"no connection to {what} in time: the server {setting} names is "
                f"overloaded, stopped or unreachable")
    if "does not exist" in said:
        return f"the database {setting} names does not exist: create it, or correct {setting}"
    if "unable to open database file" in said:
        return (f"the SQLite file {setting} names cannot be opened: it or its folder is "
                "missing, or cannot be written by this user")
    if "disk is full" in said or "no space left" in said:
        return "the database's disk is full: free space on it"
    if "database is locked" in said:
        return "the SQLite database is locked by a writer that takes too long"
    if isinstance(exc, SQLAlchemyError | RedisError | OSError):
        return (f"{what} cannot be used ({type(exc).__name__}): the web process's log says "
                f"why")
    return f"the check failed ({type(exc).__name__}): the web process's log says why"


def _said_of_media(exc: BaseException) -> str:
    code = exc.errno if isinstance(exc, OSError) else None
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ("the disk MEDIA_ROOT is on is full: uploads and outputs cannot be written "
                "until space is freed on it")
    if code == errno.ENOENT:
        return ("the folder MEDIA_ROOT names does not exist (deleted, or its disk not "
                "mounted?): uploads and outputs cannot be written; restore it")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ("MEDIA_ROOT cannot be written by this web process (" + (
            "read-only file system" if code == errno.EROFS else "permission denied")
            + "): make it writable by the user it runs as")
    if code == errno.ENOTDIR:
        return "MEDIA_ROOT is not a folder: set it to one"
    return (f"MEDIA_ROOT cannot be written ({type(exc).__name__}): the web process's log "
            f"says why")
