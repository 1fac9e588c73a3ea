"""The JSON API: flask-smorest setup, one JSON error shape, and the v1 blueprints."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from http import HTTPStatus

from flask import Flask, Response, current_app, make_response, render_template, request
from flask_smorest import Api as SmorestApi
from markupsafe import Markup
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import (
    HTTPException,
    InternalServerError,
    MethodNotAllowed,
    NotFound,
    RequestedRangeNotSatisfiable,
    RequestEntityTooLarge,
)

from webapp import dashboard
from webapp.api.guards import IF_MATCH_WRITE
from webapp.api.paging import PagingSchema
from webapp.api.schemas import ErrorSchema
from webapp.config import API_PREFIX
from webapp.services.errors import (
    DATABASE_UNAVAILABLE,
    RETRY_AFTER_SECONDS,
    InsufficientStorage,
    QueueUnavailable,
    ServiceError,
    internal_error,
    is_database_unavailable,
    is_disk_full,
)
from webapp.sizes import human_size

log = logging.getLogger(__name__)
DISK_FULL = ("the server's disk is full: the request could not be completed; try again once "
             "space has been freed on the server")


class Api(SmorestApi):
    """flask-smorest's Api with our error schema, and JSON errors only under /api."""

    ERROR_SCHEMA = ErrorSchema
    # No catch-all "default" response: every operation lists the statuses it can answer,
    # so a client (and the schemathesis test) can tell an undocumented one.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_pagination_header(self):
        # X-Pagination holds a JSON object. A bare `schema` would declare OpenAPI's default
        # "simple" header style (`total,3,page,1`), which is not what is sent; `content` is.
        self.spec.components.header("PAGINATION", {
            "description": "Pagination metadata, as a JSON object, on every page",
            "required": True,
            "content": {"application/json": {"schema": PagingSchema}},
        }, lazy=True)

    def handle_http_exception(self, error: HTTPException):
        data = getattr(error, "data", None) or {}
        message = data.get("message") or error.description or error.name
        if "message" not in data and data.get("messages"):  # webargs: a request it refused
            message = invalid_request(data["messages"], getattr(error, "exc", None))
        if isinstance(error, InternalServerError):  # abort(500), or an error in an error handler
            message = internal_error(log, error.original_exception or error,
                                     f"in {request.method} {request.path}")
        elif isinstance(error, RequestEntityTooLarge):
            limit, length = request.max_content_length, request.content_length
            if limit and (length is None or length > limit):
                said = human_size(limit)  # "1,000 bytes (1,000 bytes)" said it twice
                exact = f" ({limit:,} bytes)" if limit >= 1024 else ""
                message = f"the request body is larger than the limit of {said}{exact}"
            else:  # werkzeug's form limits: too many parts, or a big non-file field
                message = "the form has too many parts, or a field besides the file is too big"
        elif isinstance(error, NotFound) and request.url_rule is None:
            message = _nothing_there()
        elif isinstance(error, MethodNotAllowed) and error.valid_methods:
            # werkzeug's "The method is not allowed for the requested URL." names neither;
            # its Allow lists them in a set's order, sorted here as for OPTIONS.
            error.valid_methods = sorted(error.valid_methods)
            message = (f"{request.method} is not allowed at {request.path}; it answers "
                       f"{', '.join(error.valid_methods)}")
        elif isinstance(error, RequestedRangeNotSatisfiable) and error.length is not None:
            # werkzeug's "The server cannot provide the requested range." names neither.
            message = (f"the range {request.headers.get('Range', '')!r} selects no byte of "
                       f"this file of {error.length:,} bytes")
        # What HTTP requires the error to say besides its body (Allow on 405, Content-Range
        # on 416, WWW-Authenticate on 401, ...): werkzeug puts it in the exception's headers,
        # which a body of our own must not lose. Its Content-Type is the HTML page's.
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        if not request.path.startswith(API_PREFIX):
            response = make_response(html_error(error.code or 500, error.name, message))
            response.headers.update(headers)
            return response
        payload = {"code": error.code, "status": error.name, "message": message}
        errors = data.get("errors") or data.get("messages")
        if errors:
            payload["errors"] = errors
        for key, value in (data.get("extra") or {}).items():
            payload[key] = value
        return payload, error.code, {**headers, **(data.get("headers") or {})}


api = Api()


def _nothing_there() -> str:
    """The 404 for a path no route answers, naming it (werkzeug's "The requested URL was not
    found on the server. If you entered the URL manually please check your spelling ..."
    named nothing, nor the one slash to drop)."""
    stripped = _route_without_slash()
    if stripped:
        why = ("the path has slashes in a row" if "//" in request.path.rstrip("/")
               else "the path has no slash at its end")
        return f"there is nothing at {request.path}; {why}: {stripped}"
    if request.path.startswith(API_PREFIX):
        return (f"there is nothing at {request.path}; the API's paths are listed in "
                f"{API_PREFIX}/openapi.json")
    return f"there is nothing at {request.path}"


def _route_without_slash() -> str | None:
    """The request's path without its trailing slashes and with no two in a row, when a
    route answers that path (for any method): `/api/v1/videos/` and `/api/v1//videos` are
    404s, as the routes end without one and slashes are not merged."""
    path = request.path
    stripped = re.sub(r"/{2,}", "/", path).rstrip("/")
    if not stripped or stripped == path:
        return None
    adapter = current_app.url_map.bind_to_environ(request.environ)
    try:
        adapter.match(stripped, method=request.method)
    except MethodNotAllowed:
        pass  # the route is there, for other methods
    except HTTPException:  # no route (NotFound), or werkzeug's own redirects
        return None
    return stripped


# The location of a refused argument, as a client names it; and marshmallow's messages that
# read better after the field's name than after a colon.
_LOCATIONS = {"query": "query parameter", "json": "JSON field", "files": "form field",
              "form": "form field", "headers": "header", "cookies": "cookie"}
_AFTER_NAME = {"Missing data for required field.": "is missing",
               "Unknown field.": "is not an option this request takes",
               "Field may not be null.": "may not be null"}


def invalid_request(errors: dict, exc: Exception | None) -> str:
    """The sentence for an argument webargs refused (422, or 400 for a body that is not
    JSON). Its own messages are a generic line ("The request was well-formed but ...", "The
    browser (or proxy) sent a request ...") beside `errors`: this names each field, where
    it was sent and what is wrong with it, so the message alone says what to change."""
    parts = []
    for location, fields in errors.items():
        if not isinstance(fields, dict):  # the whole body: webargs could not read it
            if location == "json":
                detail = f" ({exc})" if isinstance(exc, ValueError) else ""
                parts.append(f"the body is not valid JSON{detail}")
            else:
                parts.append(f"the {location} could not be read")
            continue
        where = _LOCATIONS.get(location, location)
        for name, problems in fields.items():
            texts = problems if isinstance(problems, list) else [str(problems)]
            if name == "_schema":
                if location == "json" and "Invalid input type." in texts:
                    parts.append('the JSON body is not an object: send options as one, '
                                 'e.g. {"force": true}')
                else:
                    parts.append(f"the {location}: " + "; ".join(map(_sentence, texts)))
                continue
            for text in texts:
                text = str(text)
                if text in _AFTER_NAME:
                    parts.append(f"{where} `{name}` {_AFTER_NAME[text]}")
                else:
                    parts.append(f"{where} `{name}`: {_sentence(text)}")
    return "; ".join(parts) or "the request's arguments are not valid"


def _sentence(text: str) -> str:
    """marshmallow's "Not a valid integer." as part of a sentence: "not a valid integer"."""
    text = str(text).rstrip(".")
    return text[:1].lower() + text[1:]


def html_error(code: int, name: str, message: str):
    """Outside /api, errors are a readable HTML page; to HTMX a server error is no page to
    swap in (see htmx_server_error)."""
    if code >= 500 and request.headers.get("HX-Request") == "true":
        return htmx_server_error(code, message)
    return render_template("error.html", code=code, name=name, message=message), code


def htmx_server_error(code: int, message: str) -> Response:
    """A 5xx for HTMX (the pages swap 4xx/5xx answers in: a 409's panel and message). Swapped
    in, the error page would replace the polled fragment, a second site header inside the
    page, and its polling would end there. A poll (GET) keeps what it shows and polls again
    (HX-Reswap: none); an action's message line says what went wrong."""
    if request.method == "GET":
        return Response(status=code, headers={"HX-Reswap": "none"})
    target = "upload-message" if request.endpoint == "ui.upload" else "message"
    html = Markup('<p id="{}" class="message error" role="alert">{}</p>').format(
        target, message)
    return Response(html, code, {"HX-Retarget": f"#{target}", "HX-Reswap": "outerHTML"},
                    mimetype="text/html")


def handle_service_error(error: ServiceError):
    """Domain errors become the same JSON shape (an HTML page outside /api)."""
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else {}
    if not request.path.startswith(API_PREFIX):
        response = make_response(html_error(error.status, HTTPStatus(error.status).phrase,
                                            error.message))
        response.headers.update(headers)
        return response
    payload = {"code": error.status, "status": HTTPStatus(error.status).phrase,
               "message": error.message, **error.extra}
    return payload, error.status, headers


def handle_unexpected(error: Exception):
    """Any other exception (a bug, a database error...) is a 500 saying only "internal error
    (reference <id>)"; its text and traceback go to the log under that reference. Handled
    here, Flask neither logs it a second time nor lets it through to a test client."""
    if is_disk_full(error):
        return disk_full(error)
    if is_database_unavailable(error):
        return database_unavailable(error)
    message = internal_error(log, error, f"in {request.method} {request.path}")
    if not request.path.startswith(API_PREFIX):
        return html_error(500, "Internal Server Error", message)
    return {"code": 500, "status": "Internal Server Error", "message": message}, 500


def database_unavailable(error: Exception):
    """A database that does not answer (a restart, a network cut, a lock held too long) is
    no bug either: 503 with Retry-After, saying so, and one warning line, not a 500 with a
    reference and a traceback. Clients try again; nothing was changed."""
    log.warning("the database is unavailable: %s %s answered 503 (%s)", request.method,
                request.path, " ".join(str(getattr(error, "orig", None) or error).split())[:200])
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if not request.path.startswith(API_PREFIX):
        page = html_error(503, "Service Unavailable", DATABASE_UNAVAILABLE)
        response = make_response(page)
        response.headers.update(headers)
        return response
    return ({"code": 503, "status": "Service Unavailable", "message": DATABASE_UNAVAILABLE},
            503, headers)


def queue_down(error: Exception):
    """Redis not answering where a page did not expect it (rq-dashboard at /rq, whose open
    page asks for its data every few seconds) is an outage, not a bug: 503 saying so, not a
    500 with a traceback for each of the dashboard's requests; the log says it as QueueOutage
    does (webapp.dashboard)."""
    current_app.extensions[dashboard.QUEUE_OUTAGE].failed(
        f"{request.method} {request.path}", " ".join(str(error).split())[:200])
    return handle_service_error(
        QueueUnavailable("the job queue (Redis) is unavailable; try again in a moment"))


def disk_full(error: Exception):
    """A full disk (MEDIA_ROOT's, or the database's) is no bug: 507 Insufficient Storage,
    saying so, and one line in the log for the operator instead of a traceback. The
    request's transaction was rolled back."""
    log.error("a disk is full: %s %s answered 507 (%s)", request.method, request.path,
              " ".join(str(getattr(error, "orig", None) or error).split())[:200])
    return handle_service_error(InsufficientStorage(DISK_FULL))


def no_content_no_type(response: Response) -> Response:
    """after_request: a 204 has no content, so it names no content type (RFC 9110 15.3.5).
    flask-smorest labels a DELETE's empty answer application/json, Flask's Response
    text/html (the pages' HX-Redirect); werkzeug drops it from a 304 itself."""
    if response.status_code == 204:
        response.headers.pop("Content-Type", None)
    return response


def document_database_unavailable() -> None:
    """Every operation reads the database, so each can answer 503 when it does not answer
    (database_unavailable): listed with each, as every status an operation can answer is;
    only the triggers listed it (for the queue), so a generated client of any other
    operation had no Retry-After to wait for. The triggers keep their own description."""
    api.spec.components.response("DATABASE_UNAVAILABLE", {
        "description": "Service Unavailable: the database does not answer (restarting, out "
                       "of reach, or SQLite locked by another process beyond its busy "
                       "timeout); nothing was changed: try again after Retry-After seconds",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        "headers": {"Retry-After": {
            "description": "Seconds to wait before trying again",
            "required": True, "schema": {"type": "integer"}}},
    })
    document_on_every_operation({"503": "DATABASE_UNAVAILABLE"})


def document_on_every_operation(responses: dict[str, str], methods: Iterable[str] = (),
                                exclude: bool = False) -> None:
    """List each status (a key) with every operation already registered, as a reference to
    the response component (its value), unless the operation lists that status itself.
    With `methods` (lower case), only with the operations of those methods, or with
    `exclude` those of every other method."""
    methods = frozenset(methods)
    for operations in api.spec._paths.values():  # apispec has no public way to edit them
        for method, operation in operations.items():
            if methods and (method in methods) == exclude:
                continue
            if isinstance(operation, dict) and "responses" in operation:
                for status, component in responses.items():
                    operation["responses"].setdefault(
                        status, {"$ref": f"#/components/responses/{component}"})


def document_if_match_on_writes() -> None:
    """Every write honours If-Match (refuse_entity_tags): listed as a header parameter of
    each. Added here: a `parameters` list given with @blp.doc replaces the query parameters
    flask-smorest documents from @blp.arguments (the triggers' force, language, translate)."""
    for operations in api.spec._paths.values():  # apispec has no public way to edit them
        for method, operation in operations.items():
            if method in ("post", "put", "patch", "delete"):
                operation.setdefault("parameters", []).append(IF_MATCH_WRITE)


def init_app(app: Flask) -> None:
    from webapp.api import processing, search, videos

    app.config.setdefault("API_TITLE", "vidpipe")
    app.config.setdefault("API_VERSION", "v1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", API_PREFIX)
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    app.config.setdefault("OPENAPI_SWAGGER_UI_PATH", "docs")
    app.config.setdefault("OPENAPI_SWAGGER_UI_URL", "/static/vendor/swagger-ui/")
    # No call to the public validator service: the docs page must work offline.
    app.config.setdefault("OPENAPI_SWAGGER_UI_CONFIG", {"validatorUrl": None})
    app.config.setdefault("API_SPEC_OPTIONS", {
        "info": {"description": "Upload media, process it in background workers, "
                                "follow weighted progress, fetch the results. With "
                                "WEBHOOK_URL set, the end of every run (task.completed, "
                                "task.failed, task.cancelled) is also POSTed there, signed "
                                "(X-Vidpipe-Signature); the README's \"Webhooks\" section "
                                "gives the body and how to check it."},
    })
    api.init_app(app)
    api.register_blueprint(videos.blp, url_prefix=f"{API_PREFIX}/v1")
    api.register_blueprint(processing.blp, url_prefix=f"{API_PREFIX}/v1")
    api.register_blueprint(search.blp, url_prefix=f"{API_PREFIX}/v1")
    document_database_unavailable()
    document_if_match_on_writes()
    app.register_error_handler(ServiceError, handle_service_error)
    app.register_error_handler(RedisConnectionError, queue_down)
    app.register_error_handler(RedisTimeoutError, queue_down)
    app.register_error_handler(Exception, handle_unexpected)
    app.after_request(no_content_no_type)
