"""The web process's access log (webapp/accesslog.py): polls that went well are counted in
a line per worker every POLL_LOG_SECONDS, everything else keeps its line with its duration.

Against gunicorn as `make run` starts it (gunicorn.conf.py), on both databases; the slow
request rule is checked on the logger itself, since how long a request takes is not up to
the test.
"""

from __future__ import annotations

import http.client
import logging
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from tests import mediagen
from tests.helpers import http_request, http_upload, wait_for
from tests.test_concurrency import web_server
from webapp.accesslog import ACCESS_LOG_FORMAT, AccessLog
from webapp.config import PROJECT_ROOT

pytestmark = pytest.mark.timeout(180)
POLLS = re.compile(r"\[(\d+)\] polls: (\d+) in \d+ s \(([^)]*)\)")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return mediagen.make_video(tmp_path_factory.mktemp("m") / "clip.mp4", duration=1.0)


def counted(text: str) -> dict[str, int]:
    """Every polls line's counts, by status, summed."""
    totals: dict[str, int] = {}
    for match in POLLS.finditer(text):
        for part in match.group(3).split(", "):
            status, n = part.split(": ")
            totals[status] = totals.get(status, 0) + int(n)
    return totals


def access_lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line and '" ' in line]


def test_polls_are_counted_and_everything_else_logged(settings, tmp_path, clip):
    log = tmp_path / "gunicorn.log"
    with web_server(tmp_path, SECRET_KEY="k" * 32, WEB_WORKERS="1",
                    POLL_LOG_SECONDS="1") as (port, _):
        # The readiness probes of web_server are polls too: wait for their line.
        wait_for(lambda: POLLS.search(log.read_text()), timeout=60, interval=0.2,
                 what="the counts of the readiness probes")
        time.sleep(1.2)
        offset = len(log.read_text())
        video = http_upload(port, clip.read_bytes(), "clip.mp4")
        assert http_request(port, "POST", f"/api/v1/videos/{video}/run_sync")[0] == 202
        poll = f"/api/v1/videos/{video}/reprocess"
        for _ in range(5):
            assert http_request(port, "GET", poll)[0] == 200
        status, body = http_request(port, "GET", f"/videos/{video}/row")
        assert status == 200, body[:300]
        assert http_request(port, "GET", f"/videos/{video}/panel?poll=1")[0] == 200
        assert http_request(port, "GET", "/healthz")[0] == 200
        missing = "/api/v1/videos/0123456789abcdef0123456789abcdef/reprocess"
        assert http_request(port, "GET", missing)[0] == 404
        assert http_request(port, "GET", f"/videos/{video}")[0] == 200  # a page, not a poll

        wait_for(lambda: sum(counted(log.read_text()[offset:]).values()) >= 8, timeout=60,
                 interval=0.2, what="the counts of the test's polls")
        time.sleep(1.5)  # no line may count more than was sent
        text = log.read_text()[offset:]
    assert counted(text) == {"200": 8}, text
    # Polls that went well have no line of their own; the failed one, the upload, the
    # trigger and the page have theirs, each with its duration.
    assert not access_lines(text, f"{poll} HTTP/1.1\" 200"), text
    assert not access_lines(text, "/row HTTP") and not access_lines(text, "/healthz"), text
    for needle in (f'GET {missing} HTTP/1.1" 404', 'POST /api/v1/videos HTTP/1.1" 201',
                   f'POST /api/v1/videos/{video}/run_sync HTTP/1.1" 202',
                   f'GET /videos/{video} HTTP/1.1" 200'):
        lines = access_lines(text, needle)
        assert len(lines) == 1, (needle, text)
        assert re.search(r" \d+ms$", lines[0]), lines[0]


def test_a_worker_writes_its_last_counts_as_it_exits(settings, tmp_path, clip):
    log = tmp_path / "gunicorn.log"
    with web_server(tmp_path, SECRET_KEY="k" * 32, WEB_WORKERS="1",
                    POLL_LOG_SECONDS="3600") as (port, _):
        video = http_upload(port, clip.read_bytes(), "clip.mp4")
        poll = f"/api/v1/videos/{video}/reprocess"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", poll)
            resp = conn.getresponse()
            resp.read()
            status, etag = resp.status, resp.getheader("ETag")
            assert status == 200 and etag
            for _ in range(4):
                conn.request("GET", poll, headers={"If-None-Match": etag})
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 304
        finally:
            conn.close()
        assert "polls:" not in log.read_text()  # an hour's counts are not due yet
    # Stopped (SIGTERM): the worker wrote what it had counted.
    totals = counted(log.read_text())
    assert totals.get("304") == 4 and totals.get("200", 0) >= 1, log.read_text()


def test_every_poll_is_logged_with_poll_log_seconds_0(settings, tmp_path, clip):
    log = tmp_path / "gunicorn.log"
    with web_server(tmp_path, SECRET_KEY="k" * 32, WEB_WORKERS="1", POLL_LOG_SECONDS="0") as (
            port, _):
        video = http_upload(port, clip.read_bytes(), "clip.mp4")
        for _ in range(3):
            assert http_request(port, "GET", f"/api/v1/videos/{video}/reprocess")[0] == 200
        time.sleep(0.5)
    text = log.read_text()
    assert len(access_lines(text, f'GET /api/v1/videos/{video}/reprocess HTTP/1.1" 200')) == 3
    assert "polls:" not in text


@pytest.mark.parametrize(("name", "value"), [("POLL_LOG_SECONDS", "-1"),
                                             ("POLL_LOG_SECONDS", "soon"),
                                             ("SLOW_REQUEST_MS", "0")])
def test_a_bad_setting_stops_the_web_process_with_a_sentence(tmp_path, name, value):
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                           "--bind", "127.0.0.1:0", "wsgi:app"], cwd=PROJECT_ROOT,
                          env={"PATH": "/usr/bin:/bin", name: value,
                               "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert f"vidpipe: {name} must be a number of at least" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert repr(value) in proc.stderr and "Listening at" not in proc.stderr


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _logger() -> tuple[AccessLog, _Lines]:
    """The access logger as gunicorn.conf.py configures it, its lines collected."""
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", ACCESS_LOG_FORMAT)
    logger = AccessLog(cfg)
    lines = _Lines()
    logger.access_log.handlers = [lines]
    return logger, lines


def test_a_slow_poll_is_logged_and_a_quick_one_counted(monkeypatch):
    monkeypatch.setenv("SLOW_REQUEST_MS", "250")
    monkeypatch.setenv("POLL_LOG_SECONDS", "60")
    logger, lines = _logger()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/v1/videos/abc/reprocess",
               "RAW_URI": "/api/v1/videos/abc/reprocess", "SERVER_PROTOCOL": "HTTP/1.1",
               "REMOTE_ADDR": "127.0.0.1"}
    req = SimpleNamespace(headers=[])
    ok = SimpleNamespace(status="200 OK", sent=120, headers=[])
    logger.access(ok, req, environ, timedelta(milliseconds=249))
    assert lines.lines == []
    logger.access(ok, req, environ, timedelta(milliseconds=250))
    assert len(lines.lines) == 1 and lines.lines[0].endswith(" 250ms"), lines.lines
    failed = SimpleNamespace(status="500 INTERNAL SERVER ERROR", sent=20, headers=[])
    logger.access(failed, req, environ, timedelta(milliseconds=3))
    assert len(lines.lines) == 2 and '" 500 ' in lines.lines[1]
    logger.access(ok, req, {**environ, "REQUEST_METHOD": "POST"}, timedelta(milliseconds=3))
    assert len(lines.lines) == 3
    logger.flush_polls()
    assert re.search(r"polls: 1 in \d+ s \(200: 1\), slowest 249 ms$", lines.lines[-1])


def test_the_data_polls_of_an_open_dashboard_are_counted(monkeypatch):
    """rq-dashboard's page asks for its queues, workers and jobs every 2.5 s: with /rq open,
    those lines were most of the log, as progress polls had been."""
    monkeypatch.setenv("POLL_LOG_SECONDS", "60")
    logger, lines = _logger()
    req = SimpleNamespace(headers=[])
    ok = SimpleNamespace(status="200 OK", sent=120, headers=[])
    for path in ("/rq/0/data/queues.json", "/rq/0/data/workers.json",
                 "/rq/0/data/jobs/vidpipe/failed/8/asc/1.json", "/rq/0/data/job/abc-1.json"):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "RAW_URI": path,
                   "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"}
        logger.access(ok, req, environ, timedelta(milliseconds=5))
    assert lines.lines == []
    for path in ("/rq/", "/rq/0/view/jobs"):  # its pages keep their lines
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "RAW_URI": path,
                   "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"}
        logger.access(ok, req, environ, timedelta(milliseconds=5))
    assert len(lines.lines) == 2
    logger.flush_polls()
    assert re.search(r"polls: 4 in \d+ s \(200: 4\), slowest 5 ms$", lines.lines[-1])


@pytest.mark.parametrize("path", ["/queue-banner", "/worker-banner"])
def test_the_queue_watch_of_every_open_page_is_counted(monkeypatch, path):
    """Every page asks GET /queue-banner every 10 s whether the job queue answers (every 5 s
    while it does not): with pages open all day, a line each was most of the log. Its
    "nothing new" is a 204. So does the library while it has active rows, whether a worker
    serves the queue (/worker-banner)."""
    monkeypatch.setenv("POLL_LOG_SECONDS", "60")
    logger, lines = _logger()
    req = SimpleNamespace(headers=[])
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path,
               "RAW_URI": f"{path}?shown=0", "QUERY_STRING": "shown=0",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"}
    for status in ("204 NO CONTENT", "204 NO CONTENT", "200 OK"):
        logger.access(SimpleNamespace(status=status, sent=0, headers=[]), req, environ,
                      timedelta(milliseconds=2))
    assert lines.lines == []
    logger.access(SimpleNamespace(status="204 NO CONTENT", sent=0, headers=[]), req,
                  {**environ, "PATH_INFO": "/videos/abc/delete", "REQUEST_METHOD": "POST"},
                  timedelta(milliseconds=2))  # an action's 204 (HX-Redirect) keeps its line
    assert len(lines.lines) == 1
    logger.flush_polls()
    assert re.search(r"polls: 3 in \d+ s \(200: 1, 204: 2\), slowest 2 ms$", lines.lines[-1])


def test_a_file_sent_whole_is_logged_with_its_size(settings, tmp_path):
    """gunicorn sends a file with sendfile() and does not count those bytes: every artifact,
    preview and static file was logged as 0 bytes."""
    log = tmp_path / "gunicorn.log"
    css = PROJECT_ROOT / "static" / "css" / "app.css"
    with web_server(tmp_path, SECRET_KEY="k" * 32, WEB_WORKERS="1") as (port, _):
        status, body = http_request(port, "GET", "/static/css/app.css")
        assert status == 200 and len(body) == css.stat().st_size
        assert http_request(port, "HEAD", "/static/css/app.css")[0] == 200
        time.sleep(0.5)
    text = log.read_text()
    assert access_lines(text, f'"GET /static/css/app.css HTTP/1.1" 200 {css.stat().st_size} '), text
    assert access_lines(text, '"HEAD /static/css/app.css HTTP/1.1" 200 0 '), text
