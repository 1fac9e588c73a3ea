"""Throttling of wrong credentials, per client address, shared by every web process.

Each wrong credential (a request whose Authorization header does not match) counts against
the address it came from, in Redis: gunicorn runs several processes, and a count kept in
each would let a guesser try a limit's worth of secrets in every one of them. The count
starts at the first failure and lives AUTH_FAILURE_WINDOW seconds; once it reaches
AUTH_FAILURE_LIMIT, every request from that address that sends credentials is refused (429)
until the count expires -- the right secret too, or guessing would go on, each 429 telling
a wrong guess from a right one. A request without an Authorization header (a browser's
first, before it asks for the password) is neither counted nor refused.

Redis being down must not lock anyone out of a service whose secrets are right: the
throttle then lets everything through (fails open) and logs it once per outage.

The progress-poll layer (webapp/fastpoll.py) answers polls with the right token outside
Flask and without a Redis round trip: it asks `known_locked`, this process's memory of the
lockouts it has seen (every credentialed request Flask answers from that address teaches it,
a wrong guess above all).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable

from cachetools import LRUCache
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from webapp.config import Settings

log = logging.getLogger(__name__)

# Short: the check is on the way of every request that sends credentials, and a Redis that
# does not answer must not hold them up for the queue's 2 s connect timeout.
REDIS_TIMEOUT = 0.5
# After a Redis error, seconds without trying again (requests go through unthrottled):
# a Redis host that swallows packets would otherwise cost every request the timeout.
REDIS_RETRY_AFTER = 5.0
# Lockouts this process remembers for the poll layer (the least recently seen go first).
KNOWN_LOCKOUTS = 4096


def client_key(address: str | None) -> str:
    """What failures are counted by: the address, or for IPv6 its /64 -- one host or home
    network is given a whole /64, and would otherwise have 2**64 addresses to guess from."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "unknown"
    if ip.version == 6 and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Throttle:
    """The failure counts of one vidpipe (its QUEUE_NAME names it in a shared Redis)."""

    def __init__(self, settings: Settings) -> None:
        self.limit = settings.auth_failure_limit
        self.window = settings.auth_failure_window
        self.enabled = self.limit > 0
        self.prefix = f"vidpipe:auth-failures:{settings.queue_name}:"
        self.redis = Redis.from_url(settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT,
                                    socket_timeout=REDIS_TIMEOUT)
        # client key -> time.monotonic() at which its lockout ends, as last seen here.
        self._known: LRUCache = LRUCache(KNOWN_LOCKOUTS)
        self._lock = threading.Lock()  # LRUCache is not thread-safe (gthread workers)
        self._skip_redis_until = 0.0
        self._redis_down = False

    def locked_for(self, address: str | None) -> int | None:
        """Seconds until `address` may send credentials again, or None when it may now (and
        when Redis cannot tell: fail open). One round trip."""
        if not self.enabled:
            return None
        key = client_key(address)
        replies = self._run(lambda pipe: pipe.get(self.prefix + key).pttl(self.prefix + key))
        if replies is None:
            return None
        count, pttl = replies
        if count is None or int(count) < self.limit or pttl <= 0:
            self._forget(key)
            return None
        self._remember(key, pttl)
        return math.ceil(pttl / 1000)

    def failed(self, address: str | None, what: str) -> None:
        """Count one wrong credential from `address` (`what` it asked for, for the log); the
        failure that reaches the limit starts a lockout, logged once. One round trip: the
        count is created with its expiry (SET NX EX) and then incremented, which keeps it."""
        if not self.enabled:
            return
        key = client_key(address)
        name = self.prefix + key
        replies = self._run(lambda pipe: pipe.set(name, 0, ex=self.window, nx=True)
                            .incr(name).pttl(name))
        if replies is None:
            return
        _, count, pttl = replies
        if count == self.limit:
            self._remember(key, pttl)
            log.warning("locked out %s for %d s: %d wrong credentials within %d s (the last "
                        "for %s); requests from it that send credentials get 429 until then",
                        key, math.ceil(pttl / 1000), count, self.window, what)

    def known_locked(self, address: str | None) -> bool:
        """True when this process has seen a lockout of `address` that is not over; no
        Redis, so the poll layer's answers to right tokens cost nothing more."""
        if not self._known:  # nobody locked out: the usual case, one check
            return False
        key = client_key(address)
        with self._lock:
            until = self._known.get(key)
            if until is not None and time.monotonic() >= until:
                del self._known[key]  # over: polls find the memory empty again
                until = None
        return until is not None

    def _remember(self, key: str, pttl: int) -> None:
        with self._lock:
            self._known[key] = time.monotonic() + pttl / 1000

    def _forget(self, key: str) -> None:
        if self._known:
            with self._lock:
                self._known.pop(key, None)

    def _run(self, commands: Callable[[Pipeline], Pipeline]) -> list | None:
        """The replies of `commands` sent in one transaction, or None while Redis is down
        (logged once per outage, and tried again REDIS_RETRY_AFTER seconds later)."""
        if time.monotonic() < self._skip_redis_until:
            return None
        try:
            with self.redis.pipeline() as pipe:
                replies = commands(pipe).execute()
        except RedisError as exc:
            self._skip_redis_until = time.monotonic() + REDIS_RETRY_AFTER
            if not self._redis_down:
                self._redis_down = True
                log.warning("wrong credentials are not throttled while Redis is unavailable "
                            "(%s); authentication goes on without the throttle", exc)
            return None
        if self._redis_down:
            self._redis_down = False
            log.info("Redis answers again: wrong credentials are throttled again")
        return replies
