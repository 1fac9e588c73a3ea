"""GET /healthz: is the database answering, is Redis answering, how many workers listen."""

from __future__ import annotations

from flask import Blueprint
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from webapp import extensions as ext
from webapp.services.workers import live_workers

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 when the database and Redis answer, 503 naming what is down.

    `workers` counts the live RQ workers on the queue (null when Redis is down). Zero
    workers is still a 200: this web process is healthy, and the UI tells users that
    their tasks wait for a worker.
    """
    checks, workers = {}, None
    try:
        ext.db().execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        ext.redis().ping()
        workers = live_workers(ext.redis(), ext.settings().queue_name)
        checks["redis"] = "ok"
    except RedisError as exc:
        checks["redis"] = f"down: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if healthy else "unavailable", "checks": checks, "workers": workers}
    return body, 200 if healthy else 503
