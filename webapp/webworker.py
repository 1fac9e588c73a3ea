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

A poll that arrives on a kept-alive connection (a GET or HEAD of a path of accesslog's
POLL_PATH, its header whole, no body) is answered on the worker's event-loop thread itself.
gthread hands every request to a pool thread and the connection back to the loop after
it: two thread wake-ups and two waits for the GIL per request, which made vidpipe's p99
under `wrk -c32` twice a sync worker's (docs/PERFORMANCE.md, section 2). A poll costs
less than those hand-overs (a query of the progress tag, or a cached answer); the loop
serves the connections that are ready one after another, so none waits for another's
next request. Uploads, triggers, pages and every first request of a connection still go
to the pool, where one of them can take its time without holding the others.

A connection that ends after its request (`Connection: close`, an error) is closed the
graceful way, by gthread's code on the event-loop thread: its FIN sent, then up to 2 s of
waiting for the client's. A client that reads its answer and keeps the socket open held the
whole worker for those 2 s (every poll of every client it holds, and its accepting), and a
few such clients a second could hold them all. Those waits now happen on a small pool of
their own (CLOSERS threads).

The app, once loaded, is frozen out of the garbage collector (gc.freeze: what start-up made
lives as long as the process). A worker's exit spent 0.3 to 1.5 s
of CPU collecting the objects of the app's ~870 modules one last time, 4 workers at once on
2 cores: that was most of the 2 to 6 s a stop (Ctrl-C of `make run`) took the web side.
Frozen, the exit takes about 0.1 s, and a full collection while serving skips them too.
The rest of such a stop was a connection that had sent nothing yet (browsers open spare
ones ahead of need): gthread's thread waits up to 5 s for its first bytes, and a stopping
worker waited for that thread. A stop now closes it within SILENT_CHECK: no request of it
can be lost. Requests in progress are still waited for (graceful_timeout), and kept-alive
connections get gthread's short linger, in which a request is answered with
`Connection: close` (at most WEB_KEEPALIVE, 2 s).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import signal
import socket
import struct
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

from gunicorn import util
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.gthread import _DEFER, DEFAULT_WORKER_DATA_TIMEOUT, TConn, ThreadWorker

from webapp import stopsignals
from webapp.accesslog import POLL_PATH

# Seconds a saturated worker leaves new connections to the others at most.
ACCEPT_PAUSE_MAX = 0.1
# Bytes looked at, without taking them, to tell a poll from other requests.
PEEK_BYTES = 4096
# Seconds a write of a poll's answer on the event loop waits for a client that takes none
# of it (the kernel's limit on each send; an answer that fits the socket buffer, as polls
# do, is one send that never waits).
INLINE_SEND_TIMEOUT = 1.0
_SEND_TIMEOUT = struct.pack("ll", int(INLINE_SEND_TIMEOUT), 0)
_NO_SEND_TIMEOUT = struct.pack("ll", 0, 0)
# Seconds between a stopping worker's looks at a new connection that has sent nothing.
SILENT_CHECK = 0.1
# Threads that wait for clients' FIN on graceful closes, off the event loop (a close that
# finds them all waiting queues for one: its socket is closed up to 2 s later).
CLOSERS = 2


def waiting_poll(head: bytes) -> bool:
    """Whether `head`, the bytes waiting on a connection, is one whole bodiless poll.

    A GET or HEAD of a progress poll (accesslog.POLL_PATH), its header
    complete, nothing after it and no body announced. Anything else (an upload, a page, a
    request still arriving, pipelined requests, an upgrade) goes to the thread pool.
    """
    end = head.find(b"\r\n\r\n")
    if end < 0 or end + 4 != len(head):
        return False
    line, _, headers = head[:end].partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD") or not parts[2].startswith(b"HTTP/1."):
        return False
    if not POLL_PATH.fullmatch(parts[1].split(b"?", 1)[0].decode("latin-1")):
        return False
    lowered = headers.lower()
    return not any(name in lowered for name in (b"content-length", b"transfer-encoding",
                                                 b"upgrade", b"expect"))


class BalancedThreadWorker(ThreadWorker):
    """`gthread`, pausing accept (ACCEPT_PAUSE_MAX at most) once every thread is busy."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.busy = 0  # connections handed to the thread pool and not finished yet
        self.quitting = False  # a SIGINT or SIGQUIT came: on its way out
        self.loop_ended = False  # gthread's run() has returned (or raised)
        self.paused_since: float | None = None  # accept paused for busy threads, since
        self.closers: ThreadPoolExecutor | None = None  # made in the worker process

    def load_wsgi(self) -> None:
        super().load_wsgi()
        gc.freeze()  # what start-up made lives as long as the process (see above)

    def handle_quit(self, sig, frame) -> None:
        """SIGINT or SIGQUIT: gthread's quick exit, once, and from the event loop. They come
        in twos: Ctrl-C of gunicorn in a terminal reaches the worker (SIGINT) and the master,
        which then sends its workers SIGQUIT. gunicorn's handler ran again for each, inside
        the previous one's 0.1 s sleep or during the exit itself (a SystemExit in the atexit
        callbacks); one that came after Python had put the default handlers back killed the
        worker by SIGQUIT (the master: "Worker (pid:…) was sent SIGQUIT!"), and a burst of
        them nested the handler until "Error: maximum recursion depth exceeded". The later
        ones are blocked, and one already on its way does nothing (as in the job worker and
        its reconciler).

        gthread's handler also shut the thread pool down and raised SystemExit wherever
        this thread was. In the pool's `submit` (a new connection, starting a thread) that
        hung the worker for good: on the lock `shutdown` takes, which `submit` held; or, the
        SystemExit raised as the new thread started, before the pool had recorded it, at the
        exit, which waited for that thread, never told to end. The exit is raised on the
        event loop instead, between two events (the loop wakes up for it at once); Python's
        exit ends the pool's threads (concurrent.futures' atexit), after the requests in
        progress, as before."""
        if self.quitting:
            return
        self.quitting = True
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGQUIT,
                                                  signal.SIGTERM})
        self.alive = False
        self.cfg.worker_int(self)
        if not self.loop_ended:  # else the worker is exiting already, with status 0
            self.method_queue.defer(sys.exit, 0)

    def get_thread_pool(self) -> ThreadPoolExecutor:
        # Its threads leave the stop signals to the main thread (webapp/stopsignals.py).
        return ThreadPoolExecutor(self.cfg.threads, initializer=stopsignals.block_in_this_thread)

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.loop_ended = True  # the loop's pipe is closed: nothing more is deferred

    def handle(self, conn):
        """gthread's, but a new connection that has sent nothing is closed once the worker
        stops, instead of holding the stop for the rest of gthread's 5 s wait for it."""
        if not (conn.initialized or conn.data_ready):
            deadline = time.monotonic() + DEFAULT_WORKER_DATA_TIMEOUT
            while not conn.wait_for_data(min(SILENT_CHECK, deadline - time.monotonic())):
                if not self.alive:
                    conn.silent = True  # nothing to read: closed without lingering
                    return False
                if time.monotonic() >= deadline:
                    return _DEFER  # gthread's: the connection waits on the event loop
        return super().handle(conn)

    def handle_error(self, req, client, addr, exc) -> None:
        """A request line or header over gunicorn's limits (limit_request_line, 4094 bytes;
        limit_request_fields, 100; limit_request_field_size, 8190 bytes) is refused before
        the app sees it: gunicorn's answer was an HTML page ("<h1><p>URI Too Long</p></h1>")
        without the security headers, where every other error of the API is JSON. The same
        414 or 431, in the API's error shape with the headers every answer has (the path
        is not read yet, so the pages get it too); anything else is gunicorn's."""
        if not isinstance(exc, LimitRequestLine | LimitRequestHeaders):
            super().handle_error(req, client, addr, exc)
            return
        from webapp.security import CSP, FIXED_HEADERS  # (loaded with the app by now)

        self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        if isinstance(exc, LimitRequestLine):
            code, status = 414, "URI Too Long"
            size = (f" is {exc.size:,} bytes," if isinstance(exc.size, int) else " is")
            limit = exc.max_size or self.cfg.limit_request_line
            message = (f"the request line (method, path and query string){size} more than "
                       f"this server reads ({limit:,} bytes): shorten the URL (no request "
                       "of the API needs one this long)")
        else:
            code, status = 431, "Request Header Fields Too Large"
            message = (f"the request's header fields are more or larger than this server "
                       f"reads (at most {self.cfg.limit_request_fields} fields of at most "
                       f"{self.cfg.limit_request_field_size:,} bytes each): send fewer or "
                       "shorter ones")
        body = json.dumps({"code": code, "message": message, "status": status},
                          separators=(",", ":")).encode() + b"\n"  # as Flask writes it
        headers = {"Connection": "close", "Content-Type": "application/json",
                   "Content-Length": str(len(body)), "Content-Security-Policy": CSP,
                   **FIXED_HEADERS}
        head = f"HTTP/1.1 {code} {status}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except Exception:
            self.log.debug("Failed to send error message.")

    def close_connection(self, conn, graceful: bool = False) -> None:
        """TConn.close, its graceful wait handed to the closer threads."""
        if not graceful or getattr(conn, "silent", False):
            TConn.close(conn)
            return
        if self.closers is None:
            self.closers = ThreadPoolExecutor(CLOSERS, thread_name_prefix="closer",
                                              initializer=stopsignals.block_in_this_thread)
        try:
            self.closers.submit(TConn.close, conn, True)
        except RuntimeError:  # the pool is shut down: the worker is exiting
            TConn.close(conn)

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
        self._finish(conn, fs)

    def _finish(self, conn, fs) -> None:
        # gthread ends a connection that is not kept alive with conn.close(graceful=True),
        # here on the event loop's thread: that close goes to the closer threads instead.
        if "close" not in vars(conn):  # once per connection
            conn.close = functools.partial(self.close_connection, conn)
        ThreadWorker.finish_request(self, conn, fs)

    def on_client_socket_readable(self, conn, client) -> None:
        # A kept-alive connection's next request is a poll: answer it here, on the event
        # loop's thread, instead of handing it to a pool thread and back (two thread
        # wake-ups and GIL hand-overs per request: the tail of the latency under load).
        if not (self.alive and conn.initialized and not conn.is_http2
                and not conn.parser.unreader.buf.getvalue() and self._poll_waiting(conn)):
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        # A client that sends polls but reads no answers must not hold the loop: a write
        # it takes nothing of fails after INLINE_SEND_TIMEOUT and the connection is closed.
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _SEND_TIMEOUT)
            result = self.handle(conn)  # answers errors itself, as on a pool thread
        except Exception:  # an error here must not end the loop, and so the worker
            result = False
        with contextlib.suppress(OSError):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _NO_SEND_TIMEOUT)
        if not result:
            # Closed at once: gthread's graceful close would linger on this thread for the
            # client's FIN (2 s at most). Nothing unread is left behind the poll, so the
            # answer, if any, is not cut off by a reset.
            self.nr_conns -= 1
            conn.close()
            return
        done: Future = Future()
        done.set_result(result)
        self._finish(conn, done)  # not `busy`: no pool thread was used

    @staticmethod
    def _poll_waiting(conn) -> bool:
        try:
            return waiting_poll(conn.sock.recv(PEEK_BYTES, socket.MSG_PEEK))
        except OSError:
            return False  # the pool thread meets the error and closes the connection

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # Wake up when the pause ends, to accept again (gthread's loop waits up to 1 s).
        left = self.pause_left()
        if not self._accepting and left > 0:
            timeout = min(timeout, left)
        super().wait_for_and_dispatch_events(timeout)
