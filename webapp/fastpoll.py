"""The hot path of progress polling: `304 Not Modified` without going through Flask.

A poller that already has the current progress sends its ETag in If-None-Match and gets a
bodiless 304 (webapp/api/processing.py, `Progress.get`). That is most polls of a running
task, and all of them once it ended, so this WSGI layer in front of the Flask app answers
exactly those itself: a `GET`/`HEAD /api/v1/videos/<id>/reprocess` whose If-None-Match
holds the current tag, from an authorized client, gets the 304 Flask would send, with the
same headers, after one indexed query (`progress.TAG_QUERY`) on a pooled autocommit
connection. Everything else -- no If-None-Match, a changed progress, an unknown video, a
missing or wrong API token, a database error -- goes to the Flask app untouched, which
answers it as before. The Flask route stays the reference: tests/test_polling.py checks
that both give the same answer.

Measured in bench/polling.py: a conditional poll costs about a third of the CPU time it
costs through Flask (docs/PERFORMANCE.md, section 2).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

from sqlalchemy.exc import SQLAlchemyError
from werkzeug.http import parse_etags

from webapp import security
from webapp.config import Settings
from webapp.db import get_engine
from webapp.services import progress
from webapp.services.storage import is_valid_id

log = logging.getLogger(__name__)

# The Flask route is /api/v1/videos/<video_id>/reprocess (merge_slashes=False).
_PATH = re.compile(r"/api/v1/videos/([^/]+)/reprocess")
CACHE_CONTROL = "no-cache, private"  # always revalidate; never in a shared cache


def validators(tag: str) -> dict[str, str]:
    """The headers of every progress answer (200 or 304) for the progress tagged `tag`."""
    return {"ETag": f'"{tag}"', "Cache-Control": CACHE_CONTROL}


class ConditionalPolls:
    """WSGI middleware: answers conditional polls of an unchanged progress with a 304."""

    def __init__(self, app: Callable, settings: Settings) -> None:
        self.app = app
        self.weights = dict(settings.weights)
        self.api_token = settings.api_token
        self.engine = get_engine(settings.database_url, autocommit=True)
        self.fixed_headers = [("Content-Security-Policy", security.CSP),
                              *security.FIXED_HEADERS.items()]

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if_none_match = environ.get("HTTP_IF_NONE_MATCH")
        if if_none_match and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match and self._authorized(environ):
                tag = self._current_tag(match.group(1))
                if tag is not None and parse_etags(if_none_match).contains_weak(tag):
                    start_response("304 NOT MODIFIED",
                                   [*validators(tag).items(), *self.fixed_headers])
                    return []
        return self.app(environ, start_response)

    def _authorized(self, environ: dict) -> bool:
        return not self.api_token or security.bearer_matches(
            environ.get("HTTP_AUTHORIZATION", ""), self.api_token)

    def _current_tag(self, video_id: str) -> str | None:
        """The progress tag of this video, or None (unknown video, database trouble)."""
        if not is_valid_id(video_id):
            return None
        try:
            with self.engine.connect() as conn:
                row = conn.execute(progress.TAG_QUERY, {"video_id": video_id}).first()
        except SQLAlchemyError as exc:  # Flask answers this poll, with its own error if any
            log.debug("conditional poll of %s left to the app: %s", video_id, exc)
            return None
        return progress.tag_of_row(row, self.weights) if row is not None else None
