"""The worker exchange: media to and from workers on other hosts, over HTTP (docs/DEPLOY.md).

Only for workers holding WORKER_TOKEN (webapp/security.py checks it before any view; never
the API token nor a browser's login), and not part of the public OpenAPI document:

    GET  /internal/v1/hello                                  the token check of a starting worker
    GET  /internal/v1/videos/<video>/source                  the upload (Range, X-Sha256)
    GET  /internal/v1/videos/<video>/outputs/<name>?folder=  a published output (ditto)
    PUT  /internal/v1/tasks/<task>/steps/<step>/<attempt>/files/<name>   an output
    POST /internal/v1/tasks/<task>/steps/<step>/<attempt>/complete       publish them

An upload is written into the attempt's own folder under MEDIA_ROOT, checked against its
Content-Length and X-Sha256, and kept only while the attempt is the step's running one.
`complete` checks the files again and publishes them with progress.complete_subtask: in
the transaction that completes the attempt, fenced by it, so a stale attempt's uploads are
refused and change nothing.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import math
import os
import sys
import uuid
from pathlib import Path

from flask import Blueprint, jsonify, request, send_file
from sqlalchemy.orm import Session

from webapp import extensions as ext
from webapp.config import STEPS
from webapp.models import ProcessingTask, Publication, Video
from webapp.services import progress, publications, results
from webapp.services.storage import (
    OPTIONAL_OUTPUTS,
    STEP_OUTPUTS,
    file_sha256,
    is_valid_id,
    step_of,
)

log = logging.getLogger(__name__)

PREFIX = "/internal/v1"
SHA_HEADER = "X-Sha256"
# Facts a step may write on the video with its outputs (runner.StepResult.video).
VIDEO_VALUES = ("language", "language_probability", "transcript_model", "transcript_script")
_CHUNK = 1 << 20
_SHA_CHARS = frozenset("0123456789abcdef")

bp = Blueprint("internal", __name__, url_prefix=PREFIX)


def _error(status: int, message: str):
    names = {400: "Bad Request", 404: "Not Found", 409: "Conflict", 422: "Unprocessable Entity",
             507: "Insufficient Storage"}
    return jsonify(code=status, status=names.get(status, "Error"), message=message), status


def _video_value_ok(name: str, value: object) -> bool:
    """Whether a value a worker sends for the video fits its column (None always does)."""
    if value is None:
        return True
    if name == "language_probability":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    limit = Video.__table__.c[name].type.length
    return isinstance(value, str) and len(value) <= limit


def _seconds_ok(value: object) -> bool:
    """Whether a worker's `ran_for` is a length of time (finite, not negative)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def _is_sha(value: str | None) -> bool:
    return value is not None and len(value) == 64 and set(value) <= _SHA_CHARS


def _serve(path: Path, sha256: str):
    """The file with HTTP Range and its sha256 (the ETag too, so If-Range resumes only the
    same bytes)."""
    resp = send_file(path, mimetype="application/octet-stream", conditional=True,
                     etag=sha256, max_age=0)
    resp.headers[SHA_HEADER] = sha256
    return resp


def _source_sha256(session: Session, video: Video, path: Path) -> str:
    """The sha256 recorded at upload; for sources uploaded before it was, computed now and
    recorded (concurrent first needs compute the same value)."""
    if video.sha256 is None:
        video.sha256 = file_sha256(path)
        session.commit()
        log.info("recorded the sha256 of video %s's source on first need", video.id)
    return video.sha256


@bp.get("/hello")
def hello():
    """Nothing but the token check (webapp/security.py, before any view): a worker asks
    it when it starts, so that one with a wrong WORKER_TOKEN stops there, saying so,
    instead of taking jobs it cannot do."""
    return jsonify(ok=True)


@bp.get("/videos/<video_id>/source")
def source(video_id: str):
    """The video's uploaded source."""
    session = ext.db()
    video = session.get(Video, video_id) if is_valid_id(video_id) else None
    if video is None:
        return _error(404, "no such video")
    path = ext.storage().source_path(video.id, video.stored_name)
    if not path.is_file():
        return _error(404, "the video's source is not on the server's disk")
    return _serve(path, _source_sha256(session, video, path))


@bp.get("/videos/<video_id>/outputs/<name>")
def output(video_id: str, name: str):
    """A published output, if `folder` is still the one published for its step."""
    step = step_of(name)
    if not is_valid_id(video_id) or step is None:
        return _error(404, "no such output")
    pub = ext.db().get(Publication, (video_id, step))
    if pub is None or pub.folder != request.args.get("folder"):
        return _error(404, "that output is not published (any more)")
    found = ext.storage().artifact_in(video_id, pub.folder, name)
    if found is None:
        return _error(404, "that output is not on the server's disk")
    return _serve(found.path, file_sha256(found.path))


def _attempt_folder(session: Session, task_id: str, step: str,
                    attempt: int) -> tuple[str, Path] | None:
    """(video id, the attempt's folder on this disk) if the attempt is the step's running
    one, else None."""
    if not is_valid_id(task_id) or step not in STEPS or attempt < 1:
        return None
    if not progress.attempt_is_current(session, task_id, step, attempt):
        return None
    task = session.get(ProcessingTask, task_id)
    if task is None:
        return None
    storage = ext.storage()
    folder = storage.attempt_folder(task_id, step, attempt)
    return task.video_id, storage.folder_path(task.video_id, folder)


def _stale(task_id: str, step: str, attempt: int):
    log.info("refused files of %s of task %s, attempt %d: not the step's running attempt",
             step, task_id, attempt)
    return _error(409, "this attempt is not the step's running attempt (cancelled, replaced "
                       "or taken over): its files are not wanted")


@bp.put("/tasks/<task_id>/steps/<step>/<int:attempt>/files/<name>")
def upload(task_id: str, step: str, attempt: int, name: str):
    """One output file of a running attempt, checked against its size and sha256."""
    if name not in (*STEP_OUTPUTS.get(step, ()), *OPTIONAL_OUTPUTS.get(step, ())):
        return _error(404, "no such output of that step")
    # MAX_UPLOAD_BYTES is the API clients' limit, not the workers': a step's outputs can
    # be larger than its source (the 16 kHz WAV of a compressed talk, a preview). The body
    # ends at its Content-Length all the same (the server's framing, or werkzeug's). None
    # would mean MAX_CONTENT_LENGTH; the Content-Length itself, a 413 at the body's end.
    request.max_content_length = sys.maxsize
    expected_sha = (request.headers.get(SHA_HEADER) or "").lower()
    size = request.content_length
    if not _is_sha(expected_sha) or size is None:
        return _error(400, f"send the file's Content-Length and its sha256 in {SHA_HEADER}")
    session = ext.db()
    where = _attempt_folder(session, task_id, step, attempt)
    if where is None:
        return _stale(task_id, step, attempt)
    video_id, folder = where
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{name}.{uuid.uuid4().hex}.part"
    try:
        try:
            received, sha = _receive(part)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.error("no room for %s of %s of task %s under MEDIA_ROOT: %s", name, step,
                      task_id, exc)
            part.unlink(missing_ok=True)
            _drain()  # the rest of the body, so that the worker reads the answer
            return _error(507, "its disk is full")
        if (received, sha) != (size, expected_sha):
            log.warning("upload of %s for %s of task %s: got %d bytes with sha256 %s, "
                        "expected %d with %s", name, step, task_id, received, sha, size,
                        expected_sha)
            return _error(422, f"the file arrived damaged: {received} of {size} bytes, "
                               "sha256 differs; send it again")
        if not progress.attempt_is_current(session, task_id, step, attempt):
            return _stale(task_id, step, attempt)  # superseded during the upload
        os.replace(part, folder / name)
    finally:
        part.unlink(missing_ok=True)
    return jsonify(name=name, size_bytes=size, sha256=sha), 201


def _drain() -> None:
    while request.stream.read(_CHUNK):
        pass


def _receive(part: Path) -> tuple[int, str]:
    """Write the request body to `part`: (bytes received, their sha256)."""
    digest, received = hashlib.sha256(), 0
    stream = request.stream
    with open(part, "wb") as fh:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            fh.write(chunk)
            received += len(chunk)
    return received, digest.hexdigest()


@bp.post("/tasks/<task_id>/steps/<step>/<int:attempt>/complete")
def complete(task_id: str, step: str, attempt: int):
    """Complete the attempt and publish the files it uploaded, in one fenced transaction."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("files"), dict):
        return _error(400, "send JSON {files: {name: sha256}, note, video}")
    files: dict = body["files"]
    values = body.get("video") or {}
    note = body.get("note")
    ran_for = body.get("ran_for")
    if (not isinstance(values, dict) or set(values) - set(VIDEO_VALUES)
            or not all(_video_value_ok(k, v) for k, v in values.items())
            or not (note is None or isinstance(note, str))
            or not (ran_for is None or _seconds_ok(ran_for))):
        return _error(400, f"video may only hold {', '.join(VIDEO_VALUES)} (strings that fit "
                           "their columns, a number); note is a string; ran_for a number of "
                           "seconds")
    session = ext.db()
    task = session.get(ProcessingTask, task_id) if is_valid_id(task_id) else None
    if task is None or step not in STEPS or attempt < 1:
        return _error(404, "no such attempt")
    video_id = task.video_id
    if not progress.attempt_is_current(session, task_id, step, attempt):
        # Stale, unless this is a retry of a completion whose answer was lost: said before
        # its files are looked at, which the next publication collects (a 422 about them
        # would have the worker send it again for a minute).
        pub = publications.published(session, video_id).get(step)
        if pub is None or (pub.task_id, pub.attempt) != (task_id, attempt):
            return _stale(task_id, step, attempt)
    storage = ext.storage()
    folder = storage.attempt_folder(task_id, step, attempt)
    path = storage.folder_path(video_id, folder)
    missing = [n for n in STEP_OUTPUTS[step] if n not in files]
    if missing:
        return _error(422, f"the step's outputs are incomplete: {', '.join(missing)} missing")
    for name, sha in files.items():
        if step_of(str(name)) != step or not (path / str(name)).is_file():
            return _error(422, f"{name} was not uploaded for this attempt")
        if not hmac.compare_digest(file_sha256(path / name), str(sha)):
            return _error(422, f"{name} on the server does not match its sha256")
    # Pieces of uploads cut by a restart of this web process: the worker sent those files
    # again whole (each checked above), and the folder is published as it is.
    for piece in path.glob(".*.part"):
        piece.unlink(missing_ok=True)
    storage.sync_folder(video_id, folder)  # on the disk before the database says so
    segments, translation = None, []
    if step == "transcribe":  # indexed for search in the publishing transaction
        found = storage.artifact_in(video_id, folder, "transcript.json")
        view = results.transcript(found, video_id)
        if view is None:
            return _error(422, "transcript.json could not be read")
        segments = [(line.start, line.end, line.text) for line in view.lines]
        translation = [(line.start, line.end, line.text) for line in view.translation]
    if progress.complete_subtask(session, task_id, step, attempt, video_id=video_id,
                                 folder=folder, note=note, video_values=values,
                                 segments=segments, translation=translation,
                                 ran_for=ran_for):
        published = True
    else:  # stale, or a retry of a completion whose answer was lost
        pub = publications.published(session, video_id).get(step)
        published = pub is not None and (pub.task_id, pub.attempt) == (task_id, attempt)
    if not published:
        return _stale(task_id, step, attempt)
    publications.collect_garbage(session, storage, video_id)
    session.commit()
    return jsonify(published=True)
