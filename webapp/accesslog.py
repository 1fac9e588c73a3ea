"""gunicorn's access log, without a line per progress poll (gunicorn.conf.py's logger_class).

A browser showing a running video polls its progress once a second, so do API clients and
monitors: logged like any request, polls were nearly every line of the log (32 000 in one
run of the test suite), and writing them, relayed by honcho, cost the web process a fair
share of a poll's time (docs/PERFORMANCE.md, section 2). So a poll that went well is
**counted, not logged**: a GET or HEAD of

- a video's progress in the API (`/api/v1/videos/<id>/reprocess`),
- its library row or page panel in the UI (`/videos/<id>/row`, `/videos/<id>/panel`),
- `/healthz`,
- the question every open page asks every 10 s, whether the job queue answers
  (`/queue-banner`; its "nothing new" is a 204), and the library's while it has active
  rows, whether a worker serves the queue (`/worker-banner`, the same way),
- the data an open rq-dashboard page (`/rq`) asks for every 2.5 s (`/rq/<n>/data/….json`):
  three lines every 2.5 s while it was open,

answered 200, 204 or 304 in less than SLOW_REQUEST_MS. Each web worker writes one line of its
counts every POLL_LOG_SECONDS in which it answered any, and its last counts when it exits:

    [03/Dec/2026:07:34:30 +0000] [24839] polls: 1790 in 60 s (200: 1200, 304: 590), slowest 14 ms

Everything else keeps its line: errors (any 4xx or 5xx, polls too), triggers, uploads,
pages, and every request as slow as SLOW_REQUEST_MS or slower. Every line ends with the
request's duration in ms. POLL_LOG_SECONDS=0 logs every poll as before.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import Counter
from datetime import timedelta

from gunicorn import glogging

from webapp.config import number_env

POLL_PATH = re.compile(r"/api/v1/videos/[^/]+/reprocess|/videos/[^/]+/(?:row|panel)|/healthz"
                       r"|/rq/\d+/data/.+\.json")
# Counted too, though not polls webapp/webworker.py answers on its event loop: the queue's
# and the workers' watches may wait for a Redis that does not answer.
COUNTED_PATH = re.compile(f"{POLL_PATH.pattern}|/queue-banner|/worker-banner")
QUIET_STATUSES = ("200", "204", "304")
DEFAULT_POLL_LOG_SECONDS = 60.0
DEFAULT_SLOW_REQUEST_MS = 1000.0
# gunicorn's default (the "combined" format) plus the request's duration.
ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'


def poll_log_seconds() -> float:
    """POLL_LOG_SECONDS: seconds between a worker's counts of quiet polls; 0 logs each."""
    return number_env("POLL_LOG_SECONDS", DEFAULT_POLL_LOG_SECONDS, float, minimum=0)


def slow_request_ms() -> float:
    """SLOW_REQUEST_MS: a request taking this long or longer is always logged."""
    return number_env("SLOW_REQUEST_MS", DEFAULT_SLOW_REQUEST_MS, float, minimum=1)


def status_code(resp) -> str:
    status = resp.status
    return status.split(None, 1)[0] if isinstance(status, str) else str(status)


class AccessLog(glogging.Logger):
    """gunicorn's Logger; polls that went well are counted instead of logged."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        self.poll_seconds = poll_log_seconds()
        self.slow = timedelta(milliseconds=slow_request_ms())
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._slowest = timedelta(0)
        self._since = time.monotonic()
        self._reporter_pid: int | None = None

    def exception(self, msg, *args, **kwargs) -> None:
        # In a gthread worker the only write that can time out is a poll's answer sent on
        # the event loop (webapp/webworker.py gives it INLINE_SEND_TIMEOUT): a client that
        # reads no answer, said in one line rather than as a server error's traceback.
        if isinstance(sys.exc_info()[1], BlockingIOError):
            self.warning("A client read none of an answer within the send timeout: "
                         "its connection is closed.")
            return
        super().exception(msg, *args, **kwargs)

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        if self.poll_seconds > 0 and request_time < self.slow:
            status = status_code(resp)
            if (status in QUIET_STATUSES and environ.get("REQUEST_METHOD") in ("GET", "HEAD")
                    and COUNTED_PATH.fullmatch(environ.get("PATH_INFO", ""))):
                self._count(status, request_time)
                return
        super().access(resp, req, environ, request_time)

    def atoms(self, resp, req, environ, request_time) -> dict:
        """gunicorn's, with the size of a body sent by sendfile(): gunicorn counts only what
        it writes itself, so every file (artifacts, previews, static files) was logged as
        0 bytes (`"GET .../captions.vtt HTTP/1.1" 200 0`). Its Content-Length is what went."""
        atoms = super().atoms(resp, req, environ, request_time)
        length = getattr(resp, "response_length", None)
        status = status_code(resp)
        if (atoms.get("b") in ("0", "-") and length and environ.get("REQUEST_METHOD") != "HEAD"
                and status.isdigit() and int(status) >= 200 and status not in ("204", "304")):
            atoms["b"] = str(length)
        return atoms

    def _count(self, status: str, request_time: timedelta) -> None:
        with self._lock:
            self._counts[status] += 1
            self._slowest = max(self._slowest, request_time)
            if self._reporter_pid != os.getpid():  # the first poll of this worker process
                self._reporter_pid = os.getpid()
                self._since = time.monotonic()
                threading.Thread(target=self._report_every, name="poll-counts",
                                 daemon=True).start()

    def _report_every(self) -> None:
        while True:
            time.sleep(self.poll_seconds)
            self.flush_polls()

    def flush_polls(self) -> None:
        """Write the counts since the last line, if there were any (also at worker exit)."""
        with self._lock:
            counts, slowest, since = self._counts, self._slowest, self._since
            self._counts, self._slowest, self._since = Counter(), timedelta(0), time.monotonic()
        total = sum(counts.values())
        if not total:
            return
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(counts.items()))
        self.access_log.info(
            "%s [%d] polls: %d in %.0f s (%s), slowest %.0f ms", self.now(), os.getpid(), total,
            time.monotonic() - since, statuses, slowest.total_seconds() * 1000)
