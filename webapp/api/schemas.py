"""Marshmallow schemas of the JSON API (requests, responses, errors)."""

from __future__ import annotations

import marshmallow as ma
from flask_smorest.fields import Upload
from marshmallow import fields, validate

from webapp.models import SUBTASK_STATUSES, TASK_STATUSES
from webapp.services.ingest import SORTS, STATUS_FILTERS
from webapp.services.mediainput import ACCEPTED


class ErrorSchema(ma.Schema):
    """Every error answer of /api: `code`, `status`, `message`, and details where useful."""

    code = fields.Integer(required=True, metadata={"description": "HTTP status code"})
    status = fields.String(required=True, metadata={"description": "HTTP status name"})
    message = fields.String(required=True, metadata={"description": "What went wrong"})
    errors = fields.Dict(metadata={"description": (
        "Validation errors by location (`query`, `json`, `files`, ...) and field, each a "
        "list of messages; location `video`: an option stored on the video that the "
        "request did not give (its `requested_language`, which the model no longer knows)")})
    task_id = fields.String(
        allow_none=True, metadata={"description": "On 409: the task that is already active"}
    )


_LANGUAGE = (
    "The spoken language, as the ISO 639-1 code Whisper uses (`zh`, `de`, `ja`, ...), or "
    "`auto` to detect it. A code the configured model does not know is 422, and the "
    "message lists the valid ones; with WHISPER_MODEL=tiny.en only `en` and `auto` are valid")
_TRANSLATE = (
    "Also make English captions (`captions.en.vtt`, `captions.en.srt`) with Whisper's "
    "translate task; nothing is translated when the speech is in English (the transcribe "
    "step then says so)")
_STORED = " Given here, it is stored on the video and used by its later runs too;"
_LANGUAGE_FIELD = {"validate": validate.Length(min=1, max=64)}


class UploadSchema(ma.Schema):
    class Meta:
        # A misspelt option (`languge=de`) must not store a video without it: 422 naming it,
        # as for the triggers; documented as additionalProperties: false.
        unknown = ma.RAISE

    file = Upload(required=True, metadata={"description": (
        f"The audio or video file, in an accepted container format ({ACCEPTED}). Anything "
        "else (playlists, lists of files, images, stream descriptions, subtitles, text) is "
        "refused with 422, as is a file that cannot be checked within PROBE_TIMEOUT.")})
    language = fields.String(load_default=None, **_LANGUAGE_FIELD, metadata={
        "description": _LANGUAGE + ". Stored on the video for its runs; default `auto`"})
    translate = fields.Boolean(load_default=False, metadata={
        "description": _TRANSLATE + ". Stored on the video for its runs; default false"})


class VideoListQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE  # page and page_size are the paginator's

    status = fields.String(validate=validate.OneOf(list(STATUS_FILTERS)), metadata={
        "description": "Only videos whose latest run is in this state: `active` (queued or "
        "running), `completed`, `failed`, `cancelled`, or `pending` (never run)"})
    sort = fields.String(load_default="newest", validate=validate.OneOf(SORTS), metadata={
        "description": "`newest` first (default), `oldest` first, by `name`, or by "
        "`duration` (longest first, unknown lengths last)"})


# A query string is text: a flag there is `true` or `false`, and marshmallow's other
# spellings (1/0, yes/no, on/off, t/f, y/n, any case) are read too, as they always were.
_QUERY_FLAG = " `true` or `false` (also 1/0, yes/no, on/off)."


class JsonBoolean(fields.Boolean):
    """A JSON body's flag: the JSON literals true and false only. marshmallow's Boolean also
    took 1, 0, "yes", "on", "true", "f"...: `{"force": 1}` forced a run and `{"force":
    "no"}` did not, where the OpenAPI says boolean, so a client that built its body as
    text (a template, a shell variable) never learnt it was wrong. A 422 naming the
    field, as for any other value of the wrong type."""

    default_error_messages = {
        "invalid": "Must be true or false (a JSON boolean, not a string or a number)."}

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class ForceQuerySchema(ma.Schema):

    force = fields.Boolean(
        load_default=False,
        metadata={"description": "Cancel an active task and start a new one instead of 409:"
                                 + _QUERY_FLAG},
    )
    language = fields.String(**_LANGUAGE_FIELD, metadata={
        "description": _LANGUAGE + "." + _STORED + " left out, the video's is used"})
    translate = fields.Boolean(metadata={
        "description": _TRANSLATE + "." + _STORED + " left out, the video's is used;"
                       + _QUERY_FLAG})


class ForceBodySchema(ma.Schema):
    force = JsonBoolean(load_default=False, metadata={
        "description": "Same as the query flag, as a JSON boolean: true or false (1, "
                       "\"true\" or \"yes\" are 422)"})
    language = fields.String(**_LANGUAGE_FIELD, metadata={
        "description": "Same as the query parameter (wins over it)"})
    translate = JsonBoolean(metadata={
        "description": "Same as the query parameter (wins over it), as a JSON boolean: "
                       "true or false"})


class SubTaskProgressSchema(ma.Schema):
    name = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(SUBTASK_STATUSES))
    progress = fields.Float(required=True, metadata={"description": "0-100"})
    weight = fields.Float(required=True, metadata={"description": "Share of the total"})
    attempt = fields.Integer(
        required=True, metadata={"description": "0 before the step starts, 1 on its first try"}
    )
    reused = fields.Boolean(
        required=True, metadata={"description": "Output kept from an earlier run (run_sync)"}
    )
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    error = fields.String(
        allow_none=True,
        metadata={"description": "Why it failed or skipped, or a note on how it completed "
                  "(e.g. nothing to translate, damaged frames of the source skipped or concealed): "
                  "one sentence for people, or "
                  "'internal error (reference <id>)' when a bug failed it (the worker's "
                  "log has the details under that reference). Another step is named by its "
                  "`name` ('not run because extract_audio failed'); the web page shows "
                  "it as its step table does ('extract audio')"},
    )
    error_detail = fields.String(
        allow_none=True,
        metadata={"description": "The raw output of the tool that failed (ffmpeg, whisper),"
                  " server paths removed, for bug reports; null when there is none"},
    )
    worker = fields.String(
        allow_none=True,
        metadata={"description": "The worker that runs or ran the step's latest attempt "
                  "(its WORKER_NAME, by default its host name); null before it started"},
    )


class TaskProgressSchema(ma.Schema):
    video_id = fields.String(required=True)
    task_id = fields.String(allow_none=True, metadata={"description": "null before any run"})
    mode = fields.String(allow_none=True, metadata={"description": "run_sync or reprocess"})
    status = fields.String(required=True, validate=validate.OneOf(TASK_STATUSES), metadata={
        "description": "pending (never ran); queued (waiting for a worker: not started yet, "
        "or no step runs any more and one waits in the queue again, e.g. its worker was "
        "stopped, or every worker stopped between two steps); running (a step runs); "
        "completed; failed; cancelled. queued and running are active"})
    progress = fields.Float(required=True, metadata={"description": "Weighted total, 0-100"})
    subtasks = fields.List(fields.Nested(SubTaskProgressSchema), required=True)
    created_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    error = fields.String(allow_none=True, metadata={"description": (
        "Why the run did not complete: for a failed one, a summary naming its steps by their "
        "`name` ('failed: extract_audio; not run: transcribe'; each step's `error` says "
        "why); for a cancelled one, why ('cancelled by request', 'replaced by a forced "
        "run'). null otherwise")})
    eta_seconds = fields.Float(allow_none=True, metadata={"description": (
        "Seconds until the run ends, counted from the run's last change (the last write of "
        "its progress, the moment its ETag last changed), not from the request: it stays the "
        "same between changes, so an unchanged answer keeps its ETag and a poll gets 304; to "
        "count down, use `eta_at`. The work left in the steps that "
        "really run (reused and skipped steps excluded), at the pace each has shown since "
        "its first measured progress report; a step not measured yet is sized by what its "
        "kind cost on this installation per second of media (so a queued run with no run "
        "ahead of it has one too: the time its steps take once a worker takes it; so does "
        "a run whose worker was stopped, queued again until a worker takes a step). null "
        "when unknown: a new installation, before any step has shown a pace; a queued run "
        "behind other runs (`runs_ahead` above 0: its end depends on their work, which is "
        "not estimated); a run that has ended")})
    eta_at = fields.DateTime(allow_none=True, metadata={"description": (
        "When the run is expected to end (ISO 8601, UTC): its last change plus `eta_seconds`, "
        "so it too stays the same between changes. Time left now = `eta_at` minus the "
        "current time (the answer's Date header is the server's clock); once passed while "
        "the run still goes, it takes longer than estimated. null when `eta_seconds` is")})
    runs_ahead = fields.Integer(required=True, metadata={"description": (
        "While the run is queued: how many runs the queue serves before it (the active runs "
        "of other videos triggered earlier, running or queued themselves); while any is "
        "ahead, `eta_seconds` and `eta_at` are null. 0 when the run is not queued. Part of "
        "the ETag: a poll gets a new answer when a run ahead ends")})


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
    format_name = fields.String(required=True, metadata={"description": (
        "ffprobe's name of the container's demuxer, e.g. `mov,mp4,m4a,3gp,3g2,mj2`")})
    format_label = fields.String(required=True, metadata={"description": (
        "The container as people name it (`MP4`, `QuickTime`, `WebM`, `Matroska`, ...): "
        "from the probed format and, where one demuxer reads several kinds, the file name's "
        "extension")})
    duration = fields.Float(allow_none=True, metadata={"description": "Seconds"})
    width = fields.Integer(allow_none=True, metadata={"description": (
        "Width of the processed video stream as it is shown (pixel aspect and rotation "
        "applied)")})
    height = fields.Integer(allow_none=True, metadata={"description": (
        "Height of the processed video stream as it is shown")})
    has_audio = fields.Boolean(required=True)
    has_video = fields.Boolean(required=True, metadata={"description": (
        "Whether the file has moving video: cover art and one-frame stills do not count")})
    video_codec = fields.String(allow_none=True, metadata={"description": (
        "Codec of the processed video stream: the first that moves, one flagged default "
        "first (cover art ahead of it is passed over)")})
    audio_codec = fields.String(allow_none=True, metadata={"description": (
        "Codec of the processed audio stream: the first flagged default, else the first")})
    created_at = fields.DateTime(required=True)
    language = fields.String(allow_none=True, metadata={"description": (
        "The language of the published transcript (ISO 639-1): detected, or the one asked "
        "for; null before a transcript exists")})
    language_probability = fields.Float(allow_none=True, metadata={"description": (
        "Whisper's probability for `language` (0-1; 1 when it was asked for)")})
    requested_language = fields.String(required=True, metadata={"description": (
        "The language the video's runs ask for: a code, or `auto` to detect it")})
    translate = fields.Boolean(required=True, metadata={
        "description": "Whether its runs also make English captions"})
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
    language = fields.String(allow_none=True, metadata={"description": (
        "The language of the file's text or speech (ISO 639-1): the transcript's for "
        "transcript.json, captions.vtt/.srt, audio.wav and preview.mp4, `en` for the "
        "translated captions.en.vtt/.srt; null for pictures and the storyboard index, "
        "and before the language is known")})
    url = fields.String(required=True)


class TranscriptWordSchema(ma.Schema):
    start = fields.Float(required=True, metadata={"description": "Seconds"})
    end = fields.Float(required=True, metadata={"description": "Seconds"})
    word = fields.String(required=True, metadata={
        "description": "As whisper wrote it: with its leading space where the script has one"})


class TranscriptSegmentSchema(ma.Schema):
    start = fields.Float(required=True, metadata={"description": "Seconds"})
    end = fields.Float(required=True, metadata={"description": "Seconds"})
    text = fields.String(required=True)
    words = fields.List(fields.Nested(TranscriptWordSchema), metadata={
        "description": "Timed words (the captions' cues are cut from them); absent in "
                       "transcripts made before they were recorded"})


class TranslationSchema(ma.Schema):
    """The English translation inside transcript.json."""

    language = fields.String(required=True, metadata={"description": "`en`"})
    language_probability = fields.Float(allow_none=True)
    duration = fields.Float(required=True, metadata={"description": "Seconds of audio"})
    segments = fields.List(fields.Nested(TranscriptSegmentSchema), required=True)
    text = fields.String(required=True)


class TranscriptSchema(ma.Schema):
    """transcript.json, the one artifact served as JSON."""

    language = fields.String(required=True, allow_none=True, metadata={"description": (
        "ISO 639-1 code of the spoken language, detected or asked for (e.g. zh); null when "
        "no speech was found and none was asked for")})
    language_probability = fields.Float(allow_none=True, metadata={
        "description": "Whisper's probability for `language` (1 when it was asked for)"})
    duration = fields.Float(required=True, metadata={"description": "Seconds of audio"})
    segments = fields.List(fields.Nested(TranscriptSegmentSchema), required=True)
    text = fields.String(required=True, metadata={"description": "The segments' text joined"})
    translation = fields.Nested(TranslationSchema, allow_none=True, metadata={"description": (
        "With translate: the English translation (Whisper's translate task); null when there "
        "was nothing to translate. Absent when no translation was asked for")})
    translation_note = fields.String(allow_none=True, metadata={
        "description": "Why there is no translation although one was asked for"})


class SearchQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE  # page and page_size are the pagination's

    q = fields.String(required=True, validate=validate.Length(min=1, max=200), metadata={
        "description": (
            "What to search for in videos' names and transcripts (and the transcripts' "
            "English translations). Every word must occur in the name or in one segment of "
            "the transcript or translation, in any of its forms where the video's language "
            "has a Snowball stemmer (report finds reports and reporting); case and accents "
            "of Latin and "
            "Greek letters do not matter, nor Cyrillic stress marks, ё against е, "
            "Ukrainian ґ against г, Arabic and Hebrew vowel points, or Arabic's forms of "
            "alef (أ إ آ against ا), ى against ي and ة against ه; two or more Chinese, "
            "Japanese or Korean characters are "
            "found inside a segment, Korean inside the particles written onto a word (a "
            "single character as the start of a pair); Thai, Lao, Khmer and Burmese are cut "
            "into dictionary words, so a word is found inside a sentence written without "
            "spaces, and several words as a phrase. Quotes and operators "
            "are searched as the words they hold, never interpreted. 1-200 characters with "
            "a letter or digit, else 422")})


class SearchSegmentSchema(ma.Schema):
    start = fields.Float(required=True, metadata={"description": "Seconds"})
    end = fields.Float(required=True, metadata={"description": "Seconds"})
    text = fields.String(required=True, metadata={"description": "As in the transcript"})
    translation = fields.Boolean(required=True, metadata={
        "description": "True for a line of the English translation (a task run with "
                       "`translate`), false for a line of the transcript"})


class SearchHitSchema(ma.Schema):
    video = fields.Nested(VideoSchema, required=True)
    name_matches = fields.Boolean(required=True, metadata={
        "description": "The video's name holds every word of the query"})
    segment_count = fields.Integer(required=True, metadata={
        "description": "How many segments of its published transcript, or of the "
                       "transcript's English translation, match"})
    segments = fields.List(fields.Nested(SearchSegmentSchema), required=True, metadata={
        "description": "The first (at most 3) matching segments, in time order"})
