"""What users see when something goes wrong: an unexpected exception is "internal error
(reference <id>)" in the API, the pages and a step's error, with its own words and traceback
in the log under the same reference; a media or model error keeps its sentence; no server
path, SQL text or address in either. (Every error answer of every test is also scanned for
the test's MEDIA_ROOT, database URL and secrets: conftest.error_answers_leak_nothing.)"""

from __future__ import annotations

import logging
import re
import shutil
import sqlite3
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from jobs.runner import StepContext, StepFailed, run_step
from tests import mediagen
from tests.cleanup import purge_queue
from tests.conftest import TEST_REDIS_URL
from tests.helpers import assert_json_error, progress_of, subtasks, upload_ok
from webapp import create_app, db
from webapp.config import Settings
from webapp.db import get_engine
from webapp.services.ffrun import MediaError

REFERENCE = re.compile(r"internal error \(reference ([0-9a-f]{12})\)")


def logged(caplog: pytest.LogCaptureFixture, reference: str) -> str:
    """The log record naming `reference`, with its traceback."""
    records = [r for r in caplog.records if reference in r.getMessage()]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    record = records[0]
    assert record.levelno == logging.ERROR and record.exc_info
    return record.getMessage() + "\n" + logging.Formatter().formatException(record.exc_info)


@contextmanager
def table_renamed(url: str, table: str, new: str):
    """A real fault: queries of `table` fail in the database itself until it is back."""
    with get_engine(url).begin() as conn:
        conn.execute(text(f"ALTER TABLE {table} RENAME TO {new}"))
    try:
        yield
    finally:
        with get_engine(url).begin() as conn:
            conn.execute(text(f"ALTER TABLE {new} RENAME TO {table}"))


def test_an_unexpected_error_in_a_request_is_answered_with_a_reference(
        app, client, settings, caplog):
    with table_renamed(settings.database_url, "videos", "videos_elsewhere"):
        api = assert_json_error(client.get("/api/v1/videos"), 500)
        page = client.get("/")
    reference = REFERENCE.fullmatch(api["message"]).group(1)
    assert page.status_code == 500
    html = page.get_data(as_text=True)
    page_reference = REFERENCE.search(html).group(1)
    assert page_reference != reference  # one per failure
    for answer in (str(api), html):
        assert "SELECT" not in answer and "videos_elsewhere" not in answer
        assert "Traceback" not in answer
    # The log has what the answers leave out: the database's own words, the SQL.
    for ref in (reference, page_reference):
        details = logged(caplog, ref)
        assert "GET /" in details and "SELECT" in details and "videos" in details


@pytest.fixture
def task(app, client, settings, tmp_path) -> tuple[str, str]:
    """(video id, task id) of a queued run of a real upload; no worker serves the queue."""
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=1.0)
    video_id = upload_ok(client, clip)["id"]
    resp = client.post(f"/api/v1/videos/{video_id}/run_sync")
    assert resp.status_code == 202, resp.get_json()
    return video_id, resp.get_json()["task_id"]


def test_an_unexpected_error_in_a_step_shows_a_reference(client, settings, task, caplog):
    video_id, task_id = task
    seen: list[Path] = []

    def buggy(ctx: StepContext) -> None:
        seen.append(ctx.artifacts)
        (ctx.artifacts / "not-made-yet" / "poster.jpg").read_bytes()  # a bug: no such file

    with pytest.raises(FileNotFoundError):
        run_step(task_id, "thumbnails", buggy)
    step = subtasks(progress_of(client, video_id))["thumbnails"]
    assert step["status"] == "failed"
    reference = REFERENCE.fullmatch(step["error"]).group(1)
    assert step["error_detail"] is None
    details = logged(caplog, reference)
    assert f"thumbnails of task {task_id}" in details
    assert str(seen[0] / "not-made-yet" / "poster.jpg") in details  # the server path: log only
    page = client.get(f"/videos/{video_id}").get_data(as_text=True)
    assert f"Internal error (reference {reference})" in page  # (as a sentence)
    assert str(settings.media_root) not in page and "No such file" not in page


def test_a_media_error_keeps_its_sentence_and_its_detail_loses_server_paths(
        client, settings, task, caplog):
    video_id, task_id = task
    sentence = "The preview could not be encoded: the video data is damaged after 0.4 s."

    def damaged(ctx: StepContext) -> None:
        raise MediaError(sentence, detail=f"[mov,mp4] {ctx.source}: Invalid data found\n"
                                          f"Error opening output {ctx.artifacts}/preview.mp4")

    with pytest.raises(StepFailed):
        run_step(task_id, "transcode", damaged)
    step = subtasks(progress_of(client, video_id))["transcode"]
    assert step["error"] == sentence
    assert step["error_detail"] == ("[mov,mp4] source.mp4: Invalid data found\n"
                                    "Error opening output preview.mp4")
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    page = client.get(f"/videos/{video_id}").get_data(as_text=True)
    assert sentence in page and "source.mp4: Invalid data found" in page
    assert str(settings.media_root) not in page


def test_a_queue_that_does_not_answer_is_a_503_without_its_address(client, settings):
    video_id = upload_ok(client, mediagen.make_video(settings.media_root.parent / "c.mp4",
                                                     duration=1.0))["id"]
    down = create_app(Settings.from_env(redis_url="redis://127.0.0.1:1/0")).test_client()
    resp = down.post(f"/api/v1/videos/{video_id}/run_sync")
    body = assert_json_error(resp, 503)
    assert "Redis" in body["message"] and "127.0.0.1" not in body["message"]
    assert resp.headers["Retry-After"] == "5"


def test_a_database_that_does_not_answer_is_a_503_to_try_again(caplog):
    """PostgreSQL restarting or out of reach is no bug: 503 with Retry-After and a sentence
    (API, pages, and an HTMX poll, which keeps what it shows), one warning line each and no
    traceback; was a 500 "internal error" logged as a bug with its traceback."""
    url = "postgresql+psycopg://vidpipe@127.0.0.1:1/vidpipe"  # nothing listens there
    down = create_app(Settings.from_env(database_url=url)).test_client()
    with caplog.at_level(logging.WARNING):
        api = down.get("/api/v1/videos")
        page = down.get("/")
        poll = down.get("/", headers={"HX-Request": "true"})
    body = assert_json_error(api, 503)
    assert body["message"] == "the database is unavailable; try again in a moment"
    assert "127.0.0.1" not in api.get_data(as_text=True)
    assert page.status_code == 503 and "the database is unavailable" in page.get_data(
        as_text=True)
    assert poll.status_code == 503 and poll.headers["HX-Reswap"] == "none"
    for resp in (api, page, poll):
        assert resp.headers["Retry-After"] == "5"
    lines = [r for r in caplog.records if "the database is unavailable" in r.getMessage()]
    assert len(lines) == 3 and not any(r.exc_info for r in caplog.records), caplog.text
    assert not REFERENCE.search(caplog.text)


@pytest.mark.parametrize(("message", "unavailable"), [
    ("database is locked", True),  # another process's write beyond the busy timeout
    ("no such table: videos", False),  # migrations not run: a fault to report
])
def test_sqlite_busy_is_an_outage_and_its_other_errors_are_not(message, unavailable):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from webapp.services.errors import is_database_unavailable

    error = OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))
    assert is_database_unavailable(error) is unavailable


# -- 503 for a database that does not answer, on every operation ----------------------------


def operations(client) -> list[tuple[str, str, dict]]:
    """(method, path template, operation) of every operation the OpenAPI document lists."""
    paths = client.get("/api/openapi.json").get_json()["paths"]
    return [(method, path, operation) for path, ops in paths.items()
            for method, operation in ops.items() if method != "parameters"]


def test_every_operation_documents_the_503_of_a_database_that_does_not_answer(client):
    """Every operation reads the database, so each answers 503 with Retry-After while it
    does not answer (below); only the triggers listed a 503, so a client generated from
    the document knew of no Retry-After anywhere else."""
    spec = client.get("/api/openapi.json").get_json()
    found = operations(client)
    assert len(found) == 12
    for method, path, operation in found:
        answer = operation["responses"].get("503")
        assert answer is not None, (method, path)
        if "$ref" in answer:
            answer = spec["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
        assert "database" in answer["description"], (method, path)
        header = answer["headers"]["Retry-After"]
        assert header["required"] is True and header["schema"]["type"] == "integer"
        assert answer["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}


def _request(client, method: str, path: str, video_id: str, clip: Path):
    """One request of each operation: an upload carries a file, a search a text."""
    url = path.replace("{video_id}", video_id).replace("{name}", "poster.jpg")
    if (method, path) == ("post", "/api/v1/videos"):
        return client.post(url, data={"file": (clip.open("rb"), "clip.mp4")})
    if path.endswith("/search"):
        url += "?q=weather"
    return getattr(client, method)(url)


def test_every_operation_answers_503_while_postgresql_does_not_answer(tmp_path):
    """Each operation the document lists, to a PostgreSQL that does not answer: a 503
    with Retry-After it documents, and nothing kept of an upload."""
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=1.0)
    url = "postgresql+psycopg://vidpipe@127.0.0.1:1/vidpipe"  # nothing listens there
    media = tmp_path / "media"
    media.mkdir()
    down = create_app(Settings.from_env(database_url=url, media_root=str(media))).test_client()
    found = operations(down)
    for method, path, operation in found:
        resp = _request(down, method, path, "3f0c1a2b-0000-4000-8000-000000000000", clip)
        assert_json_error(resp, 503)
        assert resp.headers["Retry-After"] == "5", (method, path)
        assert "503" in operation["responses"], (method, path)
    assert [p for p in media.rglob("*") if p.is_file()] == []


def test_writes_answer_503_while_another_process_holds_sqlite_locked(
        sqlite_template, tmp_path, monkeypatch, redis_conn):
    """SQLite locked by another process beyond the busy timeout (a long write of a worker,
    `sqlite3` open in a shell): every operation that writes answers the documented 503 with
    Retry-After, and nothing changed: no task, no video lost, no file of the upload kept.
    (The busy timeout is shortened from 10 s: the test waits for it five times.)"""
    monkeypatch.setattr(db, "BUSY_TIMEOUT", 0.5)
    path = tmp_path / "vidpipe.db"
    shutil.copy(sqlite_template, path)
    media = tmp_path / "media"
    media.mkdir()
    queue = f"test-{uuid.uuid4().hex[:12]}"
    app = create_app(Settings.from_env(database_url=f"sqlite:///{path}", media_root=str(media),
                                       redis_url=TEST_REDIS_URL, queue_name=queue))
    client = app.test_client()
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=1.0)
    idle = upload_ok(client, clip)["id"]
    busy = upload_ok(client, clip)["id"]
    task = client.post(f"/api/v1/videos/{busy}/run_sync").get_json()["task_id"]
    files = sorted(p for p in media.rglob("*") if p.is_file())
    before = {v["id"]: v["processing"] for v in client.get("/api/v1/videos").get_json()}
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held
        writes = {("post", "/api/v1/videos"): idle,
                  ("delete", "/api/v1/videos/{video_id}"): idle,
                  ("post", "/api/v1/videos/{video_id}/run_sync"): idle,
                  ("post", "/api/v1/videos/{video_id}/reprocess"): idle,
                  ("post", "/api/v1/videos/{video_id}/cancel"): busy}
        documented = {(m, p): op for m, p, op in operations(client)}
        for (method, path), video_id in writes.items():
            resp = _request(client, method, path, video_id, clip)
            assert_json_error(resp, 503)
            assert resp.headers["Retry-After"] == "5", (method, path)
            assert "503" in documented[(method, path)]["responses"], (method, path)
        holder.execute("ROLLBACK")
        after = {v["id"]: v["processing"] for v in client.get("/api/v1/videos").get_json()}
        assert after == before
        assert sorted(p for p in media.rglob("*") if p.is_file()) == files
    finally:
        holder.close()
        db.dispose(f"sqlite:///{path}")
        purge_queue(redis_conn, queue, [task])
