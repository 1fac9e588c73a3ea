"""The webhook sender: posts the events of ended runs (webapp/services/webhooks.py).

Runs as a thread of each worker's reconciler process (its own process, not forked into
work-horses), when WEBHOOK_URL is set. Every POLL seconds it looks for events that are due;
before posting one it moves the event's `next_attempt_at` ahead by LEASE in a conditional
UPDATE, so that of several senders (one per worker, on any host) one posts it. A 2xx answer
delivers it; anything else (another status, no answer within the timeout, a refused
connection) is tried again after the next of PAUSES, until the event is GIVE_UP old, when
it is logged and left (`next_attempt_at` NULL, its last error kept). Redirects are not
followed: a receiver that moved must be configured anew. A whole post takes at most
DEADLINE: a receiver that trickles its answer (a byte every few seconds: each read within
the read timeout) held the sender for as long as it went on, and every other event waited.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import requests
from requests.adapters import HTTPAdapter
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from urllib3.connection import HTTPConnection, HTTPSConnection

from webapp.config import Settings
from webapp.models import WebhookEvent, utcnow
from webapp.services.webhooks import SIGNATURE_HEADER, signature

log = logging.getLogger(__name__)

POLL = 0.5  # seconds between looks for due events while there are none
BATCH = 20  # events read per look
LEASE = timedelta(seconds=60)  # longer than a post can take (TIMEOUT)
TIMEOUT = (5, 15)  # connect, read: seconds
DEADLINE = 30.0  # seconds for a whole post, however its answer trickles in
# Pauses after a failed post, the last one repeated: ~1 h to the 10th try, then hourly.
PAUSES = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
GIVE_UP = timedelta(hours=24)
# No event is ever due further ahead than its longest pause (or LEASE): one that is was
# scheduled before the clock went back (a correction of hours), and is due now.
FURTHEST = timedelta(seconds=max(PAUSES)) + LEASE
KEEP = timedelta(days=7)  # events are deleted this long after they were made


# Thread id -> the socket of the post that thread is making (see _Watched).
_SOCKETS: dict[int, socket.socket] = {}


class _WatchedHTTP(HTTPConnection):
    """A connection that leaves its socket in _SOCKETS, for the post's deadline to cut."""

    def connect(self) -> None:
        super().connect()
        _SOCKETS[threading.get_ident()] = self.sock


class _WatchedHTTPS(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _SOCKETS[threading.get_ident()] = self.sock


class _WatchedAdapter(HTTPAdapter):
    def get_connection_with_tls_context(self, *args, **kwargs):
        pool = super().get_connection_with_tls_context(*args, **kwargs)
        pool.ConnectionCls = _WatchedHTTPS if pool.scheme == "https" else _WatchedHTTP
        return pool


class Sender:
    """Posts due events to WEBHOOK_URL; `send_due` is one look, `run` the loop."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.url = settings.webhook_url
        self.secret = settings.webhook_secret
        self.sessions = sessions
        self.http = requests.Session()
        self.http.mount("http://", _WatchedAdapter())
        self.http.mount("https://", _WatchedAdapter())
        # A new connection for every post: the one the deadline watches.
        self.http.headers.update({"User-Agent": "vidpipe-webhooks", "Connection": "close"})

    def run(self, alive: Callable[[], bool], stop: threading.Event | None = None) -> None:
        """Send until alive() is false or `stop` is set; a database outage is waited out."""
        stop = stop or threading.Event()
        down = False
        while alive() and not stop.is_set():
            try:
                sent = self.send_due()
                if down:
                    log.info("webhooks: the database answers again")
                down = False
            except SQLAlchemyError as exc:
                if not down:
                    log.warning("webhooks: database unavailable (%s); trying again",
                                " ".join(str(getattr(exc, "orig", None) or exc).split())[:200])
                down, sent = True, 0
            except Exception:
                log.exception("webhooks: sending failed")
                sent = 0
            if not sent:
                stop.wait(POLL)

    def send_due(self) -> int:
        """Post every event due now that no other sender has taken; how many were posted."""
        now = utcnow()
        with self.sessions() as session:
            due = session.scalars(
                select(WebhookEvent.id)
                .where(WebhookEvent.delivered_at.is_(None), _due(now))
                .order_by(WebhookEvent.next_attempt_at).limit(BATCH)
            ).all()
        return sum(self._send(event_id) for event_id in due)

    def _send(self, event_id: str) -> bool:
        event = self._take(event_id)
        if event is None:  # another sender took it, or delivered it meanwhile
            return False
        body = event.payload.encode()
        headers = {"Content-Type": "application/json",
                   "X-Vidpipe-Event-Id": event.id, "X-Vidpipe-Event-Type": event.type,
                   SIGNATURE_HEADER: signature(self.secret, int(time.time()), body)}
        try:
            with _deadline(DEADLINE) as late:
                resp = self.http.post(self.url, data=body, headers=headers,
                                      timeout=TIMEOUT, allow_redirects=False)
            error = None if 200 <= resp.status_code < 300 else f"answered {resp.status_code}"
        except requests.RequestException as exc:
            error = _cause(exc)
        if late.is_set():
            error = f"no whole answer within {DEADLINE:g} s"
        self._record(event, error)
        return True

    def _take(self, event_id: str) -> WebhookEvent | None:
        """The event, leased to this sender (its next try moved LEASE ahead); None if it is
        not due any more."""
        now = utcnow()
        with self.sessions() as session:
            taken = session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == event_id, WebhookEvent.delivered_at.is_(None),
                       _due(now))
                .values(next_attempt_at=now + LEASE)
                .execution_options(synchronize_session=False))
            session.commit()
            if taken.rowcount != 1:
                return None
            event = session.get(WebhookEvent, event_id)
            session.expunge(event)
            return event

    def _record(self, event: WebhookEvent, error: str | None) -> None:
        now = utcnow()
        tries = event.attempts + 1
        values: dict[str, object] = {"attempts": tries, "last_error": error}
        if error is None:
            values.update(delivered_at=now, next_attempt_at=None)
            log.info("webhook %s (%s of task %s) delivered%s", event.id, event.type,
                     event.task_id, f" on try {tries}" if tries > 1 else "")
        elif now - event.created_at >= GIVE_UP:
            values["next_attempt_at"] = None
            log.error("webhook %s (%s of task %s): %s; given up after %d tries in %s",
                      event.id, event.type, event.task_id, error, tries, GIVE_UP)
        else:
            pause = PAUSES[min(tries, len(PAUSES)) - 1]
            values["next_attempt_at"] = now + timedelta(seconds=pause)
            log.warning("webhook %s (%s of task %s): %s; trying again in %d s", event.id,
                        event.type, event.task_id, error, pause)
        with self.sessions() as session:
            session.execute(update(WebhookEvent).where(WebhookEvent.id == event.id)
                            .values(**values).execution_options(synchronize_session=False))
            session.commit()


def _due(now: datetime):
    """The condition of an event due at `now`: its next try has come, or is further ahead
    than any pause puts it (FURTHEST: set before the clock went back; such an event waited
    out the correction, hours, before)."""
    return or_(WebhookEvent.next_attempt_at <= now,
               WebhookEvent.next_attempt_at > now + FURTHEST)


@contextlib.contextmanager
def _deadline(seconds: float):
    """Within: the socket of this thread's post is shut once `seconds` have passed (its
    reads end at once); the event yielded is set if it was."""
    me, late = threading.get_ident(), threading.Event()

    def cut() -> None:
        sock = _SOCKETS.get(me)
        if sock is not None:
            late.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield late
    finally:
        timer.cancel()
        _SOCKETS.pop(me, None)


def prune(session: Session, now: datetime | None = None) -> int:
    """Delete the events made more than KEEP ago (delivered or given up by then); the
    caller commits. How many were deleted."""
    cutoff = (now or utcnow()) - KEEP
    return session.execute(delete(WebhookEvent).where(WebhookEvent.created_at < cutoff)
                           ).rowcount


def _cause(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connecting timed out"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {TIMEOUT[1]} s"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "the connection failed (refused, reset or the name not found)"
    return f"the request failed ({type(exc).__name__})"
