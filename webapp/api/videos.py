"""Videos and their artifacts: upload, list, show, delete, download."""

from __future__ import annotations

import os
import string
import unicodedata
from datetime import UTC, datetime
from urllib.parse import quote

from flask import Response, request, send_file, url_for
from flask.views import MethodView
from flask_smorest import abort
from flask_smorest.fields import Upload
from marshmallow import RAISE, ValidationError
from webargs.multidictproxy import MultiDictProxy
from werkzeug.datastructures import CombinedMultiDict, MultiDict
from werkzeug.http import http_date, parse_date, parse_range_header

from webapp import extensions as ext
from webapp.api.guards import (
    DISK_FULL_507,
    error_response,
    header_parameter,
    multipart_upload,
    no_entity_tag,
    refuse_entity_tags,
)
from webapp.api.paging import PagedBlueprint
from webapp.api.parsing import Parser, option_errors, refuse_repeated
from webapp.api.schemas import (
    ArtifactSchema,
    ErrorSchema,
    TranscriptSchema,
    UploadSchema,
    VideoListQuerySchema,
    VideoSchema,
)
from webapp.models import Video
from webapp.services import ingest, languages, progress, publications, results
from webapp.services.errors import NotFound
from webapp.services.mediainput import video_format
from webapp.services.processing import get_video
from webapp.services.storage import ALL_ARTIFACT_NAMES, mime_type


class _MultipartParser(Parser):
    """The upload's form fields (language, translate) beside its file: webargs reads
    location "files" from request.files alone, and a second `@blp.arguments` with location
    "form" would be documented as a second request body, which OpenAPI 3 cannot have.
    A schema's Upload fields still come from files only: a text part named `file` is no
    file. A part without a name (werkzeug's None, for a Content-Disposition it cannot read)
    is no option either: left in, the 422 for unknown fields would name None beside strings,
    which its JSON cannot sort (a 500)."""

    def load_files(self, req, schema):
        uploads = {name for name, field in schema.fields.items() if isinstance(field, Upload)}
        files = MultiDict([(k, v) for k, v in req.files.items(multi=True) if k is not None])
        form = MultiDict([(k, v) for k, v in req.form.items(multi=True)
                          if k is not None and k not in uploads])
        # curl -F file=talk.mp4 (without the @) sends the name as text: "missing" misled.
        texts = {name: ["Is text, not a file: send the file's content as a file part"
                        " (curl: -F file=@talk.mp4)."]
                 for name in uploads if name in req.form and name not in files}
        if texts:
            raise ValidationError(texts)
        # A field sent twice (two files in `file`, two languages) would be read once, the
        # other value dropped without a word: a client sending several files got one video.
        refuse_repeated((k for parts in (files, form) for k, _ in parts.items(multi=True)),
                        "send it once (one file a request)")
        return MultiDictProxy(CombinedMultiDict([files, form]), schema)


class _Blueprint(PagedBlueprint):
    ARGUMENTS_PARSER = _MultipartParser()


blp = _Blueprint("videos", __name__, description="Uploaded media and what was made of it")
# Routes taking an id have merge_slashes=False: werkzeug would answer an id like `..%2F`
# (so `/videos/..//panel`) with a 308 to a merged path instead of a plain 404.


_TEXT = {"type": "string"}


def find_video(video_id: str) -> Video:
    """The video, or a 404 for unknown ids of any shape."""
    return get_video(ext.db(), video_id)


# The Video attributes VideoSchema shows (a schema instance deep-copies its fields: build
# one once, not one per row of a list page).
_VIDEO_FIELDS = tuple(VideoSchema().fields)


def video_payload(video: Video) -> dict:
    view = progress.video_progress(ext.db(), video, ext.settings().weights)
    return {
        **{c: getattr(video, c) for c in _VIDEO_FIELDS if hasattr(video, c)},
        "requested_language": video.requested_language or languages.AUTO,
        "format_label": video_format(video),
        "processing": {"task_id": view.task_id, "status": view.status, "progress": view.progress},
        "progress_url": url_for("processing.Progress", video_id=video.id),
        "artifacts_url": url_for("videos.Artifacts", video_id=video.id),
    }


@blp.route("/videos")
class Videos(MethodView):
    @no_entity_tag("the list of videos")
    @multipart_upload
    @blp.arguments(UploadSchema, location="files", unknown=RAISE)
    @blp.response(201, VideoSchema, headers={"Location": {
        "description": "The new video's URL", "required": True, "schema": {"type": "string"}}})
    @error_response(blp, 400, "The upload was cut short (the body ends before the form's "
                              "closing boundary, its Content-Length or a chunked body's last "
                              "chunk), the body is empty, or the form is malformed; "
                              "nothing stored")
    @error_response(blp, 411, "No Content-Length, and the WSGI server in front does not end a "
                              "chunked body (gunicorn, as the Procfile runs it, does: there "
                              "a chunked upload is taken)")
    @error_response(blp, 413, "Larger than MAX_UPLOAD_BYTES (or a form bomb); nothing stored")
    @error_response(blp, 412, "If-Match named entity tags: the list of videos states none, "
                              "so none can match; the body was not read, nothing stored")
    @error_response(blp, 415, "The body is not multipart/form-data, or is compressed "
                              "(Content-Encoding)")
    @error_response(blp, 507, "The server's disk filled up while the upload was received or "
                              "stored; nothing stored")
    @blp.doc(operationId="uploadVideo")
    def post(self, files):
        """Upload a video or audio file (multipart field `file`)

        One file a request. Optional fields `language` and `translate` say how its runs
        transcribe it. A field sent twice (two files) is a 422.
        """
        upload = files["file"]
        with option_errors("files", "language"):  # 422 before storing
            language = languages.parse(ext.settings(), files["language"])
        with option_errors("files", "file"):  # not media
            video = ingest.ingest(ext.db(), ext.storage(), upload.stream, upload.filename,
                                  ext.settings().probe_timeout, requested_language=language,
                                  translate=files["translate"])
        return video_payload(video), 201, {"Location": url_for("videos.VideoById",
                                                              video_id=video.id)}

    @blp.arguments(VideoListQuerySchema, location="query")
    @blp.response(200, VideoSchema(many=True))
    @blp.paginate()
    @blp.doc(operationId="listVideos")
    def get(self, query, pagination_parameters):
        """List videos, newest first (or sorted and filtered by status)"""
        videos, total = ingest.list_videos(
            ext.db(), pagination_parameters.page, pagination_parameters.page_size,
            status=query.get("status"), sort=query["sort"],
        )
        pagination_parameters.item_count = total
        return [video_payload(v) for v in videos]


@blp.route("/videos/<string:video_id>", merge_slashes=False)
class VideoById(MethodView):
    @blp.response(200, VideoSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.doc(operationId="getVideo")
    def get(self, video_id):
        """Show one video with its latest processing summary"""
        return video_payload(find_video(video_id))

    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    @error_response(blp, 412, "If-Match named entity tags: a video states none, so none can "
                              "match and nothing was deleted (If-Match: * is accepted)")
    @error_response(blp, 507, DISK_FULL_507)
    @blp.doc(operationId="deleteVideo")
    def delete(self, video_id):
        """Delete a video, its tasks and every file (409 while processing)"""
        find_video(video_id)
        refuse_entity_tags("a video")
        ingest.delete_video(ext.db(), ext.storage(), video_id)


@blp.route("/videos/<string:video_id>/artifacts", merge_slashes=False)
class Artifacts(MethodView):
    @blp.response(200, ArtifactSchema(many=True))
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.doc(operationId="listArtifacts")
    def get(self, video_id):
        """List the outputs that exist for a video"""
        video = find_video(video_id)
        return [
            {"name": a.name, "size_bytes": a.size_bytes, "mime_type": a.mime_type,
             "step": a.step, "task_id": a.task_id,
             "language": languages.of_artifact(a.name, video),
             "url": url_for("videos.Artifact", video_id=video.id, name=a.name)}
            for a in publications.artifacts(ext.db(), ext.storage(), video.id)
        ]



def _file_names(stem: str, suffix: str, bare: str = "transcript.txt") -> dict[str, str]:
    """Content-Disposition's file name parameters for `stem` + `suffix` (RFC 6266): a name
    beyond ASCII goes in filename* (UTF-8, percent-encoded), beside an ASCII filename for
    old clients. Put in filename as it was, a header value must be Latin-1: gunicorn answered
    a video named in Chinese or with an emoji with a bare 500, and sent `café` as one byte
    clients read in their own charset. `bare` is the ASCII name when the stem has no ASCII
    letters (Flask's send_file left " .captions.vtt" of "日本語 🎬")."""
    stem = _fitted(stem, suffix)
    name = stem + suffix
    if name.isascii():
        return {"filename": name}
    plain = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode().strip()
    plain = _fitted(plain, suffix).strip(" .")
    return {"filename": plain + suffix if plain else bare,
            "filename*": "UTF-8''" + quote(name, safe="!#$&+-.^_`|~")}


def _stem(video) -> str:
    """The video's name without its extension, and without leading dots (no hidden file)
    or spaces at either end (". x.mp4" too, whose space follows the dot): what its
    downloads are named after."""
    return video.original_filename.rsplit(".", 1)[0].strip(string.whitespace + ".")


# A file name's most bytes on the usual file systems (ext4, btrfs, XFS, APFS, NTFS's 255
# UTF-16 units are more): a video may be named with 255 characters, up to 4 bytes each.
_NAME_BYTES = 255


def _fitted(stem: str, suffix: str) -> str:
    """`stem` cut so that it and `suffix` are at most _NAME_BYTES bytes of UTF-8 (whole
    characters, never a combining mark left without its letter), trailing spaces and dots
    dropped: a 255-character name in Chinese gave a 769-byte file name that the browser's
    disk would refuse."""
    room = _NAME_BYTES - len(suffix.encode())
    if len(stem.encode()) <= room:
        return stem
    cut = stem.encode()[:room].decode("utf-8", "ignore")
    # a letter whose combining marks would be cut off goes with them
    while cut and unicodedata.combining(stem[len(cut)]):
        cut = cut[:-1]
    return cut.rstrip(" .")


@blp.route("/videos/<string:video_id>/transcript.txt", merge_slashes=False)
class TranscriptText(MethodView):
    @blp.doc(responses={"200": {"description": (
        "The published transcript as plain UTF-8 text, one segment a line (as an attachment "
        "named after the video)"), "content": {"text/plain": {"schema": _TEXT}},
        "headers": {"Content-Disposition": {
            "description": "`attachment`, named after the video (`<its name>.txt`, "
                           "cut to whole characters within 255 bytes of UTF-8)",
            "required": True, "schema": _TEXT},
            "Cache-Control": {"description": "`no-cache, private`: a newer run may replace "
                                             "the transcript", "required": True,
                              "schema": _TEXT},
            "ETag": {"description": "Strong validator of this text (If-None-Match)",
                     "required": True, "schema": _TEXT}}},
        "304": {"description": "Not modified since the copy the client has (If-None-Match)",
                "headers": {"ETag": {"description": "The text's validator", "required": True,
                                     "schema": _TEXT}}}})
    @blp.alt_response(404, response="NOT_FOUND")
    @error_response(blp, 412, "If-Match no longer holds: the transcript changed since the "
                              "copy the client has (strong comparison; `*` holds for any "
                              "transcript there is)")
    @blp.doc(operationId="getTranscriptText", parameters=[
        header_parameter("If-None-Match", "The ETag of the copy the client has: 304 while "
                                          "the transcript is the same"),
        header_parameter("If-Match", "The ETag of the copy the client has (or `*`): 412 "
                                     "once the transcript changed")])
    def get(self, video_id):
        """Download the transcript as plain text, one segment a line

        With its ETag in If-None-Match, a client whose copy is current gets a 304 (a newer
        run's transcript has another); with it in If-Match, a 412 once it changed."""
        video = find_video(video_id)
        text = results.transcript_text(
            publications.artifact(ext.db(), ext.storage(), video.id, "transcript.json"),
            video.id)
        if text is None:
            raise NotFound(f"video {video.id} has no transcript yet")
        stem = _stem(video) or "transcript"
        response = Response(text, mimetype="text/plain")
        response.headers.set("Content-Disposition", "attachment", **_file_names(stem, ".txt"))
        response.headers["Cache-Control"] = "no-cache, private"
        response.add_etag()  # of the text: a client revalidating its copy gets a 304
        _check_if_match(response.get_etag()[0], "the transcript")
        return response.make_conditional(request)


def _check_if_match(etag: str, what: str) -> None:
    """412 (JSON) when If-Match names no current copy of `what` (strong comparison, RFC 9110
    13.1.1; `*` holds, as it exists). werkzeug's make_conditional answered an If-Match that
    did not hold with a 412 carrying the whole text as its body, and `*` with that 412 too.
    One that holds is done with and dropped, so that werkzeug looks at If-None-Match."""
    if "HTTP_IF_MATCH" not in request.environ:
        return
    if not request.if_match.contains(etag):  # (contains: `*`, or the strong tag)
        abort(412, message=f"{what} has changed since the copy named in If-Match; "
                           "download it again")
    request.environ.pop("HTTP_IF_MATCH")


# Each artifact is served with its own media type (audio/wav, text/vtt, image/jpeg, ...);
# the one JSON artifact (transcript.json) is described as what it holds, since clients
# (and schemathesis) read an application/json body as JSON, not as a binary string.
# A byte range of it is no JSON document, so 206 answers stay binary strings.
_MIME_TYPES = sorted({mime_type(name) for name in ALL_ARTIFACT_NAMES})
_BINARY = {"type": "string", "format": "binary"}
# The validators and range support a client builds conditional and resumed downloads on.
_STRING = {"type": "string"}
_VALIDATORS = {
    "ETag": {"description": "Strong validator of this copy of the file (If-None-Match, "
                            "If-Match, If-Range)", "required": True, "schema": _STRING},
    "Cache-Control": {"description": "`no-cache, max-age=0`: a newer run may replace the "
                                     "file, so revalidate", "required": True, "schema": _STRING},
}
_FILE_HEADERS = {
    **_VALIDATORS,
    "Last-Modified": {"description": "When the file was written (If-Modified-Since, "
                                     "If-Unmodified-Since)", "required": True, "schema": _STRING},
    "Accept-Ranges": {"description": "`bytes`: byte ranges can be asked for (Range)",
                      "required": True, "schema": _STRING},
    "Content-Disposition": {"description": "`inline`, named `<the video's name>.<artifact>` "
                                           "(`my talk.captions.vtt`; the video's name "
                                           "without its extension, cut to whole "
                                           "characters within 255 bytes)",
                            "required": True, "schema": _STRING},
}
_CONTENT_RANGE = {"description": "The range sent and the file's length, "
                                 "`bytes <first>-<last>/<length>`",
                  "required": True, "schema": _STRING}
_FILE_RESPONSES = {
    "200": {"description": "The file", "headers": _FILE_HEADERS, "content": {
        mime: {"schema": TranscriptSchema if mime == "application/json" else _BINARY}
        for mime in _MIME_TYPES}},
    "206": {"description": "The requested byte range (HTTP Range)",
            "headers": {**_FILE_HEADERS, "Content-Range": _CONTENT_RANGE},
            "content": {mime: {"schema": _BINARY} for mime in _MIME_TYPES}},
    "304": {"description": "Not modified since the copy the client has (conditional request)",
            "headers": _VALIDATORS},
}


# The request headers a download honours (RFC 9110: Range and the conditional ones).
_FILE_PARAMETERS = [
    header_parameter("Range", "One byte range, `bytes=<first>-[<last>]` or `bytes=-<suffix>`: "
                              "206 with that range (several ranges, or another unit's, are "
                              "answered with the whole file), 416 when it is outside the file"),
    header_parameter("If-Range", "With Range: the file's ETag, or its Last-Modified exactly; "
                                 "the range is served only if it still holds, else the "
                                 "whole file"),
    header_parameter("If-None-Match", "The ETag of the copy the client has: 304 while it "
                                      "is current"),
    header_parameter("If-Modified-Since", "Without If-None-Match: 304 unless the file was "
                                          "written later"),
    header_parameter("If-Match", "ETags (strong comparison), or `*`: 412 when the file is "
                                 "none of them (it was replaced)"),
    header_parameter("If-Unmodified-Since", "Without If-Match: 412 when the file was "
                                            "written later (an invalid date is ignored)"),
]


def _servable_range(size: int) -> None:
    """Rewrite the request's Range where werkzeug would answer 416 to a range that RFC 9110
    says to serve: a suffix longer than the file selects the whole file (14.1.2); a Range of
    a unit other than bytes MUST be ignored, and several ranges (werkzeug cannot send a
    multipart answer) may be (14.2); an empty element of the list is no range (5.6.1). These
    are told apart before werkzeug's parser sees the header: it refuses several ranges out of
    order or overlapping, a list with an empty element, and a unit's ranges it cannot read
    (`items=a`), all as unsatisfiable. Anything else is left to werkzeug."""
    sent = request.headers.get("Range")
    if not sent:
        return
    unit, _, specs = sent.partition("=")
    ranges = [spec.strip() for spec in specs.split(",") if spec.strip()]
    if unit.strip().lower() != "bytes" or len(ranges) > 1:
        request.environ.pop("HTTP_RANGE", None)
        return
    parsed = parse_range_header(f"bytes={ranges[0]}") if ranges else None
    if parsed is None:
        return  # no range, or not one (bytes=5-2): werkzeug's 416, as 14.2 allows
    request.environ["HTTP_RANGE"] = f"bytes={ranges[0]}"
    start, end = parsed.ranges[0]
    if start < 0 and end is None and -start > size:
        request.environ["HTTP_RANGE"] = "bytes=0-"


def _check_if_range(path) -> None:
    """If-Range (RFC 9110 13.1.5): the Range is served only if the validator sent is the
    file's own, by strong comparison: its ETag, or its Last-Modified exactly; otherwise the
    whole file. werkzeug also served the range for a date later than Last-Modified and for
    the file's tag made weak (W/"..."), so a download resumed with either could join the
    start of one file to the rest of a newer one. A strong tag is left to werkzeug."""
    sent = request.headers.get("If-Range", "").strip()
    if not sent or "HTTP_RANGE" not in request.environ:
        return
    date = parse_date(sent)
    if date is not None:
        holds = date == datetime.fromtimestamp(int(os.stat(path).st_mtime), UTC)
    else:
        holds = not sent.startswith("W/")
    if not holds:
        request.environ.pop("HTTP_RANGE", None)


def _send(path, mimetype: str, name: str, video=None) -> Response:
    response = send_file(path, mimetype=mimetype, conditional=True, download_name=name,
                         max_age=0)
    stem = _stem(video) if video is not None else ""
    if stem:
        # `<the video's name>.<artifact>` ("my talk.captions.vtt"): saved from the page,
        # every video's files were preview.mp4, captions.vtt, ... (the browser takes this
        # name over the link's own), and a second video's became "preview (1).mp4".
        response.headers.set("Content-Disposition", "inline",
                             **_file_names(stem, "." + name, bare=name))
    return response


def _check_preconditions(path, mimetype: str, name: str) -> None:
    """412 (JSON) when If-Match, or without it If-Unmodified-Since, no longer holds. RFC 9110
    (13.2.2) evaluates them before Range, but werkzeug serves a Range first and ignores
    If-Match (a resumed download would join two different files), its own 412 carries the
    whole file as its body, and it does not look at If-Unmodified-Since at all.
    An If-Match that holds is done with and dropped: werkzeug refuses `*` (which any file
    there is matches), and with If-Match holding it sends the whole file where If-None-Match
    asks for a 304. A Range is dropped where the copy the client has is current."""
    environ = request.environ
    if "HTTP_IF_MATCH" not in environ:
        _check_unmodified_since(path, name)
    else:
        if not request.if_match.star_tag and _status_without_range(path, mimetype, name) == 412:
            abort(412, message=f"{name} has changed since the copy named in If-Match; "
                               "download it again")
        environ.pop("HTTP_IF_MATCH")
    # If-None-Match, or without it If-Modified-Since, comes before Range too (13.2.2, steps
    # 3-5): a client whose copy is current gets its 304, not a 206 of that copy.
    revalidates = "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ
    if ("HTTP_RANGE" in environ and revalidates
            and _status_without_range(path, mimetype, name) == 304):
        environ.pop("HTTP_RANGE")


def _status_without_range(path, mimetype: str, name: str) -> int:
    """The status werkzeug answers this request with, its Range left out: 412 for an If-Match
    that does not name the file's ETag (strong comparison), 304 for a copy that is current."""
    environ = request.environ
    sent_range = environ.pop("HTTP_RANGE", None)
    try:
        checked = _send(path, mimetype, name)
        checked.close()
    finally:
        if sent_range is not None:
            environ["HTTP_RANGE"] = sent_range
    return checked.status_code


def _check_unmodified_since(path, name: str) -> None:
    """If-Unmodified-Since (RFC 9110 13.1.4): 412 when the file's Last-Modified (its mtime to
    the second, as send_file states it) is later than the date; ignored when it is not one
    valid HTTP-date. A newer run's file has a later mtime, so a download resumed with it
    (curl -z -DATE, some download managers) cannot join two different files."""
    sent = request.headers.get("If-Unmodified-Since", "")
    # Each HTTP-date form has at most one comma: more is a list, which parse_date would read
    # as its first date and the RFC says to ignore.
    since = parse_date(sent) if sent.count(",") <= 1 else None
    if since is None:
        return
    modified = datetime.fromtimestamp(int(os.stat(path).st_mtime), UTC)
    if modified > since:
        abort(412, message=f"{name} has changed since {http_date(since)} "
                           f"(If-Unmodified-Since; it is from {http_date(modified)}); "
                           "download it again")


@blp.route("/videos/<string:video_id>/artifacts/<string:name>", merge_slashes=False)
class Artifact(MethodView):
    @blp.doc(responses=_FILE_RESPONSES)
    @blp.alt_response(404, response="NOT_FOUND")
    @error_response(blp, 412, "If-Match, or If-Unmodified-Since, no longer holds: the file "
                              "changed since the copy the client has")
    @blp.alt_response(416, schema=ErrorSchema, description=(
        "The requested byte range is outside the file"), headers={"Content-Range": {
            "description": "The file's length, `bytes */<length>`", "required": True,
            "schema": _STRING}})
    @blp.doc(operationId="getArtifact", parameters=_FILE_PARAMETERS)
    def get(self, video_id, name):
        """Download one output; supports HTTP Range so players can seek"""
        video = find_video(video_id)
        # The published file is resolved again if a newer run replaced (and removed) it
        # between the lookup and the open.
        for _ in range(3):
            artifact = publications.artifact(ext.db(), ext.storage(), video.id, name)
            if artifact is None:
                raise NotFound(f"artifact {name!r} does not exist for video {video.id}")
            _servable_range(artifact.size_bytes)
            _check_if_range(artifact.path)
            try:
                _check_preconditions(artifact.path, artifact.mime_type, name)
                return _send(artifact.path, artifact.mime_type, name, video)
            except FileNotFoundError:
                ext.db().rollback()
        raise NotFound(f"artifact {name!r} does not exist for video {video.id}")
