"""gunicorn settings of the web process (the Procfile's `web` line), from the environment.

HOST (127.0.0.1), PORT (5000), WEB_WORKERS (2 per CPU core, at most 8) and WEB_THREADS (2)
as in the README. Before it opens any socket the master refuses a non-loopback address
unless API_TOKEN and ADMIN_PASSWORD are both set (or ALLOW_INSECURE=1) and ALLOWED_HOSTS
names the server (webapp/security.py, check_exposure). The check looks at the addresses
gunicorn will really bind, so a `--bind` on the command line is checked too.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

from gunicorn.util import parse_address

from webapp.accesslog import ACCESS_LOG_FORMAT, poll_log_seconds, slow_request_ms
from webapp.config import ConfigError, number_env


def _number(name: str, default: int, **rule) -> int:
    try:
        return number_env(name, default, **rule)
    except ConfigError as exc:
        sys.exit(f"vidpipe: {exc}")


# Stripped as Settings strips it: "127.0.0.1 " was a host name to resolve, five times.
_host = (os.environ.get("HOST") or "").strip() or "127.0.0.1"
if ":" in _host and not _host.startswith("["):
    _host = f"[{_host}]"  # an IPv6 address
# PORT=0 would listen on a port the kernel picks, which nobody is told: refused.
bind = [f"{_host}:{_number('PORT', 5000, minimum=1, maximum=65535)}"]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may use
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Processes rather than threads: a trigger is CPU work under the GIL, and with 4 threads in
# each of 2 processes on 2 cores triggers queued behind each other's time slices (p50 48 ms,
# 135/s with 8 clients); 4 processes x 2 threads did 200-240/s at p50 27 ms, with the same 8
# requests served at once (docs/PERFORMANCE.md, section 3). Each process is ~75 MB.
workers = _number("WEB_WORKERS", min(2 * _cores(), 8), positive=True)
threads = _number("WEB_THREADS", 2, positive=True)
# gthread, but a worker whose threads are all busy leaves new connections to the others
# (webapp/webworker.py): with gthread a burst of kept-alive connections piled onto one worker.
worker_class = "webapp.webworker.BalancedThreadWorker"
timeout = 600  # large uploads
# Seconds an idle connection is kept open for its next request (gunicorn's default: 2). A
# poll on a kept connection costs the server ~0.45 ms of CPU here, ~0.8 ms on a new one
# (docs/PERFORMANCE.md, section 2); 0 closes every connection after its answer.
keepalive = _number("WEB_KEEPALIVE", 2, minimum=0)
# Forwarded headers are believed only through TRUSTED_PROXIES (werkzeug's ProxyFix,
# webapp/hosts.py). gunicorn would otherwise take X-Forwarded-Proto from any client on
# 127.0.0.1 or a Unix socket, whatever TRUSTED_PROXIES says.
secure_scheme_headers: dict[str, str] = {}
# gunicorn (25.1 on) would open a control socket for `gunicornc` at $XDG_RUNTIME_DIR/gunicorn.ctl
# or ~/.gunicorn/gunicorn.ctl: one path for every gunicorn of the user, taken over by whichever
# last forked a worker and deleted by whichever stops first, so `gunicornc` steered (and could
# shut down) another service on the machine, and ~/.gunicorn was left behind. Not used here.
control_socket_disable = True
accesslog = "-"
# A progress poll that went well is counted, not logged (webapp/accesslog.py: a line of
# counts per worker every POLL_LOG_SECONDS); errors, triggers, uploads, pages and anything
# as slow as SLOW_REQUEST_MS keep their line, which ends with the request's duration.
logger_class = "webapp.accesslog.AccessLog"
access_log_format = ACCESS_LOG_FORMAT
try:  # read again by the logger; checked here, before gunicorn makes it
    poll_log_seconds(), slow_request_ms()
except ValueError as exc:
    sys.exit(f"vidpipe: {exc}")


def _cannot_bind(address: str, host: str, port: int) -> str | None:
    """Why gunicorn could not listen on host:port, None if it can. For a port in use, or a
    HOST that is not this machine's, gunicorn said "Connection in use" (or "Name or service
    not known") five times over five seconds, then "Can't connect", while `make run`'s
    workers started and were stopped again; this says what to do, at once."""
    if os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS"):
        return None  # sockets handed over (gunicorn's USR2 upgrade, systemd): in use by design
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"{address} is in use already (another vidpipe, `make run` started "
                        f"twice, or another program): stop that, or set PORT to a free port.")
            return (f"cannot listen on {address} ({exc.strerror or exc}): set HOST to an "
                    f"address of this machine (127.0.0.1, the default, or 0.0.0.0 for all).")
    return None


def on_starting(server) -> None:
    from webapp.config import Settings
    from webapp.security import InsecureExposure, check_exposure

    try:
        settings = Settings.from_env()
        settings.validate()
    except ConfigError as exc:
        server.log.error("vidpipe: %s", exc)
        sys.exit(1)
    for address in server.cfg.bind:
        parsed = parse_address(address)
        if isinstance(parsed, str):
            host = None  # a Unix socket
        elif isinstance(parsed, int):
            host = f"fd://{parsed}"  # a socket handed over (systemd): its address is unknown
        else:
            host = parsed[0]
        try:
            check_exposure(host, settings)
        except InsecureExposure as exc:
            server.log.error("vidpipe: %s", exc)
            sys.exit(1)
        shared = server.cfg.reuse_port  # several masters on one port on purpose
        reason = (_cannot_bind(address, *parsed)
                  if isinstance(parsed, tuple) and not shared else None)
        if reason:
            server.log.error("vidpipe: %s", reason)
            sys.exit(1)
    from webapp import startup

    try:  # MEDIA_ROOT writable, the database at this code's migration (webapp/startup.py)
        unsure = startup.check(settings)
    except ConfigError as exc:
        server.log.error("vidpipe: %s", exc)
        sys.exit(1)
    if unsure:
        server.log.warning("vidpipe: %s; starting anyway", unsure)
    said = _redis_unreachable(settings.redis_url)
    if said:  # an outage may end: the web process serves what it can meanwhile (README)
        server.log.warning("vidpipe: %s; starting anyway (runs cannot start, and /healthz "
                           "says so, until it answers)", said)


def _redis_unreachable(url: str) -> str | None:
    """Why the job queue does not answer now, None when it does. The worker stops on it at
    start-up; the web process started without a word, the first sign a 503 to a trigger."""
    from redis import Redis
    from redis.exceptions import RedisError

    from webapp.services.queue import unreachable

    connection = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        connection.ping()
    except RedisError as exc:
        return unreachable(url, exc)
    finally:
        connection.close()
    return None


def worker_exit(server, worker) -> None:
    """A worker's last counts of polls (webapp/accesslog.py) are written as it exits."""
    flush = getattr(worker.log, "flush_polls", None)
    if flush is not None:
        flush()


def on_exit(server) -> None:
    """The master's last step before its `sys.exit`: the stop signals are blocked from here
    on. Ctrl-C of gunicorn in a terminal, a service manager's SIGTERM, a second Ctrl-C: a
    signal after the first, one that came once Python's exit had put the default handlers
    back, ended the master by it (status -15 or -2, not 0: honcho's "web stopped (rc=-15)")."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGQUIT})
