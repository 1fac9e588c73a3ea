"""Per-app and per-request handles (settings, DB session, storage, Redis) for the views."""

from __future__ import annotations

from flask import Flask, current_app, g
from redis import Redis
from sqlalchemy.orm import Session

from webapp.config import Settings
from webapp.db import session_factory
from webapp.services.queue import connect
from webapp.services.storage import Storage
from webapp.services.workers import WorkerCensus

_KEY = "vidpipe"


class Handles:
    """What one app instance shares between requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = Storage(settings.media_root)
        self.sessions = session_factory(settings.database_url)
        self.redis: Redis = connect(settings.redis_url)
        self.workers = WorkerCensus(self.redis, settings.queue_name)


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions[_KEY] = Handles(settings)

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()


def handles() -> Handles:
    return current_app.extensions[_KEY]


def settings() -> Settings:
    return handles().settings


def storage() -> Storage:
    return handles().storage


def redis() -> Redis:
    return handles().redis


def db() -> Session:
    """The request's database session (closed when the app context ends)."""
    if "db_session" not in g:
        g.db_session = handles().sessions()
    return g.db_session
