"""The web worker (webapp/webworker.py): gunicorn's gthread worker that leaves new
connections to a worker with a free thread, so a burst of kept-alive clients is spread over
the workers, and that still lets a new client in when every thread is kept busy.

Real gunicorn processes serving tests/sleepy_app.py (a request sleeps as long as asked and
answers the pid of the worker that served it)."""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import procs
from tests.conftest import migrate
from tests.helpers import free_port, wait_for
from tests.test_concurrency import web_server
from webapp.config import PROJECT_ROOT
from webapp.db import dispose

WORKER = "webapp.webworker.BalancedThreadWorker"
HAMMERING = 20.0  # seconds kept-alive clients keep a worker's thread busy, at most
LINGER = 2.0  # seconds a graceful close waits for the client's FIN (gthread's, at most)


@contextlib.contextmanager
def sleepy_server(tmp_path: Path, worker: str, workers: int,
                  threads: int) -> Iterator[int]:
    port = free_port()
    # gunicorn reads the project's gunicorn.conf.py from its working folder, whose start-up
    # checks want a database at this code's migration and a writable MEDIA_ROOT: a fresh
    # clone has neither at their defaults.
    url = f"sqlite:///{tmp_path / 'vidpipe.db'}"
    migrate(url)
    dispose(url)
    env = {**os.environ, "DATABASE_URL": url, "MEDIA_ROOT": str(tmp_path / "media")}
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", worker, "-w", str(workers), "--threads",
         str(threads), "--keep-alive", "5", "-b", f"127.0.0.1:{port}", "tests.sleepy_app:app"],
        cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=env)
    try:
        wait_for(lambda: proc.poll() is not None or _answers(port), timeout=30, interval=0.1,
                 what="gunicorn answering")
        assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
        yield port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def _answers(port: int) -> bool:
    try:
        return get(http.client.HTTPConnection("127.0.0.1", port, timeout=5), 0) > 0
    except OSError:
        return False


def get(conn: http.client.HTTPConnection, ms: int) -> int:
    """One request on the connection (kept open): the pid that served it."""
    conn.request("GET", f"/?ms={ms}")
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    return int(body)


def test_the_project_config_uses_this_worker():
    namespace = {"__file__": str(PROJECT_ROOT / "gunicorn.conf.py")}
    exec(compile((PROJECT_ROOT / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"),
         namespace)
    assert namespace["worker_class"] == WORKER
    assert namespace["threads"] >= 2  # a thread stays free for polls beside an upload


def test_the_loaded_app_is_frozen_out_of_the_garbage_collector(tmp_path):
    """A stop (Ctrl-C of `make run`) took the web side 2 to 6 s with 4 workers, most of it
    Python's last collection of the app's objects in every exiting worker; frozen after
    loading, they are skipped (how long the stop takes is measured, not asserted here)."""
    with sleepy_server(tmp_path, WORKER, workers=1, threads=2) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/gc")
        frozen = int(conn.getresponse().read())
    assert frozen > 10_000, f"only {frozen} objects frozen in the worker"


QUIT_ROUNDS = 8  # workers told to quit, one after another (the master starts the next)


def test_a_worker_told_to_quit_quits_once_whatever_it_was_doing(tmp_path):
    """Ctrl-C of gunicorn in a terminal: SIGINT reaches the worker and the master, which then
    sends its workers SIGQUIT. gunicorn's handler ran again for each such signal, during the
    previous one's sleep or the exit itself: one after Python's exit had put the default
    handlers back killed the worker by SIGQUIT ("was sent SIGQUIT!"), and a burst nested the
    handler into "Error: maximum recursion depth exceeded" (every time with SIGQUIT sent
    every 0.5 ms until it ends, as here). And one that came as the worker took a new
    connection (starting a thread for it) hung the worker for good, in gthread's handler.

    Each round: a new connection's request and the SIGINT at once, then SIGQUIT until the
    worker has ended, within 10 s (the master's graceful_timeout is 30 s)."""
    log = tmp_path / "gunicorn.log"
    with sleepy_server(tmp_path, WORKER, workers=1, threads=2) as port:
        master = procs.parent(get(http.client.HTTPConnection("127.0.0.1", port, timeout=10), 0))
        told = []
        for _ in range(QUIT_ROUNDS):
            # The worker that answers (the only one) is past its start-up. Its "Booting
            # worker" line was not: gunicorn puts the default handlers back before it
            # installs its own, and a loaded machine's worker met the SIGQUITs there and
            # died by one ("was sent SIGQUIT!"), gunicorn's start-up, not this test's case.
            ready = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            pid = get(ready, 0)
            ready.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/?ms=0")  # accepted, handed to a new thread, as ...
            os.kill(pid, signal.SIGINT)  # ... the worker is told to quit
            told.append(pid)
            deadline = time.monotonic() + 10
            while procs.running(pid) and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
                time.sleep(0.0005)
            assert not procs.running(pid), (
                f"the worker still ran 10 s after SIGINT:\n{log.read_text()[-3000:]}")
            conn.close()
            wait_for(lambda pid=pid: f"Worker (pid:{pid})" in log.read_text()
                     or pid not in procs.children(master), timeout=10,
                     what="the master reaping the worker")
    said = log.read_text()  # (the last worker may be booting as the server stops)
    for pid in told:
        assert f"Worker exiting (pid: {pid})" in said, said[-3000:]
        assert f"Worker (pid:{pid}) was sent" not in said, said[-3000:]
    assert "Traceback" not in said and "Error:" not in said, said[-3000:]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_web_master_signalled_again_as_it_ends_ends_with_0(settings, tmp_path):
    """Ctrl-C of gunicorn in a terminal (SIGINT to its group), then more: a service manager's
    SIGTERM, a second Ctrl-C. One that came after Python's exit had put the default
    handlers back ended the master by it: status -15, every time with SIGTERM sent every
    0.5 ms until it ends, as here."""
    with web_server(tmp_path) as (_, master):
        procs.signal_storm(master, signal.SIGINT, signal.SIGTERM, group=True, seconds=30)
        code = master.wait(10)
    said = (tmp_path / "gunicorn.log").read_text()
    assert code == 0, said[-3000:]
    assert "Shutting down: Master" in said and "Traceback" not in said, said[-3000:]


def test_a_burst_of_kept_alive_clients_is_spread_over_the_workers(tmp_path):
    """8 clients connect at once, then each sends a request that holds a thread for 0.3 s:
    each of the 4 workers takes the 2 its threads can start (gthread: the first worker
    awake takes most of them, e.g. 30 of 32 under wrk). The second request of a client is
    served by the same worker: its connection was kept."""
    clients = 8
    with sleepy_server(tmp_path, WORKER, workers=4, threads=2) as port:
        # Every worker is up (gunicorn starts them one after another): each has answered.
        seen: set[int] = set()
        wait_for(lambda: seen.update(burst(port, clients, 50)) or len(seen) == 4, timeout=30,
                 interval=0, what="the 4 workers answering")
        served = burst(port, clients, 300, again=True)
    per_worker = collections.Counter(served)
    assert sorted(per_worker.values()) == [2, 2, 2, 2], per_worker


def burst(port: int, clients: int, ms: int, again: bool = False) -> list[int]:
    """`clients` connections opened at once, then a request on each holding a thread for
    `ms`: the pids that served them. With `again`, a second request on each connection is
    served by the same worker (the connection was kept)."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30)
             for _ in range(clients)]
    served = [0] * clients
    try:
        for conn in conns:  # at once: the kernel queues them for the workers to accept
            conn.connect()

        def client(i: int) -> None:
            served[i] = get(conns[i], ms)
            if again and get(conns[i], 0) != served[i]:
                served[i] = -1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for conn in conns:
            conn.close()
    assert all(pid > 0 for pid in served), served  # answered, on the same connection
    return served


def test_a_new_client_gets_in_while_kept_alive_clients_keep_every_thread_busy(tmp_path):
    """One worker with one thread, two clients sending request after request on their
    kept connections (the thread never free); a new client is answered while they go on,
    after the worker's pause (ACCEPT_PAUSE_MAX, 0.1 s) at most, not when the others stop."""
    from webapp.webworker import ACCEPT_PAUSE_MAX

    answered = threading.Event()
    with sleepy_server(tmp_path, WORKER, workers=1, threads=1) as port:
        def hammer() -> None:
            # Until the new client is answered; a worker that left it out lets it in only
            # once the others stop, here after HAMMERING seconds.
            give_up = time.monotonic() + HAMMERING
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                while not answered.is_set() and time.monotonic() < give_up:
                    get(conn, 20)
            finally:
                conn.close()

        hammers = [threading.Thread(target=hammer) for _ in range(2)]
        for t in hammers:
            t.start()
        try:
            time.sleep(1)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HAMMERING + 30)
            started = time.monotonic()
            get(conn, 0)
            waited = time.monotonic() - started
            hammering = [t.is_alive() for t in hammers]
            conn.close()
        finally:
            answered.set()
            for t in hammers:
                t.join(30)
    # Whatever the machine's speed: answered while both others still kept the thread busy.
    assert hammering == [True, True], f"answered once the others stopped, after {waited:.2f} s"
    # The pause is 0.1 s; 20 of them leave a loaded machine's scheduling room.
    assert waited < 20 * ACCEPT_PAUSE_MAX, f"the new client waited {waited:.2f} s"


def thread_of(conn: http.client.HTTPConnection, path: str) -> str:
    """One request on the kept connection: the name of the thread that served it."""
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    return body.decode().strip()


def test_polls_on_a_kept_connection_are_answered_on_the_event_loop(tmp_path):
    """A poll arriving on a kept-alive connection is served by the worker's main thread,
    without the hand-over to a pool thread and back; a new connection's first request and
    any other request go to the pool as before."""
    with sleepy_server(tmp_path, WORKER, workers=1, threads=2) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            first = thread_of(conn, "/healthz")
            assert first.startswith("ThreadPoolExecutor"), first  # a new connection
            assert [thread_of(conn, "/healthz") for _ in range(3)] == ["MainThread"] * 3
            assert thread_of(conn, "/page").startswith("ThreadPoolExecutor")
            assert thread_of(conn, "/healthz?x=1") == "MainThread"
            conn.request("HEAD", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b""
        finally:
            conn.close()


def test_a_client_that_reads_no_answer_does_not_hold_the_event_loop(tmp_path):
    """A poll whose answer the client never reads (here 64 MB, more than the socket buffers
    hold) is given up and its connection closed once a write waited INLINE_SEND_TIMEOUT: a
    new client of the same worker is answered after a few seconds at most (the buffers
    take a little more twice, here), not when the first one reads."""
    from webapp.webworker import INLINE_SEND_TIMEOUT

    size = 64 * 1024 * 1024
    with sleepy_server(tmp_path, WORKER, workers=1, threads=1) as port:
        stuck = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            thread_of(stuck, "/healthz")  # the connection is now kept alive
            stuck.request("GET", f"/healthz?bytes={size}")  # and its answer left unread
            # Its first bytes here mean the event loop is in the write the client takes
            # nothing of. A fixed 0.3 s was not that: a pool thread that handed the kept
            # connection back to the loop late (a loaded machine) let the new client in
            # first, and the test then read the whole answer itself.
            # poll, not select: select refuses descriptors past 1023, which the whole
            # suite's open files and sockets reach ("filedescriptor out of range")
            answer = select.poll()
            answer.register(stuck.sock, select.POLLIN)
            wait_for(lambda: answer.poll(0), timeout=30, interval=0.01,
                     what="the worker writing the unread answer")
            other = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            started = time.monotonic()
            assert get(other, 0) > 0
            waited = time.monotonic() - started
            other.close()
            resp = stuck.getresponse()
            with contextlib.suppress(http.client.IncompleteRead, ConnectionError):
                got = len(resp.read())
                raise AssertionError(f"the whole answer came ({got} bytes)")
        finally:
            stuck.close()
    assert waited < 4 * INLINE_SEND_TIMEOUT + 1, f"the new client waited {waited:.2f} s"
    # The log says so in one line, not as a server error with its traceback.
    log = (tmp_path / "gunicorn.log").read_text()
    assert "A client read none of an answer within the send timeout" in log, log[-3000:]
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]


def test_a_client_that_keeps_a_closed_connection_open_does_not_hold_the_event_loop(tmp_path):
    """A request with `Connection: close` is answered and its connection closed gracefully:
    the server sends its FIN and waits up to 2 s for the client's. A client that reads its
    answer but never closes must not stop the worker for those 2 s: polls of another
    client on the same single-threaded worker are answered meanwhile."""
    with sleepy_server(tmp_path, WORKER, workers=1, threads=1) as port:
        poller = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        lingering = []
        try:
            thread_of(poller, "/healthz")  # kept alive: the next polls go to the loop
            slowest = 0.0
            for _ in range(3):
                closing = socket.create_connection(("127.0.0.1", port), timeout=30)
                lingering.append(closing)
                closing.sendall(b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert closing.recv(65536).startswith(b"HTTP/1.1 200")  # read, not closed
                for _ in range(10):
                    started = time.monotonic()
                    assert thread_of(poller, "/healthz")
                    slowest = max(slowest, time.monotonic() - started)
        finally:
            for sock in lingering:
                sock.close()
            poller.close()
    # Behind a close held on the event loop a poll waits for the client's FIN, LINGER
    # seconds; half of it leaves a loaded machine's scheduling room and still tells them apart.
    assert slowest < LINGER / 2, f"a poll waited {slowest:.2f} s behind a lingering close"


def test_what_counts_as_a_waiting_poll():
    from webapp.webworker import waiting_poll

    poll = b"GET /api/v1/videos/abc/reprocess HTTP/1.1\r\nHost: x\r\n\r\n"
    assert waiting_poll(poll)
    assert waiting_poll(poll.replace(b"GET", b"HEAD"))
    assert waiting_poll(b"GET /videos/abc/row?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert waiting_poll(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert not waiting_poll(poll[:-2])  # the header still arriving
    assert not waiting_poll(poll + poll)  # pipelined: left to the pool, in order
    assert not waiting_poll(poll.replace(b"GET", b"POST"))
    assert not waiting_poll(poll.replace(b"reprocess", b"run_sync"))
    assert not waiting_poll(b"GET /videos/abc HTTP/1.1\r\nHost: x\r\n\r\n")  # a page
    assert not waiting_poll(poll.replace(b"Host: x", b"Content-Length: 3"))
    assert not waiting_poll(poll.replace(b"Host: x", b"Transfer-Encoding: chunked"))
    assert not waiting_poll(poll.replace(b"Host: x", b"Upgrade: h2c"))
    assert not waiting_poll(b"GET /healthz\r\n\r\n")  # not HTTP/1.x
    assert not waiting_poll(b"")
    # Counted as a poll in the access log, but answered by the pool: it may wait for a Redis
    # that does not answer (2 s to connect), which would hold every connection of the loop.
    assert not waiting_poll(b"GET /queue-banner?shown=0 HTTP/1.1\r\nHost: x\r\n\r\n")


def raw_answer(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as it is; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, dict(resp.getheaders()), resp.read()


def test_a_request_over_the_servers_limits_is_refused_in_the_apis_json(tmp_path):
    """gunicorn refuses a request line over 4094 bytes (414) and a header over its limits
    (431) before the app sees it: that was an HTML page without the security headers, where
    every other error of the API is JSON naming what to change. The worker keeps serving."""
    with sleepy_server(tmp_path, WORKER, workers=1, threads=2) as port:
        line = b"GET /api/v1/search?q=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        many = b"".join(b"X-Field-%d: 1\r\n" % i for i in range(120))
        big = b"Authorization: Bearer " + b"t" * 9000 + b"\r\n"
        cases = [(line, 414, "URI Too Long", "the request line (method, path and query "
                  "string) is 5,030 bytes, more than this server reads (4,094 bytes): "
                  "shorten the URL (no request of the API needs one this long)")]
        for fields in (many, big):
            cases.append((b"GET /api/v1/videos HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n",
                          431, "Request Header Fields Too Large",
                          "the request's header fields are more or larger than this server "
                          "reads (at most 100 fields of at most 8,190 bytes each): send fewer "
                          "or shorter ones"))
        for request, code, status, message in cases:
            answered, headers, body = raw_answer(port, request)
            assert answered == code, body
            assert headers["Content-Type"] == "application/json"
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["X-Frame-Options"] == "DENY"
            assert "default-src 'self'" in headers["Content-Security-Policy"]
            assert json.loads(body) == {"code": code, "status": status, "message": message}
        assert get(http.client.HTTPConnection("127.0.0.1", port, timeout=5), 0) > 0
        # Within the limits, nothing changes: the app answers.
        fields = b"".join(b"X-Field-%d: 1\r\n" % i for i in range(90))
        answered, _, _ = raw_answer(port, b"GET /?q=" + b"a" * 4000 + b" HTTP/1.1\r\n"
                                    b"Host: x\r\n" + fields + b"\r\n")
        assert answered == 200
    assert "Request Line is too large (5030 > 4094)" in (tmp_path / "gunicorn.log").read_text()
