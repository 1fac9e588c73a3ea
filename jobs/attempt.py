"""Beside a step's work: writes its progress and stops it once the attempt is not wanted."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from webapp.services import progress

log = logging.getLogger(__name__)
T = TypeVar("T")


class AttemptWatch:
    """A thread in the work-horse that, every `interval` seconds while the step works:

    - writes the step's latest progress if it moved (so at most one write per interval,
      whatever rate the tool reports at). A write that fails (database locked, restarting)
      is logged and simply tried again at the next tick: it never fails the step;
    - asks the database whether this attempt is still the step's running attempt. Once it
      is not (cancelled, replaced by a forced run, taken over by a retry), it sets `stop`:
      the step's tools are killed (webapp.services.ffrun.stopping, transcription's `stop`)
      and the attempt's files are never published. A check that fails decides nothing.

    Call it with a fraction 0-1 as the step's progress callback, or `guess` with one that
    is a guess, not a measure (whisper's position extrapolated before its first window
    reports a real one): a guess moves the bar, but the ETA measures a step's pace only
    from its first measured report (webapp/services/eta.py).
    """

    def __init__(self, sessions: sessionmaker[Session], task_id: str, step: str, attempt: int,
                 interval: float) -> None:
        self.task_id, self.step, self.attempt = task_id, step, attempt
        self.stop = threading.Event()
        self.writes = 0
        self.failed_ticks = 0
        self._sessions = sessions
        self._interval = max(0.05, interval)
        self._latest = 0.0
        self._measured = False  # whether a measured report came (then every write is one)
        self._written = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"watch-{step}-{attempt}")

    def __call__(self, fraction: float) -> None:
        self.guess(fraction)
        self._measured = True

    def guess(self, fraction: float) -> None:
        self._latest = max(self._latest, round(min(1.0, max(0.0, fraction)) * 100.0, 2))

    def __enter__(self) -> AttemptWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with self._sessions() as session:
            while not self._done.wait(self._interval):
                self._tick(session)

    def _tick(self, session: Session) -> None:
        try:
            value, measured = self._latest, self._measured
            if value > self._written:
                progress.report_progress(session, self.task_id, self.step, self.attempt, value,
                                         measured=measured)
                self._written = value
                self.writes += 1
            current = progress.attempt_is_current(session, self.task_id, self.step,
                                                  self.attempt)
            # A worker on another host has the web app complete the attempt while this
            # watch still runs (jobs/remote.py, publish): done, not unwanted.
            completed = not current and progress.attempt_completed(
                session, self.task_id, self.step, self.attempt)
        except SQLAlchemyError as exc:
            _rollback(session)
            self.failed_ticks += 1
            if self.failed_ticks == 1 or self.failed_ticks % 20 == 0:
                log.warning("%s of task %s: progress not written (%s); trying again",
                            self.step, self.task_id, _short(exc))
            return
        if completed:
            self._done.set()
        elif not current:
            log.info("%s of task %s: attempt %d is no longer wanted; stopping it",
                     self.step, self.task_id, self.attempt)
            self.stop.set()
            self._done.set()


def with_retries(sessions: sessionmaker[Session], write: Callable[[Session], T], what: str,
                 delays: tuple[float, ...] = (0.5, 1, 2, 4, 8, 15, 15, 15)) -> T:
    """Run a write that must happen (a step's start or end), retrying a failing database
    with backoff (about a minute in all); the last failure is raised."""
    for delay in (*delays, None):
        try:
            with sessions() as session:
                return write(session)
        except SQLAlchemyError as exc:
            if delay is None:
                raise
            log.warning("%s: database error (%s); trying again in %.1f s", what, _short(exc),
                        delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _rollback(session: Session) -> None:
    try:
        session.rollback()
    except SQLAlchemyError:
        session.invalidate()


def _short(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
