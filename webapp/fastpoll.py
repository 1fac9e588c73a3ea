"""The hot path of progress polling, in front of Flask: one indexed query per poll.

`GET /api/v1/videos/<id>/reprocess` is what every poller sends, once a second, for as long
as a run lasts (and often after). Its answer is a function of the video's latest task row
alone (and, while it is queued, of how many runs are ahead of it), named by the task's tag
(`progress.progress_tag`: task id, version, status, runs ahead), so this
WSGI layer in front of the Flask app works like a validating HTTP cache:

1. it reads the current tag (`progress.TAG_QUERY`: one indexed query, on a pooled
   autocommit connection);
2. a client whose If-None-Match holds that tag gets a bodiless `304 Not Modified`;
3. a client without it gets the 200 that Flask answered earlier for the same video and the
   same tag, kept in a small LRU of recent answers (at most CACHED_ANSWERS, ~1.5 KB each);
4. anything else -- a tag never answered yet, an unknown video, a missing or wrong API
   token, an address this process knows to be locked out for wrong credentials
   (webapp/throttle.py: Flask then answers 429, to the right token too), a database
   error, any other method or path, a cross-origin poll when CORS_ORIGINS is set (its
   CORS headers depend on its Origin) -- goes to the Flask app untouched, which answers
   as it always does; its 200s are remembered under their own ETag.

The Host check and ProxyFix (webapp/hosts.py) sit in front of this layer too.

So a change of the progress is serialized once per web process, not once per poller, and
an unchanged one costs the query. The Flask view (webapp/api/processing.py) stays the
reference: tests/test_polling.py checks that both give the same answers with the same
headers. Measured in bench/polling.py (docs/PERFORMANCE.md, section 2).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable

from cachetools import LRUCache
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.http import parse_etags

from webapp import security
from webapp.config import Settings
from webapp.db import get_engine
from webapp.services import progress
from webapp.services.storage import is_valid_id
from webapp.throttle import Throttle

log = logging.getLogger(__name__)

# The Flask route is /api/v1/videos/<video_id>/reprocess (merge_slashes=False).
_PATH = re.compile(r"/api/v1/videos/([^/]+)/reprocess")
CACHE_CONTROL = "no-cache, private"  # always revalidate; never in a shared cache
CACHED_ANSWERS = 512

Headers = list[tuple[str, str]]


def validators(tag: str) -> dict[str, str]:
    """The headers of every progress answer (200 or 304) for the progress tagged `tag`."""
    return {"ETag": f'"{tag}"', "Cache-Control": CACHE_CONTROL}


class ProgressPolls:
    """WSGI middleware answering progress polls from one query (see the module's doc)."""

    def __init__(self, app: Callable, settings: Settings, throttle: Throttle) -> None:
        self.app = app
        self.weights = dict(settings.weights)
        self.api_token = settings.api_token
        self.throttle = throttle
        self.cors = bool(settings.cors_origins)
        self.engine = get_engine(settings.database_url, autocommit=True)
        self.fixed_headers: Headers = [("Content-Security-Policy", security.CSP),
                                       *security.FIXED_HEADERS.items()]
        # (video id, tag) -> (headers, body) of a 200 Flask answered; the initial tag is
        # the same for every video that never ran, hence the video id in the key.
        self.answers: LRUCache = LRUCache(CACHED_ANSWERS)
        self._lock = threading.Lock()  # LRUCache is not thread-safe (gthread workers)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        match = _PATH.fullmatch(environ.get("PATH_INFO", "")) if method in ("GET",
                                                                              "HEAD") else None
        if (match is None or not self._authorized(environ)
                or (self.cors and "HTTP_ORIGIN" in environ)):
            return self.app(environ, start_response)
        video_id = match.group(1)
        tag = self._current_tag(video_id)
        if tag is None:
            return self.app(environ, start_response)
        if_none_match = environ.get("HTTP_IF_NONE_MATCH")
        if if_none_match and parse_etags(if_none_match).contains_weak(tag):
            start_response("304 NOT MODIFIED", [*validators(tag).items(), *self.fixed_headers])
            return []
        if method != "GET":
            return self.app(environ, start_response)
        with self._lock:
            known = self.answers.get((video_id, tag))
        if known is not None:
            headers, body = known
            start_response("200 OK", list(headers))
            return [body]
        return self._remember(video_id, environ, start_response)

    def _authorized(self, environ: dict) -> bool:
        """The right token (or none needed), from an address not locked out as far as this
        process knows: asking Redis would cost every poll a round trip, and every wrong
        guess from a locked-out address reaches Flask, which asks it and tells this process.
        (A process that has not yet seen such a request since the lockout began answers a
        right token: a guesser gains at most a few guesses, one per web process.)"""
        if not self.api_token:
            return True
        return (security.bearer_matches(environ.get("HTTP_AUTHORIZATION", ""), self.api_token)
                and not self.throttle.known_locked(environ.get("REMOTE_ADDR")))

    def _current_tag(self, video_id: str) -> str | None:
        """The progress tag of this video, or None (unknown video, database trouble)."""
        if not is_valid_id(video_id):
            return None
        try:
            with self.engine.connect() as conn:
                row = conn.execute(progress.TAG_QUERY, {"video_id": video_id}).first()
                return progress.tag_of_row(conn, row, self.weights) if row is not None else None
        except SQLAlchemyError as exc:  # Flask answers this poll, with its own error if any
            log.debug("poll of %s left to the app: %s", video_id, exc)
            return None

    def _remember(self, video_id: str, environ: dict,
                  start_response: Callable) -> Iterable[bytes]:
        """Let Flask answer, and keep its 200 under the tag in its own ETag (which may be
        newer than the one read above: the progress can move in between)."""
        answered: dict = {}

        def capture(status: str, headers: Headers, exc_info=None):
            answered.update(status=status, headers=list(headers))
            return start_response(status, headers, exc_info)

        result = self.app(environ, capture)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        headers = dict(answered.get("headers", ()))
        etag = headers.get("ETag", "")
        if (answered.get("status", "").startswith("200 ") and etag.startswith('"')
                and "Set-Cookie" not in headers
                and "Access-Control-Allow-Origin" not in headers):
            with self._lock:
                self.answers[(video_id, etag.strip('"'))] = (tuple(answered["headers"]), body)
        return [body]
