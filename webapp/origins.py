"""Cross-site requests: nothing a page of another origin sends changes anything here.

Browsers send a multipart upload or a bodiless POST to any origin without asking first, so
a page the user visits could upload, reprocess, cancel or delete on http://127.0.0.1:5000 —
with no API_TOKEN, or with the admin's basic auth the browser remembers. Every
state-changing request (any method but GET, HEAD and OPTIONS, plus rq-dashboard's
requeue-all GET) to the API, the UI or /rq is therefore refused with a 403 JSON error when
a browser says it comes from elsewhere:

- `Origin` (or, without it, the origin of `Referer`) whose scheme, host and port differ
  from this service's own (as the request reached it: behind a proxy, as the proxy
  forwards it, see webapp/hosts.py), or `Origin: null` (sandboxed frames, file: pages,
  some redirects);
- `Sec-Fetch-Site: cross-site` or `same-site` (another port of the same host is same-site).

A request with none of these headers is not from a browser page (curl, scripts, SDKs) and
passes, as before. The origins in CORS_ORIGINS may use the API (/api only): flask-cors
answers their preflights and adds the CORS headers, and their state-changing requests
pass the check. This one check also covers rq-dashboard, whose scripts post without a CSRF
token; the UI's forms carry Flask-WTF's token as well (webapp/security.py).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import Flask, current_app, request
from flask_cors import CORS

from webapp.config import Settings

log = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# GETs that change something: rq-dashboard's "requeue all" link.
STATE_CHANGING_GETS = frozenset({"rq_dashboard.requeue_all"})
FOREIGN_SITES = ("cross-site", "same-site")
DEFAULT_PORTS = {"http": 80, "https": 443}
CORS_PATHS = r"/api/*"  # flask-cors resource pattern (a regex)
# What a page of an allowed origin may send and read besides the CORS-safelisted headers.
# The conditional and range headers: a page polls with If-None-Match and resumes or seeks
# in an artifact with Range and If-Range, as any client does (README, "A tour of the API").
CORS_ALLOW_HEADERS = ["Authorization", "Content-Type", "If-None-Match", "If-Match",
                      "If-Modified-Since", "If-Unmodified-Since", "If-Range", "Range"]
CORS_EXPOSE_HEADERS = ["ETag", "Location", "X-Pagination", "WWW-Authenticate", "Retry-After",
                       "Accept-Ranges", "Content-Range", "Content-Disposition"]

Origin = tuple[str, str, int]  # scheme, host (lower case, IPv6 without brackets), port


def parse_origin(text: str) -> Origin | None:
    """(scheme, host, port) of an http(s) origin or URL; None when it is not one."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def serialize(origin: Origin) -> str:
    """An origin as browsers write it: no default port, IPv6 in brackets."""
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")


def configured_origins(entries: tuple[str, ...]) -> tuple[str, ...]:
    """CORS_ORIGINS checked and written the way browsers send them; ValueError if one is
    not an origin (a path, no scheme, `*`, `null`)."""
    origins = []
    for entry in entries:
        parsed = parse_origin(entry)
        parts = urlsplit(entry.strip())
        if parsed is None or parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(
                f"CORS_ORIGINS: {entry!r} is not an origin: write scheme, host and port "
                "only, e.g. https://app.example.com or http://localhost:3000 (no '*', no "
                "path)")
        origins.append(serialize(parsed))
    return tuple(dict.fromkeys(origins))


def own_origin() -> Origin | None:
    """This service's origin as the request reached it (scheme and Host, after ProxyFix)."""
    return parse_origin(f"{request.scheme}://{request.host}")


def changes_state() -> bool:
    return request.method not in SAFE_METHODS or request.endpoint in STATE_CHANGING_GETS


def foreign_reason() -> str | None:
    """Why the request is a browser's from another origin, or None when it is not."""
    sent = request.headers.get("Origin")
    allowed: tuple[str, ...] = current_app.extensions["vidpipe_origins"]
    parsed = parse_origin(sent) if sent else None
    if parsed and serialize(parsed) in allowed and request.path.startswith("/api/"):
        return None
    site = request.headers.get("Sec-Fetch-Site")
    if site in FOREIGN_SITES:
        return f"the browser marks it as {site} (Sec-Fetch-Site)"
    if sent is None and request.referrer:
        sent, parsed = request.referrer, parse_origin(request.referrer)
    if sent is None:
        return None  # not from a browser page
    if parsed is None:
        return f"it comes from the opaque origin {sent[:100]!r}"
    if parsed != own_origin():
        return f"it comes from {serialize(parsed)}, another origin"
    return None


def refuse_foreign():
    """before_request (first of all): 403 JSON for a cross-origin state-changing request."""
    if not changes_state():
        return None
    reason = foreign_reason()
    if reason is None:
        return None
    log.warning("refused a cross-origin %s %s: %s (this service: %s://%s)", request.method,
                request.path[:200], reason, request.scheme, request.host)
    return {"code": 403, "status": "Forbidden",
            "message": f"cross-origin request refused: {reason}. Pages of other sites may "
                       "not change anything here."}, 403


def init_app(app: Flask, settings: Settings) -> None:
    """The check on every request, and CORS answers for CORS_ORIGINS on /api.

    Call before any other before_request is registered: where a request comes from is
    checked before who sent it (webapp/security.py) and what it carries (CSRF)."""
    origins = configured_origins(settings.cors_origins)
    app.extensions["vidpipe_origins"] = origins
    app.before_request(refuse_foreign)
    document_refusal()
    if origins:
        # No credentials: the API's credential is the bearer token a page sends itself;
        # always_send off: no Access-Control-Allow-Origin on requests without an Origin.
        CORS(app, resources={CORS_PATHS: {"origins": list(origins)}},
             allow_headers=CORS_ALLOW_HEADERS, expose_headers=CORS_EXPOSE_HEADERS,
             supports_credentials=False, always_send=False, max_age=600)


def document_refusal() -> None:
    """refuse_foreign's 403 is an answer of every state-changing operation of the API:
    listed with each (as every status an operation can answer is, webapp/api/__init__.py),
    so that a client generated from the description, and a conformance check, knows it."""
    from webapp.api import api, document_on_every_operation

    api.spec.components.response("CROSS_ORIGIN", {
        "description": "Forbidden: a browser marks the request as another origin's (Origin, "
                       "or Referer, of another scheme, host or port, Origin: null, or "
                       "Sec-Fetch-Site cross-site or same-site), and that origin is not in "
                       "CORS_ORIGINS; nothing was changed. Clients that send none of these "
                       "headers are not refused",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    })
    document_on_every_operation({"403": "CROSS_ORIGIN"},
                                methods=[m.lower() for m in SAFE_METHODS], exclude=True)
