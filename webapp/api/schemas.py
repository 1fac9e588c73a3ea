"""Marshmallow schemas of the JSON API (requests, responses, errors)."""

from __future__ import annotations

import marshmallow as ma
from flask_smorest.fields import Upload
from marshmallow import fields, validate

from webapp.models import SUBTASK_STATUSES, TASK_STATUSES
from webapp.services.mediainput import ACCEPTED


class ErrorSchema(ma.Schema):
    """Every error answer of /api: `code`, `status`, `message`, and details where useful."""

    code = fields.Integer(required=True, metadata={"description": "HTTP status code"})
    status = fields.String(required=True, metadata={"description": "HTTP status name"})
    message = fields.String(required=True, metadata={"description": "What went wrong"})
    errors = fields.Dict(metadata={"description": "Validation errors by location and field"})
    task_id = fields.String(
        allow_none=True, metadata={"description": "On 409: the task that is already active"}
    )


class UploadSchema(ma.Schema):
    file = Upload(required=True, metadata={"description": (
        f"The audio or video file, in an accepted container format ({ACCEPTED}). Anything "
        "else (playlists, lists of files, images, stream descriptions, subtitles, text) is "
        "refused with 422, as is a file that cannot be checked within PROBE_TIMEOUT.")})


class ForceQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    force = fields.Boolean(
        load_default=False,
        metadata={"description": "Cancel an active task and start a new one instead of 409"},
    )


class ForceBodySchema(ma.Schema):
    force = fields.Boolean(load_default=False, metadata={"description": "Same as the query flag"})


class SubTaskProgressSchema(ma.Schema):
    name = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(SUBTASK_STATUSES))
    progress = fields.Float(required=True, metadata={"description": "0-100"})
    weight = fields.Float(required=True, metadata={"description": "Share of the total"})
    attempt = fields.Integer(required=True, metadata={"description": "1 on the first try"})
    reused = fields.Boolean(
        required=True, metadata={"description": "Output kept from an earlier run (run_sync)"}
    )
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    error = fields.String(
        allow_none=True,
        metadata={"description": "Why it failed or skipped: one sentence for people, or "
                  "'internal error (reference <id>)' when a bug failed it (the worker's "
                  "log has the details under that reference)"},
    )
    error_detail = fields.String(
        allow_none=True,
        metadata={"description": "The raw output of the tool that failed (ffmpeg, whisper),"
                  " server paths removed, for bug reports; null when there is none"},
    )


class TaskProgressSchema(ma.Schema):
    video_id = fields.String(required=True)
    task_id = fields.String(allow_none=True, metadata={"description": "null before any run"})
    mode = fields.String(allow_none=True, metadata={"description": "run_sync or reprocess"})
    status = fields.String(required=True, validate=validate.OneOf(TASK_STATUSES))
    progress = fields.Float(required=True, metadata={"description": "Weighted total, 0-100"})
    subtasks = fields.List(fields.Nested(SubTaskProgressSchema), required=True)
    created_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    error = fields.String(allow_none=True)
    eta_seconds = fields.Float(allow_none=True, metadata={"description": (
        "Seconds until the run ends, as of its last change: the work left in the steps that "
        "really run (reused and skipped steps excluded), at the pace each has shown since "
        "its first progress report. null when unknown (before any step has shown a pace) "
        "or when the run has ended")})


class AsyncTaskSchema(ma.Schema):
    task_id = fields.String(required=True)
    video_id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(TASK_STATUSES))
    message = fields.String(required=True)
    progress_url = fields.String(required=True)


class ProgressSummarySchema(ma.Schema):
    task_id = fields.String(allow_none=True)
    status = fields.String(required=True)
    progress = fields.Float(required=True)


class VideoSchema(ma.Schema):
    id = fields.String(required=True)
    original_filename = fields.String(required=True)
    size_bytes = fields.Integer(required=True)
    format_name = fields.String(required=True)
    duration = fields.Float(allow_none=True, metadata={"description": "Seconds"})
    width = fields.Integer(allow_none=True)
    height = fields.Integer(allow_none=True)
    has_audio = fields.Boolean(required=True)
    has_video = fields.Boolean(required=True)
    video_codec = fields.String(allow_none=True)
    audio_codec = fields.String(allow_none=True)
    created_at = fields.DateTime(required=True)
    processing = fields.Nested(ProgressSummarySchema, required=True)
    progress_url = fields.String(required=True)
    artifacts_url = fields.String(required=True)


class ArtifactSchema(ma.Schema):
    name = fields.String(required=True)
    size_bytes = fields.Integer(required=True)
    mime_type = fields.String(required=True)
    step = fields.String(required=True, metadata={"description": "The step that made it"})
    task_id = fields.String(required=True, metadata={
        "description": "The run (task) whose completed step published this file"})
    url = fields.String(required=True)


class TranscriptSegmentSchema(ma.Schema):
    start = fields.Float(required=True, metadata={"description": "Seconds"})
    end = fields.Float(required=True, metadata={"description": "Seconds"})
    text = fields.String(required=True)


class TranscriptSchema(ma.Schema):
    """transcript.json, the one artifact served as JSON."""

    language = fields.String(required=True, metadata={"description": "Language code, e.g. en"})
    duration = fields.Float(required=True, metadata={"description": "Seconds of audio"})
    segments = fields.List(fields.Nested(TranscriptSegmentSchema), required=True)
    text = fields.String(required=True, metadata={"description": "The segments' text joined"})
