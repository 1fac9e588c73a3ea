"""SQLite writers in one process take turns (webapp/db.py) instead of racing in SQLite's
busy handler: a waiting writer goes as soon as the current one commits or rolls back."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from webapp.db import BUSY_TIMEOUT, WriteTurnTimeout, dispose, get_engine


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    engine = get_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)"))
    yield engine
    dispose(url)


def write_in_thread(engine, who: str, log: list[str]) -> threading.Thread:
    """A writer whose connection does not wait in SQLite at all (busy_timeout 0): it gets
    "database is locked" unless it waited for its turn before writing."""
    def write():
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA busy_timeout=0")
            try:
                conn.execute(text("INSERT INTO t (who) VALUES (:who)"), {"who": who})
            finally:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        log.append(f"{who} committed")

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("end", ["commit", "rollback", "close"])
def test_a_waiting_writer_goes_when_the_current_one_ends(engine, end):
    log: list[str] = []
    first = engine.connect()
    first.execute(text("INSERT INTO t (who) VALUES ('first')"))  # holds the write turn
    second = write_in_thread(engine, "second", log)
    second.join(0.5)
    assert second.is_alive() and log == [], "a second writer did not wait for the first"
    log.append(f"first {end}")
    getattr(first, end)()
    second.join(10)
    assert not second.is_alive()
    assert log == [f"first {end}", "second committed"]
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT who FROM t ORDER BY id")).scalars().all()
    assert rows == (["first", "second"] if end == "commit" else ["second"])
    if end != "close":
        first.close()


def test_many_threads_all_write(engine):
    log: list[str] = []
    threads = [write_in_thread(engine, f"w{i}", log) for i in range(16)]
    for thread in threads:
        thread.join(30)
    assert sorted(log) == sorted(f"w{i} committed" for i in range(16))


def test_reads_do_not_wait_for_a_writer(engine):
    writer = engine.connect()
    writer.execute(text("INSERT INTO t (who) VALUES ('pending')"))
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(
        engine.connect().execute(text("SELECT count(*) FROM t")).scalar()), daemon=True)
    reader.start()
    reader.join(5)
    assert seen == [0]  # WAL: the reader sees the last committed state, without waiting
    writer.rollback()
    writer.close()


def test_autocommit_writes_take_no_turn(engine, tmp_path):
    auto = get_engine(str(engine.url), autocommit=True)
    with auto.connect() as conn:
        conn.execute(text("INSERT INTO t (who) VALUES ('auto')"))
    log: list[str] = []
    write_in_thread(engine, "after", log).join(10)
    assert log == ["after committed"]


def test_one_thread_with_two_write_transactions_gets_sqlites_error_not_a_deadlock(engine):
    first, second = engine.connect(), engine.connect()
    second.exec_driver_sql("PRAGMA busy_timeout=200")
    first.execute(text("INSERT INTO t (who) VALUES ('first')"))
    with pytest.raises(OperationalError, match="locked"):
        second.execute(text("INSERT INTO t (who) VALUES ('second')"))
    second.rollback()
    first.commit()
    log: list[str] = []
    write_in_thread(engine, "later", log).join(10)  # nobody kept the turn
    assert log == ["later committed"]
    first.close()
    second.close()


# pytest-timeout fails the test if the writer hangs: nothing here measures how long it took.
@pytest.mark.timeout(BUSY_TIMEOUT * 3)
def test_a_turn_never_given_back_fails_the_next_writer_instead_of_hanging(engine):
    """A thread that leaks its transaction keeps the write turn; the next writer of the
    process gets "database is locked" once SQLite's busy timeout has passed, like a writer
    of another process would, and the process writes again once the turn is given back."""
    took_turn, let_go = threading.Event(), threading.Event()

    def leak():
        conn = engine.connect()
        conn.execute(text("INSERT INTO t (who) VALUES ('leaked')"))
        took_turn.set()
        let_go.wait()
        conn.rollback()
        conn.close()

    holder = threading.Thread(target=leak, name="leaky-writer", daemon=True)
    holder.start()
    try:
        assert took_turn.wait(10)
        with (pytest.raises(OperationalError, match="database is locked") as failed,
              engine.begin() as conn):
            conn.execute(text("INSERT INTO t (who) VALUES ('blocked')"))
        assert isinstance(failed.value.orig, WriteTurnTimeout)
        assert "'leaky-writer'" in str(failed.value)  # says who holds it
    finally:
        let_go.set()
        holder.join(10)
    log: list[str] = []
    write_in_thread(engine, "after", log).join(10)
    assert log == ["after committed"]
