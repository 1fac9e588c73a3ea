"""gunicorn's threaded worker, accepting a new connection when a thread is free for it.

gunicorn's `gthread` worker accepts every connection it is woken for and queues it for its
thread pool; a kept-alive connection then stays with the worker that accepted it. All
workers wait on the one listening socket and the one already running wins the race, so a
burst of new connections lands on one or two workers: with `wrk -c32`, 30 of the 32
connections on one of the 4 workers, which served them on one core (the GIL) while two
workers had none (docs/PERFORMANCE.md, section 2). The requests on those connections
waited for each other while the other core had little to do: the tail of the latency.

When an accepted connection takes the last free thread of its pool, this worker stops
accepting until a thread is free again, so the next new connection goes to a worker that
can start on it (the 32 connections: from 10/10/7/5 to 9/8/8/7 per worker). Kept-alive
connections are untouched: a worker serves every request on the connections it holds. A
pause lasts ACCEPT_PAUSE_MAX at most, so when every worker is kept saturated by kept-alive
clients a new client still gets in after that long (gthread would have queued it behind
the same requests).
"""

from __future__ import annotations

import time

from gunicorn.workers.gthread import ThreadWorker

# Seconds a saturated worker leaves new connections to the others at most.
ACCEPT_PAUSE_MAX = 0.1


class BalancedThreadWorker(ThreadWorker):
    """`gthread`, pausing accept (ACCEPT_PAUSE_MAX at most) once every thread is busy."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.busy = 0  # connections handed to the thread pool and not finished yet
        self.paused_since: float | None = None  # accept paused for busy threads, since

    def saturated(self) -> bool:
        return self.busy >= self.cfg.threads

    def pause_left(self) -> float:
        """Seconds this worker still leaves new connections to the others."""
        if self.paused_since is None or not self.saturated():
            return 0.0
        return max(0.0, self.paused_since + ACCEPT_PAUSE_MAX - time.monotonic())

    def set_accept_enabled(self, enabled: bool) -> None:
        # gthread's loop enables accepting whenever the worker holds fewer than
        # worker_connections; here a thread must also be free, or the pause be over.
        if enabled and self.pause_left() > 0:
            enabled = False
        if enabled:
            self.paused_since = None
        super().set_accept_enabled(enabled)

    def accept(self, listener) -> None:
        super().accept(listener)
        if self.saturated():  # that was the last free thread: leave the next to the others
            self.paused_since = time.monotonic()
            self.set_accept_enabled(False)

    def enqueue_req(self, conn) -> None:
        self.busy += 1
        super().enqueue_req(conn)

    def finish_request(self, conn, fs) -> None:
        self.busy -= 1
        super().finish_request(conn, fs)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # Wake up when the pause ends, to accept again (gthread's loop waits up to 1 s).
        left = self.pause_left()
        if not self._accepting and left > 0:
            timeout = min(timeout, left)
        super().wait_for_and_dispatch_events(timeout)
