"""Domain exceptions raised by services and turned into HTTP errors by the views, the base
of the media and speech tools' errors, and what users see of any other exception."""

from __future__ import annotations

import errno
import logging
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class ToolError(Exception):
    """A media or speech tool failed on this input (an expected failure, not a bug).

    str(exc) is one sentence a user can act on; `detail` is the tool's own output tail
    (server paths already removed), for bug reports, or None.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions are pickled with their args only; keep detail across processes too.
        return type(self), (str(self), self.detail)


class ServiceError(Exception):
    """Base class; `status` is the HTTP status a view should answer with."""

    status = 400
    retry_after: int | None = None  # seconds, for a Retry-After header (a 503)

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class NotFound(ServiceError):
    status = 404


# The 404 for an id that is not one this service hands out (not echoed: it may be long).
NO_SUCH_ID = "no video has this id (ids are UUIDs)"


def no_such_id(video_id: str) -> NotFound:
    """The 404 for an id that is not one this service hands out. A UUID in upper case (as
    Swift's `uuidString` and some .NET code write them) is told so: "ids are UUIDs" left
    such a client wondering what was wrong with the one it had been given."""
    from webapp.services.storage import is_valid_id

    if video_id.isascii() and video_id != video_id.lower() and is_valid_id(video_id.lower()):
        return NotFound("no video has this id: ids are UUIDs written in lower case, and this "
                        f"one is in upper case ({video_id.lower()} in lower case)")
    return NotFound(NO_SUCH_ID)


class Conflict(ServiceError):
    status = 409


class InvalidArgument(ServiceError):
    """An argument of the request the service refuses (422): the API names it in `errors`,
    by location and field, as the 422s of its argument parser do (api.parsing)."""

    status = 422


class InvalidMedia(InvalidArgument):
    pass


class InvalidQuery(InvalidArgument):
    pass


class QueueUnavailable(ServiceError):
    status = 503
    retry_after = 5  # seconds (RETRY_AFTER_SECONDS): the answer's Retry-After


class InsufficientStorage(ServiceError):
    """The server's disk (MEDIA_ROOT, or the database's) is full: 507 Insufficient Storage."""

    status = 507


# What an upload that filled the disk is told: while its body was received
# (webapp.uploads), or while it was stored and recorded (ingest).
UPLOAD_DISK_FULL = ("the server's disk is full: the upload was not stored; send it again "
                    "once space has been freed on the server")
# SQLite's SQLITE_FULL ("database or disk is full") and PostgreSQL's disk_full SQLSTATE.
_SQLITE_FULL = 13
_POSTGRES_DISK_FULL = "53100"


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or the database driver's error a SQLAlchemy error wraps) says a disk is
    full: ENOSPC, a quota exceeded (EDQUOT), SQLite's SQLITE_FULL, PostgreSQL's 53100."""
    error = getattr(exc, "orig", None) or exc
    return ((isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT))
            or getattr(error, "sqlite_errorcode", None) == _SQLITE_FULL
            or getattr(error, "sqlstate", None) == _POSTGRES_DISK_FULL)


DATABASE_UNAVAILABLE = "the database is unavailable; try again in a moment"
# Seconds a 503 asks clients to wait before they try again (Retry-After).
RETRY_AFTER_SECONDS = 5


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot answer now, not that the request or the code
    is wrong: a connection refused, lost or closed by a restart (PostgreSQL, psycopg's
    OperationalError: also a deadlock or a statement timeout), SQLite busy or locked beyond
    the busy timeout. SQLite's other operational errors ("no such table": migrations not
    run) are bugs to report, not outages."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    orig = exc.orig
    if type(orig).__module__.startswith("psycopg"):
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database is busy" in text


def internal_error(log: logging.Logger, exc: BaseException, where: str) -> str:
    """What users see of an unexpected exception: "internal error (reference <id>)".

    Its own text may hold SQL, server paths or settings, so it goes to the log only, with
    its traceback and the same reference, for an operator to find from a user's report.
    """
    reference = uuid.uuid4().hex[:12]
    log.error("internal error (reference %s) %s", reference, where,
              exc_info=(type(exc), exc, exc.__traceback__))
    return f"internal error (reference {reference})"


# An absolute path's folders ("/srv/media/videos/<id>/", also in file: URLs): a "/" that
# does not continue a word or a path, then folder names.
_FOLDERS = re.compile(r"(?<![\w/.~-])/{1,3}(?:[^/\s'\"<>|]+/)+")


def without_paths(text: str, roots: Iterable[Path | str] = ()) -> str:
    """`text` (a tool's message) with absolute paths cut down to their file names; `roots`
    are folders whose paths may hold spaces (MEDIA_ROOT), which the pattern cannot tell."""
    for root in roots:
        for form in {str(root), str(Path(root).resolve())}:
            text = text.replace(form.rstrip("/") + "/", "/")
    return _FOLDERS.sub("", text)
