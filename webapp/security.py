"""Access control and web security (see README, "Security").

- `API_TOKEN`: every /api/v1 request (anything under /api) needs `Authorization: Bearer
  <token>`; /api/openapi.json and /api/docs stay readable.
- `ADMIN_PASSWORD`: the web UI (its pages, fragments and actions) and /rq need HTTP basic auth
  as `admin`. Static files, /favicon.ico and /healthz stay public. Both through
  Flask-HTTPAuth.
- CSRF (Flask-WTF) on the UI's state-changing requests; /api and /rq are exempt. Before
  any of this, webapp/origins.py refuses state-changing requests from other origins, and
  webapp/hosts.py (in front of everything) requests for other host names.
- Security headers (CSP, nosniff, frame and referrer policy) on every response (by hand, not
  Flask-Talisman: docs/RELIABILITY.md, "Security", says why).
- `WORKER_TOKEN`: the worker exchange under /internal (webapp/internal.py) needs
  `Authorization: Bearer <WORKER_TOKEN>` and nothing else opens it: not the API token, not
  the admin login, not a session. Without WORKER_TOKEN it is closed (401 for everyone).
- Wrong credentials are throttled per client address (webapp/throttle.py): after
  AUTH_FAILURE_LIMIT of them, 429 for every request from there that sends credentials.
- `check_exposure`: the web process refuses a non-loopback address without both secrets and
  ALLOWED_HOSTS.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import socket
import tempfile
from pathlib import Path

from flask import Flask, Response, current_app, request
from flask_httpauth import HTTPBasicAuth, HTTPTokenAuth, MultiAuth
from flask_wtf.csrf import CSRFError, CSRFProtect
from markupsafe import Markup
from werkzeug.datastructures import Authorization

from webapp import origins
from webapp.config import API_PREFIX, Settings
from webapp.throttle import Throttle

log = logging.getLogger(__name__)

REALM = "vidpipe"
ADMIN_USER = "admin"
# Open to everyone whatever is configured (by endpoint, i.e. what really serves the request):
# the health check (monitoring), the app's static files (vendored htmx, CSS, JS, Swagger UI
# assets: nothing secret, and the public /api/docs page needs them), the favicon browsers fetch
# by themselves, and flask-smorest's /api/openapi.json and /api/docs.
PUBLIC_ENDPOINTS = ("static", "ui.favicon", "health.healthz")
API_DOCS_BLUEPRINT = "api-docs."
# What rq-dashboard serves; like the UI it needs the admin password.
RQ_PREFIX = "/rq"
# The worker exchange (webapp/internal.py): the worker token only.
INTERNAL_PREFIX = "/internal/"
# The artifact files: the UI shows them (<video>, <img>, download links) straight from the
# API, so a browser logged in as admin may read them with its basic auth as well.
ARTIFACT_ENDPOINT = "videos.Artifact"

# The app's own pages: only its own assets, nothing inline, never framed.
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
       "script-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")
# Swagger UI (flask-smorest's page starts it with an inline script).
CSP_API_DOCS = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'self'; "
                "form-action 'self'")
# rq-dashboard: inline scripts and style attributes, and underscore's _.template compiles its
# row templates with `new Function` (hence 'unsafe-eval'). Still nothing but this host.
CSP_RQ = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
          "script-src 'self' 'unsafe-inline' 'unsafe-eval'; frame-ancestors 'none'; "
          "base-uri 'self'; form-action 'self'")
API_DOCS_PATH = "/api/docs"


# -- exposure: no open service on the network --------------------------------------------

class InsecureExposure(RuntimeError):
    """The web process was asked to listen beyond this machine without access control."""


def is_loopback(host: str) -> bool:
    """True when `host` (a name or an address) only ever means this machine."""
    host = host.strip().strip("[]")
    if not host:
        return False  # "" is every interface
    if host.lower() == "localhost":
        return True
    try:
        return _loopback_ip(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # cannot tell: treat it as exposed
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(_loopback_ip(a) for a in addresses)


def _loopback_ip(text: str) -> bool:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_exposure(host: str | None, settings: Settings) -> None:
    """Raise InsecureExposure when listening on `host` would expose the service unprotected,
    or when nobody beyond this machine could use it.

    `host` None means a Unix socket (never exposed). A non-loopback host needs both API_TOKEN
    and ADMIN_PASSWORD, unless ALLOW_INSECURE=1 says that is wanted anyway; and it needs
    ALLOWED_HOSTS in any case: every request for another name than localhost, 127.0.0.1 or
    [::1] is refused (webapp/hosts.py), so without it the port would answer nobody else.
    """
    if host is None or is_loopback(host):
        return
    missing = [name for name, value in (("API_TOKEN", settings.api_token),
                                        ("ADMIN_PASSWORD", settings.admin_password))
               if not value]
    shown = f"[{host.strip('[]')}]" if ":" in host else host or "every interface"
    hosts_needed = "" if settings.allowed_hosts else (
        "ALLOWED_HOSTS is not set, so every request for a name other than localhost, "
        "127.0.0.1 or [::1] would be refused with 400 (the defence against DNS rebinding): "
        "set it to the names and addresses clients use to reach this server, e.g. "
        "ALLOWED_HOSTS=videos.example.com,192.0.2.10 (see README, \"Security\").")
    if missing and settings.allow_insecure:
        log.warning("listening on %s without %s (ALLOW_INSECURE=1): anyone who can reach it "
                    "can use it", shown, " and ".join(missing))
    elif missing:
        verb = "is" if len(missing) == 1 else "are"
        raise InsecureExposure(
            f"refusing to listen on {shown}: it is not a loopback address and "
            f"{' and '.join(missing)} {verb} not set, so anyone who can reach this port "
            "could upload, process and delete videos and control the job queue. Set both "
            "API_TOKEN and ADMIN_PASSWORD (see README, \"Security\"), or listen on 127.0.0.1, "
            "or set ALLOW_INSECURE=1 to expose it without access control anyway."
            + (" Also: " + hosts_needed if hosts_needed else ""))
    if hosts_needed:
        raise InsecureExposure(f"refusing to listen on {shown}: " + hosts_needed)


# -- the secret key (signs the session that holds the CSRF token) ------------------------

def persistent_secret_key(instance_dir: Path) -> str:
    """`instance_dir/secret_key`, created (mode 0600) with a random key if missing.

    Several gunicorn workers may start at once: the key is written to a private temporary
    file and hard-linked into place, so exactly one key ever appears, complete, and every
    process reads that one.
    """
    path = Path(instance_dir) / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
                log.info("generated a new secret key in %s", path)
            except FileExistsError:
                pass  # another process was first: use its key
        finally:
            os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; it should be mode 0600", path)
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"{path} is empty: delete it (a new key is then generated) "
                           "or set SECRET_KEY")
    return key


# -- authentication (Flask-HTTPAuth) ------------------------------------------------------

token_auth = HTTPTokenAuth(scheme="Bearer")
worker_auth = HTTPTokenAuth(scheme="Bearer")
admin_auth = HTTPBasicAuth(realm=REALM)
# Artifact files also accept the admin login: the UI's <video>, <img> and download links.
artifact_auth = MultiAuth(token_auth, admin_auth)


def _settings() -> Settings:
    return current_app.extensions["vidpipe_security"]


def _equal(given: str, expected: str) -> bool:
    """Constant-time comparison (bytes, so that any header text can be compared)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_matches(authorization: str | None, token: str) -> bool:
    """True when an Authorization header's value is `Bearer <token>` (parsed by werkzeug, as
    Flask-HTTPAuth does); for the poll layer, which answers outside Flask."""
    auth = Authorization.from_header(authorization)
    return auth is not None and auth.type == "bearer" and _equal(auth.token or "", token)


@token_auth.verify_token
def _token_valid(token: str) -> bool:
    return _equal(token, _settings().api_token)


@worker_auth.verify_token
def _worker_token_valid(token: str) -> bool:
    expected = _settings().worker_token
    return bool(expected) and _equal(token or "", expected)  # no token set: nobody


@worker_auth.error_handler
def _worker_refusal(status: int):
    """401 JSON, and a line in the log: a wrong worker token is a misconfigured worker, or
    someone trying."""
    if not _settings().worker_token:
        why = "this server sets no WORKER_TOKEN, so it accepts no worker over HTTP"
    elif "Authorization" in request.headers:
        why = "the worker token is not valid"
    else:
        why = "a worker token is required: send 'Authorization: Bearer <WORKER_TOKEN>'"
    log.warning("refused %s %s from %s: %s", request.method, request.path,
                request.remote_addr, why)
    return ({"code": 401, "status": "Unauthorized", "message": why}, 401,
            {"WWW-Authenticate": bearer_challenge()})


@admin_auth.verify_password
def _admin_valid(username: str, password: str) -> str | None:
    user_ok = _equal(username or "", ADMIN_USER)
    password_ok = _equal(password or "", _settings().admin_password)
    return ADMIN_USER if user_ok and password_ok else None


def _artifact_read() -> bool:
    return (bool(_settings().admin_password) and request.endpoint == ARTIFACT_ENDPOINT
            and request.method in origins.SAFE_METHODS)


def bearer_challenge() -> str:
    """`Bearer`, with `error="invalid_token"` when the request sent a bearer token (RFC 6750,
    3.1: a client then knows its token is at fault, not that it sent none); no error code
    for a request without one, or with another scheme, which the RFC leaves without."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return 'Bearer error="invalid_token"'
    return "Bearer"


@token_auth.error_handler
def _api_refusal(status: int):
    """401 in the API's JSON error shape."""
    if "Authorization" in request.headers:
        message = "the API token is not valid"
    else:
        message = "an API token is required: send 'Authorization: Bearer <API_TOKEN>'"
    challenge = bearer_challenge()
    if _artifact_read():
        challenge += f', Basic realm="{REALM}"'
    return ({"code": 401, "status": "Unauthorized", "message": message}, 401,
            {"WWW-Authenticate": challenge})


@admin_auth.error_handler
def _admin_refusal(status: int):
    """401 with a short page for the UI and /rq (JSON for an artifact of the API)."""
    if request.path.startswith(f"{API_PREFIX}/"):
        return _api_refusal(status)
    body = ("<!doctype html><title>401 Unauthorized · vidpipe</title>"
            "<h1>401 · Unauthorized</h1><p>Log in as <code>admin</code> with the "
            "ADMIN_PASSWORD of this vidpipe.</p>")
    return Response(body, 401, {"WWW-Authenticate": f'Basic realm="{REALM}"'},
                    mimetype="text/html")


def _allowed() -> None:
    return None  # what login_required guards: nothing, the request goes on to its view


def _guard() -> HTTPTokenAuth | HTTPBasicAuth | MultiAuth | None:
    """What guards this request's path: the worker token for /internal, the API token for
    the rest of /api (artifact reads: or the admin login), the admin password elsewhere;
    None where nothing is asked for."""
    settings = _settings()
    endpoint = request.endpoint or ""
    if endpoint in PUBLIC_ENDPOINTS or endpoint.startswith(API_DOCS_BLUEPRINT):
        return None
    if request.path.startswith(INTERNAL_PREFIX):
        return worker_auth
    # Everything else under /api is governed by API_TOKEN alone (not the UI's password).
    if request.path.startswith(f"{API_PREFIX}/"):
        if not settings.api_token:
            return None
        return artifact_auth if _artifact_read() else token_auth
    return admin_auth if settings.admin_password else None


def authenticate():
    """before_request: the API token for /api/v1, the admin password for the UI and /rq,
    behind the throttle on wrong credentials (webapp/throttle.py).

    By path rather than per view, so that every route (rq-dashboard's, any added later) is
    covered unless listed in PUBLIC_ENDPOINTS. Flask-HTTPAuth lets OPTIONS through (Flask's
    automatic answer, which CORS preflights need, carries no data).
    """
    guard = _guard()
    if guard is None:
        return None
    if "Authorization" not in request.headers:  # nothing guessed: not counted, not refused
        return guard.login_required(_allowed)()
    throttle: Throttle = current_app.extensions["vidpipe_throttle"]
    locked_for = throttle.locked_for(request.remote_addr)
    if locked_for is not None:  # the right secret too: a 429 for wrong ones only would tell
        return _too_many_failures(locked_for)
    refusal = guard.login_required(_allowed)()
    if refusal is not None:
        throttle.failed(request.remote_addr, f"{request.method} {request.path}")
    return refusal


def _too_many_failures(seconds: int):
    """429 with Retry-After: JSON under /api and /internal (like their 401s), a short page
    for the UI and /rq."""
    message = ("too many wrong credentials came from your address: every request from it "
               f"that sends a token or password is refused for the next {seconds} seconds, "
               "even with the right one; check the token or password your client sends, and "
               "try again after that")
    headers = {"Retry-After": str(seconds)}
    if request.path.startswith((f"{API_PREFIX}/", INTERNAL_PREFIX)):
        return ({"code": 429, "status": "Too Many Requests", "message": message}, 429,
                headers)
    body = Markup("<!doctype html><title>429 Too Many Requests · vidpipe</title>"
                  "<h1>429 · Too Many Requests</h1><p>{}.</p>").format(message[0].upper()
                                                                      + message[1:])
    return Response(body, 429, headers, mimetype="text/html")


# -- CSRF ---------------------------------------------------------------------------------

class CSRF(CSRFProtect):
    """Flask-WTF's CSRFProtect reading the X-CSRFToken header before the form.

    HTMX sends the header with every request, so its token is checked without parsing the
    request body first: an HTMX upload over MAX_CONTENT_LENGTH then still reaches the upload
    view, which answers with its readable 413 message. Plain forms carry the hidden field.
    """

    def _get_csrf_token(self):
        for header in current_app.config["WTF_CSRF_HEADERS"]:
            token = request.headers.get(header)
            if token:
                return token
        return super()._get_csrf_token()


def csrf_failed(error: CSRFError):
    """400 with a readable message: a fragment into the form's message line for HTMX."""
    message = (f"{error.description} This form is stale or was not sent from this site: "
               "reload the page and try again.")
    if request.headers.get("HX-Request") == "true":
        target = "upload-message" if request.endpoint == "ui.upload" else "message"
        html = Markup('<p id="{}" class="message error" role="alert">{}</p>').format(
            target, message)
        return Response(html, 400, {"HX-Retarget": f"#{target}", "HX-Reswap": "outerHTML"},
                        mimetype="text/html")
    from webapp.api import html_error

    return html_error(400, "Bad Request", message)


def _exempt_blueprints(app: Flask, csrf: CSRFProtect) -> list[str]:
    """Blueprints serving only under /api (JSON for scripts; no cookie session) or /rq
    (rq-dashboard's scripts post without a token). Requests from other origins to either
    are refused by webapp/origins.py."""
    paths: dict[str, list[str]] = {}
    for rule in app.url_map.iter_rules():
        if "." in rule.endpoint:
            paths.setdefault(rule.endpoint.rsplit(".", 1)[0], []).append(rule.rule)
    exempt = []
    for name, rules in paths.items():
        if name in app.blueprints and all(
                r.startswith(f"{API_PREFIX}/") or r.startswith(RQ_PREFIX + "/") for r in rules):
            csrf.exempt(app.blueprints[name])
            exempt.append(name)
    return exempt


# -- headers ------------------------------------------------------------------------------

# Sent with every response, whatever its path.
FIXED_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                 "Referrer-Policy": "same-origin"}


def content_security_policy(path: str) -> str:
    if path == API_DOCS_PATH or path.startswith(API_DOCS_PATH + "/"):
        return CSP_API_DOCS
    if path == RQ_PREFIX or path.startswith(RQ_PREFIX + "/"):
        return CSP_RQ
    return CSP


def security_headers(response: Response) -> Response:
    """after_request: a strict CSP (relaxed for Swagger UI and rq-dashboard), no sniffing,
    no framing, no referrer to other sites."""
    response.headers.setdefault("Content-Security-Policy", content_security_policy(request.path))
    response.headers.update(FIXED_HEADERS)
    return response


# -- OpenAPI ------------------------------------------------------------------------------

def document_api_auth(settings: Settings) -> None:
    """The bearer scheme is always described; it is required globally only when enforced."""
    from webapp.api import api, document_on_every_operation

    api.spec.components.security_scheme("bearerAuth", {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's API_TOKEN. Required on every /api/v1 request when the "
                       "server sets API_TOKEN (then listed under the global `security`).",
    })
    if settings.api_token:
        api.spec.options["security"] = [{"bearerAuth": []}]
        # Every operation then also answers 401 (a missing or wrong token): listed with
        # each, as every status an operation can answer is (webapp/api/__init__.py).
        api.spec.components.response("UNAUTHORIZED", {
            "description": "Unauthorized: no valid `Authorization: Bearer <API_TOKEN>` (for "
                           "artifact files, nor the admin login when ADMIN_PASSWORD is set)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            "headers": {"WWW-Authenticate": {
                "description": "`Bearer`, with `error=\"invalid_token\"` when a bearer token "
                               "was sent (RFC 6750); artifact files: also "
                               "`Basic realm=\"vidpipe\"`",
                "required": True, "schema": {"type": "string"}}},
        })
        # And 429 once an address has sent too many wrong tokens (webapp/throttle.py).
        api.spec.components.response("TOO_MANY_REQUESTS", {
            "description": "Too Many Requests: too many wrong credentials came from the "
                           "client's address; every request from it that sends a token is "
                           "refused, the right one too, until Retry-After seconds have passed",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            "headers": {"Retry-After": {
                "description": "seconds until requests from this address are answered again",
                "required": True, "schema": {"type": "integer"}}},
        })
        document_on_every_operation({"401": "UNAUTHORIZED", "429": "TOO_MANY_REQUESTS"})


# -- wiring -------------------------------------------------------------------------------

def init_app(app: Flask, settings: Settings) -> None:
    """Call after every blueprint is registered (CSRF exemptions are found by their URLs)."""
    app.extensions["vidpipe_security"] = settings
    app.extensions["vidpipe_throttle"] = Throttle(settings)
    app.secret_key = settings.secret_key or persistent_secret_key(Path(app.instance_path))
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:  # Flask's default is None
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    # Flask-WTF's own referrer check on HTTPS (the Referer must be this host) is what
    # webapp/origins.py does for every request, on plain HTTP too and also for browsers that
    # send no Referer; with both, such browsers could not use the UI behind a TLS proxy.
    app.config.setdefault("WTF_CSRF_SSL_STRICT", False)
    # Pages stay open for long runs; the token is bound to the session, which ends with the
    # browser session, so it does not also expire after an hour.
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    # In this order: where a request comes from, who sent it, what it carries (CSRF).
    origins.init_app(app, settings)
    app.before_request(authenticate)
    csrf = CSRF()
    csrf.init_app(app)
    _exempt_blueprints(app, csrf)
    if "internal" in app.blueprints:  # workers post files, with their token, no session
        csrf.exempt(app.blueprints["internal"])
    app.register_error_handler(CSRFError, csrf_failed)
    app.after_request(security_headers)
    document_api_auth(settings)
