"""The layer in front of everything: which proxies to believe, and which Host names to answer.

A WSGI middleware around the whole stack (the progress-poll layer, Flask, /rq, static files),
so that no request reaches any of them under a name this service does not own:

- `TRUSTED_PROXIES=N`: werkzeug's ProxyFix takes the client's scheme, host and address from
  the X-Forwarded-* headers the N proxies in front add. Without it no forwarded header is
  believed (gunicorn.conf.py switches gunicorn's own X-Forwarded-Proto handling off).
- Trusted hosts: a request whose Host (as forwarded, with TRUSTED_PROXIES) is not
  localhost, 127.0.0.1, [::1] or a name in ALLOWED_HOSTS gets 400, whatever its port. This
  is the defence against DNS rebinding: a page of evil.example whose name is re-pointed at
  127.0.0.1 reaches this port as "same-origin", but its requests say `Host: evil.example`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Iterable

from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wsgi import get_host

from webapp.config import Settings

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WSGIApp = Callable


def normalize_host(entry: str) -> str:
    """An ALLOWED_HOSTS entry as it is compared: lower case, IDNA, IPv6 in brackets.

    A leading dot (".example.com") stands for the name and all its subdomains. Ports are
    not part of an entry: any port is accepted. Raises ValueError with a readable reason.
    """
    text = entry.strip().lower()
    dot, name = (".", text[1:]) if text.startswith(".") else ("", text)
    if "/" in name or "@" in name or not name:
        raise ValueError(f"ALLOWED_HOSTS: {entry!r} is not a host name (write a name such as "
                         "videos.example.com or an address, without scheme or path)")
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if ip is not None and not dot:
        return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    if ":" in name:
        raise ValueError(f"ALLOWED_HOSTS: {entry!r} has a port; give the name alone "
                         "(any port is accepted)")
    try:
        return dot + name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"ALLOWED_HOSTS: {entry!r} is not a valid host name") from exc


def hostname(host: str) -> str:
    """The name part of a validated `host[:port]` value, lower case (IPv6 keeps brackets)."""
    host = host.lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0]


class TrustedHosts:
    """WSGI middleware: 400 (JSON) for a request whose Host is not one of this service's.

    werkzeug's `get_host` reads and validates the Host header (its characters, the port);
    the names are compared here rather than with its `host_is_trusted`, which cannot match
    a bracketed IPv6 entry such as [::1] (werkzeug 3.1) and compares case-sensitively.
    """

    def __init__(self, app: WSGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        entries = {normalize_host(e) for e in (*LOOPBACK_NAMES, *allowed)}
        self.names = frozenset(e.lstrip(".") for e in entries)
        self.suffixes = tuple(e for e in entries if e.startswith("."))

    def trusted(self, name: str) -> bool:
        return name in self.names or name.endswith(self.suffixes)

    def __call__(self, environ: dict, start_response: Callable):
        name = hostname(get_host(environ))  # "" when missing or malformed
        if name and self.trusted(name):
            return self.app(environ, start_response)
        shown = environ.get("HTTP_HOST", "")[:100]
        log.warning("refused a request for host %r (not in ALLOWED_HOSTS): %s %s", shown,
                    environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")[:200])
        body = json.dumps({
            "code": 400, "status": "Bad Request",
            "message": f"this service does not answer to the host name {shown!r}: the "
                       "operator can add it to ALLOWED_HOSTS",
        }).encode()
        start_response("400 BAD REQUEST", [("Content-Type", "application/json"),
                                           ("Content-Length", str(len(body))),
                                           ("X-Content-Type-Options", "nosniff"),
                                           ("Cache-Control", "no-store")])
        return [body]


def front(app: WSGIApp, settings: Settings) -> WSGIApp:
    """`app` behind the host check, behind ProxyFix when TRUSTED_PROXIES is set."""
    guarded = TrustedHosts(app, settings.allowed_hosts)
    proxies = settings.trusted_proxies
    if not proxies:
        return guarded
    if not settings.allowed_hosts:
        log.warning("TRUSTED_PROXIES=%d without ALLOWED_HOSTS: requests the proxy forwards for "
                    "its public name will be refused; add that name to ALLOWED_HOSTS", proxies)
    return ProxyFix(guarded, x_for=proxies, x_proto=proxies, x_host=proxies, x_port=proxies)
