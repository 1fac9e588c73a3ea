"""What the web process and the workers check before they start, beyond the settings: that
MEDIA_ROOT can be written and that the database opens and is at this code's migration.

Each of these failed later, and once per request or step: a web process whose MEDIA_ROOT it
could not write answered every upload 500 with a traceback while /healthz said "ok"; a SQLite
file in a folder it could not write (SQLite keeps its write-ahead log beside it) made every
page a 500; a database not yet migrated, or migrated by an older vidpipe (a `git pull`
without `make migrate`, or a worker host upgraded before the web host), failed requests and
steps on a missing table or column, each step using up its retries.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
from pathlib import Path

from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from webapp.config import PROJECT_ROOT, ConfigError, Settings, shown_database_url, sqlite_file
from webapp.db import dispose, get_engine


def check(settings: Settings) -> str | None:
    """ConfigError for what would fail every request or step; a warning (returned) when the
    database server does not answer now: an outage may end, so the process starts anyway."""
    check_media_root(settings.media_root)
    return check_database(settings.database_url)


# Errors of a disk (or the user's quota) that is full: no permission would help.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def check_media_root(media_root: Path) -> None:
    """ConfigError unless a file can be made in MEDIA_ROOT. A disk so full that none can
    (out of inodes, or ext4 at 100 %) was told to be made writable. One that still makes
    an empty file passes: the web process serves what it has, each step that cannot write
    fails in a sentence, and /healthz says the disk is full (webapp/health.py); a worker
    that stopped there would stop every process `make run` started."""
    try:
        media_root.mkdir(parents=True, exist_ok=True)
        write_probe(media_root, ".writable-", 0)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise ConfigError(f"MEDIA_ROOT {media_root} is on a disk that is full "
                              f"({exc.strerror or exc}): uploads and outputs go there; free "
                              f"space on it, or set MEDIA_ROOT to a folder on a disk with "
                              f"room.") from None
        raise ConfigError(f"MEDIA_ROOT {media_root} cannot be written by this user "
                          f"({exc.strerror or exc}): uploads and outputs go there; make it "
                          f"writable, or set MEDIA_ROOT to a folder that is.") from None


def write_probe(folder: Path, prefix: str, size: int) -> None:
    """Make a file of `size` bytes in `folder` and remove it; OSError if either fails. Not
    through a buffered file object: its close() writes again, and a second ENOSPC there
    left the file behind."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=prefix)
    try:
        if size:
            os.write(fd, bytes(size))
    finally:
        os.close(fd)
        os.unlink(name)


# What a PostgreSQL server says when DATABASE_URL itself is wrong, and what to do. A worker
# started anyway, saying the database "does not answer now", and failed every step.
REFUSALS = (
    (re.compile(r'database "[^"]*" does not exist'),
     "has no such database: create it (createdb), or correct the database's name in it"),
    (re.compile(r'role "[^"]*" does not exist'),
     "has no such user: create it (createuser), or correct the user in it"),
    (re.compile(r"password authentication failed|no password supplied|no pg_hba\.conf entry"),
     "refuses its user and password: correct them in DATABASE_URL, or let them in "
     "(pg_hba.conf)"),
)


def _refused(said: str) -> str | None:
    for pattern, what in REFUSALS:
        if pattern.search(said):
            return what
    return None


NOT_MIGRATED = ("the database at {shown} has no vidpipe tables yet: run `make migrate` "
                "(alembic upgrade head) first.")


def _sqlite_file_missing(url: str) -> bool:
    """A SQLite file not there, in a folder that is (a folder that is not is a sentence of
    its own: config.check_sqlite_folder, or the open's error below)."""
    path = sqlite_file(url)
    return path is not None and path.parent.is_dir() and not path.exists()


def check_database(url: str) -> str | None:
    alembic_log = logging.getLogger("alembic")  # its INFO lines are for `make migrate`
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)
    try:
        return _check_database(url)
    finally:
        alembic_log.setLevel(level)


def _check_database(url: str) -> str | None:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(Config(str(PROJECT_ROOT / "alembic.ini")))
    needed = set(script.get_heads())
    shown = shown_database_url(url)
    if _sqlite_file_missing(url):  # opening it would make an empty one: nothing is there
        raise ConfigError(NOT_MIGRATED.format(shown=shown))
    try:
        with get_engine(url).connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except (SQLAlchemyError, OSError) as exc:  # OSError: a SQLite folder not made
        said = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        said = " ".join(str(getattr(said, "orig", None) or said).split())[:300]
        if make_url(url).get_backend_name() == "sqlite":  # a file here: no outage to wait out
            raise ConfigError(f"the SQLite database {make_url(url).database} cannot be opened "
                              f"({said}): this user must be able to write the file and its "
                              f"folder (SQLite writes its log beside it).") from None
        refusal = _refused(said)
        if refusal:  # it answered: waiting would not help
            raise ConfigError(f"the PostgreSQL server of DATABASE_URL {shown} answers, but "
                              f"{refusal} ({said}).") from None
        return f"the database at {shown} does not answer now ({said})"
    finally:
        dispose(url)  # nothing of this check is kept, nor handed to forked processes
    if current == needed:
        return None
    if not current:
        raise ConfigError(NOT_MIGRATED.format(shown=shown))
    known = {revision.revision for revision in script.walk_revisions()}
    at, need = ", ".join(sorted(current)), ", ".join(sorted(needed))
    if current - known:
        raise ConfigError(f"the database at {shown} is at migration {at}, which this vidpipe "
                          f"does not know (it needs {need}): a newer vidpipe migrated it; "
                          f"run that version here too.")
    raise ConfigError(f"the database at {shown} is at migration {at}, but this vidpipe needs "
                      f"{need}: run `make migrate` (on the web host, when workers run "
                      f"elsewhere), then start this again.")
