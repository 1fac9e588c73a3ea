"""The database failing just after a step's start was recorded (found in review)."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from jobs import steps
from tests import mediagen
from tests.helpers import progress_of, subtasks, upload_ok
from webapp.db import get_engine


def test_a_connection_lost_right_after_the_start_is_recorded_does_not_orphan_the_step(
        client, settings, tmp_path, database_url):
    """The step's start (`start_subtask`) commits, then the connection dies (a PostgreSQL
    restart, a failover) while the attempt reads the published inputs. `with_retries` runs
    the whole start again: the step shows running already, so the job gives up ("not run")
    and leaves the step running with no attempt working on it; the reconciler later fails
    it ("its job finished without recording a result"). The start is retried with backoff
    to survive exactly this."""
    if not database_url.startswith("postgresql"):
        pytest.skip("kills its own PostgreSQL connection")
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=2.0)
    vid = upload_ok(client, clip)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    engine = get_engine(settings.database_url)
    killed = []

    def connection_dies(conn, cursor, statement, parameters, context, executemany):
        # The first read of the publications after the step is recorded running: the
        # server really ends this connection (pg_terminate_backend from another one).
        if not killed and "FROM publications" in statement:
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
