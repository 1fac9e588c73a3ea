"""Engine and session factory: one per process, safe across RQ's fork."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from webapp.config import INSTANCE_DIR, sqlite_file

_engines: dict[tuple[str, bool], Engine] = {}
_check_engines: dict[tuple[str, int], Engine] = {}  # check_engine's
# Seconds a PostgreSQL connection may take to be made (libpq's connect_timeout), unless the
# URL sets its own. libpq waits without end by default: a database host that drops packets,
# or a server that accepts and never answers, hung /healthz, every request, and the start of
# the web process and the workers (their migration check).
CONNECT_TIMEOUT = 10
# Seconds a SQLite writer waits for another before "database is locked": SQLite's
# busy_timeout (writers of other processes), and the longest wait for this process's write
# turn (writers of other threads, below).
BUSY_TIMEOUT = 10.0


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the web process read while workers write; busy_timeout makes writers
    # wait for each other instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# -- SQLite: one write transaction at a time per process, in arrival order --------------
#
# SQLite lets one connection write at a time; the others wait in its busy handler, which
# polls with growing sleeps (1, 2, 5, 10 ... 100 ms) and wakes no one when the writer
# ends. With several threads writing (gunicorn's gthread workers: 8 concurrent triggers),
# a newcomer takes the lock while earlier waiters sleep, and some wait seconds (measured:
# p99 1.3 s for triggers taking 11 ms). So within a process writers queue on a lock taken
# before the first write statement of a transaction and given back when it commits or
# rolls back: they are woken as soon as the writer ends. Between processes (the other web
# worker, RQ workers) SQLite's busy handler still decides, with fewer contenders.
# A writer waits at most BUSY_TIMEOUT for its turn, like SQLite's own busy handler: a turn
# never given back (a transaction left open by a bug) fails the writers behind it with
# "database is locked" instead of hanging every writer of the process.

class WriteTurnTimeout(sqlite3.OperationalError):
    """No write turn within BUSY_TIMEOUT (SQLAlchemy raises it as its OperationalError)."""


class _WriteTurns:
    """Who may write next in this process (a lock any thread can give back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None
        self.since = 0.0  # time.monotonic() when the owner took the turn

    def take(self, timeout: float) -> bool:
        """Wait for the turn, at most `timeout` seconds (then WriteTurnTimeout); False (no
        turn taken) if this thread already has it through another connection, which then
        waits in SQLite as before instead of deadlocking."""
        me = threading.get_ident()
        if self.owner == me:
            return False
        if not self._lock.acquire(timeout=timeout):
            raise WriteTurnTimeout(
                f"database is locked: no write turn within {timeout:g} s; thread "
                f"{_thread_name(self.owner)} of this process has held it for "
                f"{time.monotonic() - self.since:.0f} s (a transaction left open?)")
        self.owner, self.since = me, time.monotonic()
        return True

    def give_back(self) -> None:
        self.owner = None
        self._lock.release()


def _thread_name(ident: int | None) -> str:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return repr(names.get(ident, f"#{ident}"))


_turns = _WriteTurns()
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")


class _TurnTakingCursor(sqlite3.Cursor):
    def execute(self, sql, parameters=(), /):
        self.connection._before(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql, seq_of_parameters, /):
        self.connection._before(sql)
        return super().executemany(sql, seq_of_parameters)


class TurnTakingConnection(sqlite3.Connection):
    """sqlite3's connection, writing in turns with the other threads of the process.

    Only in sqlite3's default (legacy) transaction mode, where a write statement opens a
    transaction that lasts until commit() or rollback(); an autocommit connection
    (isolation_level None) writes statement by statement and takes no turn.
    """

    _has_turn = False

    def cursor(self, factory=_TurnTakingCursor):
        return super().cursor(factory)

    def _before(self, sql: str) -> None:
        if (not self._has_turn and self.isolation_level is not None
                and sql.lstrip()[:6].upper() in _WRITES):
            self._has_turn = _turns.take(BUSY_TIMEOUT)

    def _end(self) -> None:
        if self._has_turn:
            self._has_turn = False
            _turns.give_back()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._end()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._end()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._end()


def get_engine(url: str, *, autocommit: bool = False) -> Engine:
    """Return this process's engine for `url`, creating it on first use.

    `autocommit=True` gives a second engine for single read-only statements on the hottest
    path (conditional progress polls, webapp/fastpoll.py): no transaction to open and roll
    back around each statement, and no pre-ping round trip before it (a dead connection
    raises, is discarded by the pool, and the caller falls back to the regular path).
    """
    key = (url, autocommit)
    engine = _engines.get(key)
    if engine is None:
        options: dict = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
        if url.startswith("sqlite"):
            if _in_instance_dir(url):  # the default's; any other folder is the operator's
                INSTANCE_DIR.mkdir(exist_ok=True)
            engine = create_engine(
                url, connect_args={"timeout": BUSY_TIMEOUT, "factory": TurnTakingConnection},
                **options)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            connect_args = ({} if "connect_timeout" in make_url(url).query
                            else {"connect_timeout": CONNECT_TIMEOUT})
            engine = create_engine(url, pool_pre_ping=not autocommit,
                                   connect_args=connect_args, **options)
        _engines[key] = engine
    return engine


def check_engine(url: str, timeout: int) -> Engine:
    """An engine for health checks (webapp/health.py) that are waited for at most `timeout`
    seconds: on PostgreSQL no pool (no connection is kept to hang on later) and a connect
    given up after `timeout` (libpq's least is 2), so that no check's thread outlives its
    answer by much; on SQLite, a file here, this process's engine."""
    if url.startswith("sqlite"):
        return get_engine(url)
    key = (url, timeout)
    engine = _check_engines.get(key)
    if engine is None:
        engine = create_engine(url, poolclass=NullPool,
                               connect_args={"connect_timeout": max(2, timeout)})
        _check_engines[key] = engine
    return engine


def _in_instance_dir(url: str) -> bool:
    path = sqlite_file(url)
    return path is not None and path.parent.resolve() == INSTANCE_DIR


@contextmanager
def statements_sent(url: str) -> Iterator[list[str]]:
    """The SQL statements this process sends to `url` (through both engines) while the
    block runs: for tests and benchmarks that count the queries of a request."""
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    engines = [get_engine(url, autocommit=a) for a in (False, True)]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


def dispose(url: str) -> None:
    """Close every pooled connection of this process to `url` (both engines)."""
    for autocommit in (False, True):
        engine = _engines.get((url, autocommit))
        if engine is not None:
            engine.dispose()


def _dispose_after_fork() -> None:
    # A forked work-horse must not reuse the parent's pooled connections, nor inherit a
    # write turn another thread of the parent held at the fork.
    global _turns
    _turns = _WriteTurns()
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_dispose_after_fork)


def session_factory(url: str) -> sessionmaker[Session]:
    """A sessionmaker bound to this process's engine for `url`."""
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (for jobs and CLI)."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
