"""Checks that run before flask-smorest parses a request body, for bodies it would misread.

Put them above `@blp.arguments`, so they run first. webargs only reads a body of the
content type it expects: a form or plain text sent to a JSON endpoint is silently ignored
(`-d force=true` would start a run *without* force). An options body has no reason to be
big or deeply nested. A multipart upload without Content-Length that the server does not
terminate (werkzeug refuses to read such a stream) would look like "no file". A compressed
body (Content-Encoding) would be read as it is. Each of these gets a clear 4xx instead.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

from flask import request
from flask_smorest import abort
from werkzeug.exceptions import RequestEntityTooLarge

from webapp.api.schemas import ErrorSchema

MAX_JSON_BYTES = 64 * 1024
# Any request that writes to the database can meet a full disk (webapp.api.disk_full).
DISK_FULL_507 = ("The server's disk (the database's, or MEDIA_ROOT's) is full: nothing was "
                 "changed; try again once space has been freed")


def has_body() -> bool:
    """True if the request carries a body (a Content-Length above 0, or chunked)."""
    if request.content_length is not None:
        return request.content_length > 0
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def json_or_no_body(view: Callable) -> Callable:
    """Options as a small JSON object or nothing: 415 for other bodies, 413 over 64 KiB,
    415 or 400 for a body that is not UTF-8 (refuse_other_encodings), 400 for JSON nested
    so deeply that Python's parser would raise RecursionError (a 500)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        # Per request (Flask >= 3.1), before anything reads the body.
        request.max_content_length = MAX_JSON_BYTES
        if has_body():
            refuse_content_coding()
            if not request.is_json:
                abort(415, message="send options as a JSON object (Content-Type: "
                                   "application/json) or in the query string, e.g. ?force=true")
            data = request.get_data(cache=True)
            if len(data) >= MAX_JSON_BYTES and _more_follows():
                raise RequestEntityTooLarge()
            refuse_other_encodings(data)
            try:
                json.loads(data)
            except RecursionError:
                abort(400, message="the JSON body is nested too deeply")
            except ValueError:
                pass  # not JSON at all: the argument parser answers 400 with the details
        return view(*args, **kwargs)

    return wrapper


def refuse_other_encodings(data: bytes) -> None:
    """415 for a JSON body in UTF-16 or UTF-32 (what PowerShell 5's Out-File and Notepad's
    "Unicode" write), 400 for one that is not UTF-8 text at all (Latin-1, say), each saying
    to send UTF-8; a UTF-8 byte order mark passes (OptionsParser drops it).

    RFC 8259 (8.1): JSON exchanged between systems MUST be UTF-8, and a parser MAY ignore
    a byte order mark. Either was a 400 "not valid JSON (Bytes decoding error : invalid
    start byte ...)" that named neither the encoding nor the cure; UTF-16 without a byte
    order mark was "Expecting property name enclosed in double quotes". UTF-16/32 are
    recognised as RFC 4627 (3) did, by the byte order mark or the zero bytes of the first
    two characters (Python's json.detect_encoding)."""
    encoding = json.detect_encoding(data)
    if encoding.startswith(("utf-16", "utf-32")):
        name = encoding.upper().replace("-BE", " (big-endian)").replace("-LE",
                                                                        " (little-endian)")
        abort(415, message=f"the JSON body is encoded in {name}; send it in UTF-8, as JSON "
                           "between systems must be (RFC 8259)")
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        abort(400, message=f"the JSON body is not UTF-8 text (byte {exc.start + 1} is not "
                           "part of a UTF-8 character: another encoding, such as Latin-1?); "
                           "send it in UTF-8, as JSON between systems must be (RFC 8259)")


def _more_follows() -> bool:
    """Whether a body without Content-Length (chunked) goes on past MAX_JSON_BYTES.

    werkzeug stops reading such a body at max_content_length without a word (its limited
    stream's readall ends there; only a further read raises 413), so get_data hands over
    the first 64 KiB: a 70 KiB JSON body was a 400 "not valid JSON", a 413 with a
    Content-Length. One byte more from the server's own stream tells which it is. (A body
    with a Content-Length over the limit never gets here: werkzeug refuses it at once.)"""
    if request.content_length is not None:
        return False
    return bool(request.environ["wsgi.input"].read(1))


def refuse_content_coding() -> None:
    """415 for a body sent compressed (Content-Encoding: gzip, ...), which nothing here
    decodes: read as it was, a gzipped JSON body was a 400 "not valid JSON (Bytes decoding
    error ...)" and a gzipped upload "incomplete ... send it again", neither of which says
    what to change. RFC 9110 (12.5.3) asks for 415 with the codings accepted, none here."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding and coding != "identity":
        abort(415, message=f"the body is compressed (Content-Encoding: {coding}), which this "
                           "server does not decode; send it uncompressed",
              headers={"Accept-Encoding": "identity"})


def multipart_upload(view: Callable) -> Callable:
    """415 unless multipart/form-data and uncompressed; 411 for a body of unknown length the
    server won't end; 422 for anything in the query string, where the upload reads no
    option: the triggers take theirs there, so `POST /videos?language=de` was an easy
    mistake, and it was a 201 for a video transcribed in whatever language was detected (the
    body is not read)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if request.mimetype != "multipart/form-data":
            abort(415, message="upload the file as multipart/form-data, in the field `file`")
        refuse_content_coding()
        if request.content_length is None and not request.environ.get("wsgi.input_terminated"):
            abort(411, message="the upload has no Content-Length and this server cannot read "
                               "a chunked body; send Content-Length")
        if request.args:
            names = ", ".join(f"`{name}`" for name in request.args)
            abort(422, message=f"the upload reads no query parameter ({names}): send "
                               "`language` and `translate` as form fields beside the file",
                  errors={"query": {name: ["Unknown field."] for name in request.args}})
        return view(*args, **kwargs)

    return wrapper


def refuse_entity_tags(what: str) -> None:
    """412 for If-Match naming entity tags on a write to `what`, which states none (a video,
    the list of videos): no tag can match, so the condition is false and the method must not
    be performed (RFC 9110 13.1.1). `If-Match: *` holds, as the target exists: call this once
    it is known to (an unknown video stays a 404). If-Unmodified-Since is ignored, as RFC 9110
    13.1.4 asks of a target without a modification date."""
    if "If-Match" in request.headers and not request.if_match.star_tag:
        abort(412, message=f"{what} has no entity tag (ETag), so the If-Match sent matches "
                           "nothing and the request was not carried out; send it without "
                           "If-Match (or with If-Match: *)")


def no_entity_tag(what: str) -> Callable[[Callable], Callable]:
    """refuse_entity_tags before the view and its arguments (an upload's body is not read)."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            refuse_entity_tags(what)
            return view(*args, **kwargs)

        return wrapper

    return decorate


def header_parameter(name: str, description: str) -> dict:
    """An optional request header an operation reads, as an OpenAPI parameter."""
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"},
            "description": description}


# What a write does with If-Match (refuse_entity_tags).
IF_MATCH_WRITE = header_parameter(
    "If-Match", "`*` is accepted; entity tags are a 412, as the target states none "
                "(nothing is done)")


def error_response(blp, code: int, description: str) -> Callable:
    """Document an error answer by number (HTTPStatus names differ between Python versions)."""
    return blp.alt_response(code, schema=ErrorSchema, description=description)
