"""Processing runs of a video: trigger (202), follow progress, cancel."""

from __future__ import annotations

import codecs
import json

from flask import Response, request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE
from webargs import core
from webargs.flaskparser import is_json_request

from webapp import extensions as ext
from webapp.api.guards import (
    DISK_FULL_507,
    error_response,
    json_or_no_body,
    refuse_entity_tags,
)
from webapp.api.parsing import Parser, option_errors, refuse_repeated
from webapp.api.schemas import (
    AsyncTaskSchema,
    ErrorSchema,
    ForceBodySchema,
    ForceQuerySchema,
    TaskProgressSchema,
)
from webapp.api.videos import find_video
from webapp.fastpoll import validators
from webapp.services import processing, progress


class _OptionsParser(Parser):
    """webargs' parser, but for a UTF-8 byte order mark ahead of a JSON body, which RFC 8259
    (8.1) lets a parser ignore and Windows tools write (PowerShell's `-Encoding UTF8`, older
    Notepad): webargs decodes the body as plain UTF-8, and Python's json refuses the mark
    ("Unexpected UTF-8 BOM"). Other encodings are refused before (refuse_other_encodings).
    A field given twice is refused as a query parameter given twice is: Python's json keeps
    the last value without a word (`{"force": true, "force": false}` was not forced)."""

    def _raw_load_json(self, req):
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True).removeprefix(codecs.BOM_UTF8)
        body = core.parse_json(data)  # (its errors are webargs' 400 for JSON it cannot read)
        if isinstance(body, dict):
            json.loads(data, object_pairs_hook=_once_each)
        return body


def _once_each(pairs: list[tuple[str, object]]) -> dict:
    refuse_repeated(name for name, _ in pairs)
    return dict(pairs)


class _Blueprint(Blueprint):
    ARGUMENTS_PARSER = _OptionsParser()


blp = _Blueprint("processing", __name__,
                 description="Run the pipeline and follow its progress")
# Routes taking an id have merge_slashes=False: werkzeug would answer an id like `..%2F`
# (so `/videos/..//panel`) with a 308 to a merged path instead of a plain 404.

# Schema instances, not classes: webargs would build a schema from a class on every request.
_FORCE_QUERY, _FORCE_BODY = ForceQuerySchema(), ForceBodySchema()
# A trigger changes state: a misspelt option (`?forse=true`) must not start a run without
# it. 422 naming it, as an unknown field of the JSON body is (webargs excludes unknown query
# parameters unless told otherwise).

_BODY = ("Options as a JSON object, in UTF-8 (RFC 8259; a byte order mark ahead of it is "
         "ignored, UTF-16 and UTF-32 are refused with 415); or no body at all")

_MESSAGES = {
    "run_sync": "processing started; steps whose outputs already exist are kept",
    "reprocess": "reprocessing started; every step runs again",
}


def _trigger(video_id: str, mode: str, query: dict, body: dict):
    if "If-Match" in request.headers:  # (the lookup only then: triggers are a hot path)
        find_video(video_id)
        refuse_entity_tags("a video")
    force = bool(query.get("force") or body.get("force"))
    # The body's options win over the query's; left out in both, the video's are used.
    language = body.get("language", query.get("language"))
    translate = body.get("translate", query.get("translate"))
    # Not given, the video's stored language is used (VideoSchema's requested_language).
    where, name = (("json", "language") if "language" in body else
                   ("query", "language") if "language" in query else
                   ("video", "requested_language"))
    # 404 for an unknown video comes from the trigger's own read of it.
    with option_errors(where, name):
        task = processing.trigger(ext.db(), ext.settings(), ext.storage(), ext.redis(),
                                  video_id, mode, force=force, language=language,
                                  translate=translate)
    url = url_for("processing.Progress", video_id=task.video_id)
    message = _MESSAGES[mode] if task.status != "completed" else "nothing to do: all outputs exist"
    payload = {"task_id": task.id, "video_id": task.video_id, "status": task.status,
               "message": message, "progress_url": url}
    return payload, 202, {"Location": url}


# Progress polling is conditional: the ETag comes from the task row alone, and for a queued
# task the runs ahead of it (see progress.progress_tag), so a poll of an unchanged task
# costs one indexed query (the video and its latest task's version; a count of the runs
# ahead when it is queued) and answers 304 without building a body. Those
# 304s are answered in front of Flask by webapp/fastpoll.py; this view is the reference.
_ETAG_HEADERS = {
    "ETag": {"description": "Strong validator of this progress (changes with any step)",
             "required": True, "schema": {"type": "string"}},
    "Cache-Control": {"description": "`no-cache, private`: revalidate with If-None-Match",
                      "required": True, "schema": {"type": "string"}},
}
_LOCATION = {"Location": {"description": "The progress URL (as `progress_url`)",
                          "required": True, "schema": {"type": "string"}}}
_IF_NONE_MATCH = {
    "name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "The ETag of the progress the client has: 304 while it is still current",
}


_IF_MATCH_412 = ("If-Match named entity tags: a video states none, so none can match and "
                 "nothing was done (If-Match: * is accepted)")


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again",
                                "required": True, "schema": {"type": "integer"}}}


def _trigger_docs(view):
    for code in ("NOT_FOUND", "CONFLICT"):
        view = blp.alt_response({"NOT_FOUND": 404, "CONFLICT": 409}[code], response=code)(view)
    view = blp.alt_response(503, schema=ErrorSchema, headers=_RETRY_AFTER, description=(
        "The job queue (Redis) or the database does not answer: nothing was started; try "
        "again after Retry-After seconds"))(view)
    # 422 (a bad option, or a language the model does not know) comes with @blp.arguments.
    view = error_response(blp, 400, "The body is not valid JSON, not UTF-8 text, or nested "
                                    "too deeply")(view)
    view = error_response(blp, 413, "A body over 64 KiB")(view)
    view = error_response(blp, 507, DISK_FULL_507)(view)
    view = error_response(blp, 415, "A body that is not JSON (a form, text, ...), is "
                                    "compressed (Content-Encoding), or is JSON in UTF-16 or "
                                    "UTF-32 (send UTF-8, RFC 8259)")(view)
    return error_response(blp, 412, _IF_MATCH_412)(view)


@blp.route("/videos/<string:video_id>/run_sync", merge_slashes=False)
class RunSync(MethodView):
    @json_or_no_body
    @blp.arguments(_FORCE_QUERY, location="query", unknown=RAISE)
    @blp.arguments(_FORCE_BODY, location="json", required=False, description=_BODY)
    @blp.response(202, AsyncTaskSchema, headers=_LOCATION)
    @_trigger_docs
    @blp.doc(operationId="runSync")
    def post(self, query, body, video_id):
        """Process the video in the background, keeping outputs that already exist"""
        return _trigger(video_id, "run_sync", query, body)


@blp.route("/videos/<string:video_id>/reprocess", merge_slashes=False)
class Progress(MethodView):
    @blp.response(200, TaskProgressSchema, headers=_ETAG_HEADERS)
    @blp.alt_response(304, description="Not Modified: the progress in If-None-Match is current",
                      headers=_ETAG_HEADERS)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.doc(parameters=[_IF_NONE_MATCH])
    @blp.doc(operationId="getProgress")
    def get(self, video_id):
        """Weighted total progress and every step of the latest run

        Conditional: send the ETag of the last answer in If-None-Match to get a bodiless
        304 while nothing changed (the cheap way to poll).
        """
        # One query, 404 for an unknown video.
        view, tag = progress.tagged_progress(ext.db(), video_id, ext.settings().weights)
        if request.if_none_match.contains_weak(tag):
            return Response(status=304, headers=validators(tag))
        return view, 200, validators(tag)

    @json_or_no_body
    @blp.arguments(_FORCE_QUERY, location="query", unknown=RAISE)
    @blp.arguments(_FORCE_BODY, location="json", required=False, description=_BODY)
    @blp.response(202, AsyncTaskSchema, headers=_LOCATION)
    @_trigger_docs
    @blp.doc(operationId="reprocess")
    def post(self, query, body, video_id):
        """Process the video again from scratch, in the background"""
        return _trigger(video_id, "reprocess", query, body)


@blp.route("/videos/<string:video_id>/cancel", merge_slashes=False)
class Cancel(MethodView):
    @blp.response(200, TaskProgressSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    @error_response(blp, 412, _IF_MATCH_412)
    @error_response(blp, 507, DISK_FULL_507)
    @blp.doc(operationId="cancelRun")
    def post(self, video_id):
        """Stop the active run: running steps are stopped, waiting ones cancelled"""
        video = find_video(video_id)
        refuse_entity_tags("a video")
        task = processing.cancel(ext.db(), ext.storage(), ext.redis(), video.id)
        return progress.task_view(task)
