"""Webhooks: the end of every run, announced to WEBHOOK_URL (README, "Webhooks").

A run that ends (completed, failed or cancelled) writes its event into `webhook_events` in
the very transaction that ends it: an event is never lost (the receiver or the sender down,
a crash after the commit) and never announces what was rolled back. The workers' senders
(jobs/webhooks.py) post it, signed with WEBHOOK_SECRET, until the receiver answers 2xx,
with growing pauses, for a day at most. Delivery is at least once: a receiver may see an
event twice (a sender that died after posting it) and tells them apart by the event's id.

Whether events are written is a process-wide switch, set where each process reads its
settings (`configure`: the web app, each worker and its reconciler): the writes happen deep
in the task's transitions (webapp/services/progress), which know no settings, and a
process without WEBHOOK_URL writes none, so that turning webhooks on later does not post a
backlog of old runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from webapp.config import Settings
from webapp.models import ProcessingTask, SubTask, WebhookEvent, new_id

API = "/api/v1"
TYPES = {"completed": "task.completed", "failed": "task.failed", "cancelled": "task.cancelled"}
SIGNATURE_HEADER = "X-Vidpipe-Signature"
_INSERT = insert(WebhookEvent.__table__)

_enabled = False


def configure(settings: Settings) -> None:
    """Write events from now on in this process (and its forks) if WEBHOOK_URL is set."""
    global _enabled
    _enabled = bool(settings.webhook_url)


def enabled() -> bool:
    return _enabled


def record(db: Session | Connection, task_ids: Iterable[str], now: datetime) -> int:
    """Write the event of each of `task_ids` that has ended, in the caller's transaction
    (after the write that ended it); how many were written."""
    ids = list(task_ids)
    if not _enabled or not ids:
        return 0
    tasks = db.execute(
        select(ProcessingTask.id, ProcessingTask.video_id, ProcessingTask.status,
               ProcessingTask.mode, ProcessingTask.error, ProcessingTask.created_at,
               ProcessingTask.started_at, ProcessingTask.finished_at)
        .where(ProcessingTask.id.in_(ids), ProcessingTask.status.in_(TYPES))
    ).all()
    if not tasks:
        return 0
    steps: dict[str, list[dict]] = {}
    for row in db.execute(select(SubTask.task_id, SubTask.name, SubTask.status, SubTask.error)
                          .where(SubTask.task_id.in_([t.id for t in tasks]))
                          .order_by(SubTask.task_id, SubTask.position)):
        steps.setdefault(row.task_id, []).append(
            {"name": row.name, "status": row.status, "error": row.error})
    rows = []
    for task in tasks:
        event_id = new_id()
        video = f"{API}/videos/{task.video_id}"
        payload = {
            "id": event_id, "type": TYPES[task.status], "created_at": now.isoformat(),
            "data": {
                "task_id": task.id, "video_id": task.video_id, "status": task.status,
                "mode": task.mode, "error": task.error,
                "created_at": _iso(task.created_at), "started_at": _iso(task.started_at),
                "finished_at": _iso(task.finished_at), "subtasks": steps.get(task.id, []),
                "links": {"video": video, "progress": f"{video}/reprocess",
                          "artifacts": f"{video}/artifacts"},
            },
        }
        rows.append({"id": event_id, "type": TYPES[task.status], "task_id": task.id,
                     "payload": json.dumps(payload, ensure_ascii=False), "created_at": now,
                     "attempts": 0, "next_attempt_at": now})
    db.execute(_INSERT, rows)
    return len(rows)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Vidpipe-Signature header of a post: `t=<unix time>,v1=<hex HMAC-SHA256 of
    "<unix time>." + body under WEBHOOK_SECRET>` (the time inside the signed text, so that
    a captured post cannot be replayed later with a fresh time)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
