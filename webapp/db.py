"""Engine and session factory: one per process, safe across RQ's fork."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[tuple[str, bool], Engine] = {}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the web process read while workers write; busy_timeout makes writers
    # wait for each other instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


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
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 10}, **options)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=not autocommit, **options)
        _engines[key] = engine
    return engine


def dispose(url: str) -> None:
    """Close every pooled connection of this process to `url` (both engines)."""
    for autocommit in (False, True):
        engine = _engines.get((url, autocommit))
        if engine is not None:
            engine.dispose()


def _dispose_after_fork() -> None:
    # A forked work-horse must not reuse the parent's pooled connections.
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
