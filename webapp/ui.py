"""Server-rendered pages and HTMX fragments; they call the same services as the JSON API."""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    session,
    url_for,
)
from flask_wtf.csrf import generate_csrf
from redis.exceptions import RedisError
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from webapp import extensions as ext
from webapp.api import html_error
from webapp.config import STEPS
from webapp.models import ProcessingTask, Video, utcnow
from webapp.services import (
    bulk,
    ingest,
    languages,
    processing,
    progress,
    publications,
    results,
)
from webapp.services.errors import Conflict, InvalidMedia, NotFound, ServiceError
from webapp.services.mediainput import video_format
from webapp.sizes import human_size

log = logging.getLogger(__name__)
bp = Blueprint("ui", __name__)
# Routes taking an id have merge_slashes=False: werkzeug would answer an id like `..%2F`
# (so `/videos/..//panel`) with a 308 to a merged path instead of a plain 404.

PAGE_SIZE = 20
PAGE_SIZES = (10, 20, 50, 100)
ACTIONS = {
    "run": ("run_sync", False),
    "reprocess": ("reprocess", False),
    "force": ("reprocess", True),
}


@bp.app_context_processor
def queue_status() -> dict:
    """Pages warn when the job queue is unreachable (progress and results still work), and
    when no worker serves it while a task is active (ui.no_worker)."""

    def queue_down() -> bool:
        if "queue_down" not in g:
            try:
                ext.redis().ping()
                g.queue_down = False
            except RedisError:
                g.queue_down = True
        return g.queue_down

    return {"queue_down": queue_down, "no_worker": no_worker,
            "queue_unreachable": queue_unreachable}


def worker_count() -> int | None:
    """The workers serving the queue, None when Redis did not answer. Asked once per
    request, and at most every 2 s per process (WorkerCensus)."""
    if "worker_count" not in g:
        g.worker_count = ext.handles().workers.count()
    return g.worker_count


def no_worker() -> bool:
    """True when Redis answers and no worker serves the queue: active tasks would wait
    forever."""
    return worker_count() == 0


def queue_unreachable() -> bool:
    """True when Redis did not answer the census: the polled panel says so, as it goes
    down and when it is back (the page's own banner is as of its loading)."""
    return worker_count() is None


@bp.app_context_processor
def language_helpers() -> dict:
    """The languages the configured model knows (for the forms' menus) and their names."""
    return {"language_choices": lambda: languages.choices(ext.settings()),
            "language_name": languages.name, "text_direction": languages.direction,
            "artifact_language": languages.of_artifact,
            "video_format": video_format,
            "upload_limit": lambda: human_size(ext.settings().max_upload_bytes)}


# The API names steps by their `name` in its sentences too ("not run because extract_audio
# failed"), which matches its `subtasks[].name`; a page says them as its step table does.
STEP_NAME = re.compile(r"\b(" + "|".join(STEPS) + r")\b")


bp.add_app_template_filter(human_size, "filesize")


@bp.app_template_filter("step_label")
def step_label(name: str) -> str:
    """A step as the page names it: "extract audio" for `extract_audio`."""
    return name.replace("_", " ")


@bp.app_template_filter("step_names")
def step_names(sentence: str | None) -> str:
    """A progress sentence of the API with its steps named as the page names them, its
    first letter a capital: "Failed: extract audio; not run: transcribe"."""
    if not sentence:
        return ""
    said = STEP_NAME.sub(lambda m: step_label(m[1]), sentence)
    return said[:1].upper() + said[1:]


@bp.app_template_filter("sentence")
def sentence(said: str) -> str:
    """A message as a sentence on the page: the service's ("the job queue (Redis) is
    unavailable; try again in a moment") begin in lower case and end without a stop."""
    said = said.strip()
    if said and said[-1] not in ".!?…":
        said += "."
    return said[:1].upper() + said[1:]


@bp.app_template_filter("duration")
def duration(seconds: float | None, approximate: bool = False) -> str:
    """Seconds as a person reads them: "8.4 s", "42 s", "3 min 05 s", "1 h 12 min".
    `approximate` (an estimate): whole seconds, whole minutes from 2 minutes on, and
    from an hour on rounded to 5 minutes ("1 h 10 min")."""
    if seconds is None:
        return ""
    seconds = max(0.0, float(seconds))
    if approximate:
        if seconds < 120:
            return f"{round(seconds)} s"
        minutes = round(seconds / 60)
        if minutes < 60:
            return f"{minutes} min"
        minutes = 5 * round(seconds / 300)
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def form_options() -> tuple[str | None, bool | None]:
    """The `language` and `translate` a form gave: (None, None) when it has no options
    fields (a post from elsewhere keeps the video's); an unchecked box sends nothing."""
    if request.form.get("options") != "1":
        return None, None
    return request.form.get("language") or languages.AUTO, "translate" in request.form


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def video_context(video: Video, message: str | None = None, poll: bool = False,
                  state: progress.ProgressView | None = None) -> dict:
    """Everything the video page and its fragments show."""
    if state is None:
        state = progress.video_progress(ext.db(), video, ext.settings().weights)
    artifacts = {a.name: a
                 for a in publications.artifacts(ext.db(), ext.storage(), video.id)}
    tiles, sprite_w, sprite_h = results.storyboard_tiles(artifacts, video.id)
    found = artifacts.get("transcript.json")
    transcript = results.transcript(found, video.id)
    # Whisper's probability is 1 for a language its run was given: not a detection to show.
    made_by = ext.db().get(ProcessingTask, found.task_id) if found and found.task_id else None
    return {
        "video": video,
        "state": state,
        "message": message,
        "poll": poll,
        "artifacts": artifacts,
        "transcript": transcript,
        "lines": transcript.lines if transcript else None,
        "language_chosen": bool(made_by and made_by.language),
        "next_run_note": next_run_note(video, transcript, made_by),
        "tiles": tiles,
        "sprite_size": (sprite_w, sprite_h),
        "ahead": runs_ahead(video.id, state.status),
    }


def next_run_note(video: Video, transcript: results.TranscriptView | None,
                  made_by: ProcessingTask | None) -> str | None:
    """What the transcript shown is in, when the options the run form shows (the video's,
    which a trigger stores, even one cancelled since) are not those that made it: the
    menu said German above an English transcript, as if it were German."""
    if transcript is None or made_by is None or not video.has_audio:
        return None
    other_language = (made_by.language or None) != (video.requested_language or None)
    other_english = bool(made_by.translate) != bool(video.translate)
    if not (other_language or other_english):
        return None
    how = "chosen" if made_by.language else "detected automatically"
    said = f"{languages.name(transcript.language) or 'an unknown language'} ({how})"
    if other_english:
        said += (", with English captions" if transcript.translation
                 else ", without English captions")
    return f"These settings are for the next run: the transcript shown below is in {said}."


def runs_ahead(video_id: str, status: str) -> int:
    """The runs a queued run waits behind (progress.runs_ahead); 0 for any other status.
    Read once per request."""
    if status != "queued":
        return 0
    if "runs_ahead" not in g:
        g.runs_ahead = progress.runs_ahead(ext.db(), video_id)
    return g.runs_ahead


def show_video(video_id: str, message: str | None = None, status: int = 200,
               start_at: str | None = None, notice: bool = False):
    """The video page, or for HTMX the fresh panel plus the action's message (out of band):
    an error, or with `notice` what the action did. `start_at` (the page's `t`) is where its
    player starts, in seconds."""
    video = processing.get_video(ext.db(), video_id)
    context = video_context(video, message)
    if not is_htmx():
        return render_template("videos/show.html", start_at=seconds_into(video, start_at),
                               rendered_at=utcnow(), notice=notice, **context), status
    html = render_template("videos/_panel.html", **context)
    html += render_template("videos/_message.html", message=message, oob=True, notice=notice)
    return html, status


def library_view() -> dict:
    """The library's filter, sort and page from the query string (bad values: defaults)."""
    args = request.args
    status = args.get("status") if args.get("status") in ingest.STATUS_FILTERS else None
    sort = args.get("sort") if args.get("sort") in ingest.SORTS else "newest"
    per_page = args.get("per_page", PAGE_SIZE, type=int) or PAGE_SIZE
    return {"status": status, "sort": sort,
            "per_page": per_page if 1 <= per_page <= 100 else PAGE_SIZE,
            "page": max(1, args.get("page", 1, type=int) or 1)}


def library_page(view: dict | None = None, message: str | None = None) -> str:
    """The library at `view`; a page past the last one (its videos were deleted, e.g. by
    the selection's Delete, which comes back to the page it was on) shows the last page,
    not "No videos yet"."""
    view = view or library_view()
    page, per_page = view["page"], view["per_page"]
    videos, total = ingest.list_videos(ext.db(), page, per_page, status=view["status"],
                                       sort=view["sort"])
    if not videos and total and page > 1:
        page = view["page"] = -(-total // per_page)
        videos, total = ingest.list_videos(ext.db(), page, per_page, status=view["status"],
                                           sort=view["sort"])
    weights = ext.settings().weights
    rows = [(v, progress.video_progress(ext.db(), v, weights)) for v in videos]
    posters = publications.with_step(ext.db(), (v.id for v in videos), "thumbnails")
    return render_template("library/index.html", rows=rows, page=page, total=total,
                           pages=max(1, -(-total // per_page)), posters=posters,
                           message=message, view=view, page_sizes=PAGE_SIZES,
                           rendered_at=utcnow(),
                           library_url=lambda n: library_url(view, n))


def library_url(view: dict, page: int) -> str:
    """The library's URL for another page of the same filter, sort and page size."""
    params = {"status": view["status"],
              "sort": view["sort"] if view["sort"] != "newest" else None,
              "per_page": view["per_page"] if view["per_page"] != PAGE_SIZE else None,
              "page": page if page > 1 else None}
    return url_for("ui.library", **{k: v for k, v in params.items() if v is not None})


@bp.get("/")
def library():
    """The library: upload form and the videos, filtered, sorted and paged."""
    return library_page()


@bp.get("/favicon.ico")
def favicon():
    """Browsers ask for it at the root whatever the page says."""
    return send_from_directory(current_app.static_folder, "favicon.ico",
                               mimetype="image/vnd.microsoft.icon")


# The polled fragments (a row, the progress panel) are conditional, like the JSON progress:
# ETag from the task row alone (progress.progress_tag), `Cache-Control: no-cache` so that
# the browser revalidates its copy with If-None-Match, and a 304 without rendering anything
# while nothing changed. The browser hands its cached copy to HTMX as a 200 (a conditional
# request it made itself is invisible to XHR), so the page looks exactly as before.
FRAGMENT_CACHE_CONTROL = "no-cache, private"


def polled_fragment(tag: str, render: Callable[[], tuple[str, str]]) -> Response:
    """304 when the browser's copy (If-None-Match) has `tag`, else the (html, tag) of
    render(), the tag of what it rendered."""
    if request.if_none_match.contains_weak(tag):
        response = Response(status=304)
    else:
        html, tag = render()
        response = make_response(html)
    response.set_etag(tag)
    response.headers["Cache-Control"] = FRAGMENT_CACHE_CONTROL
    return response


def _csrf_digest() -> str:
    """Which CSRF token the panel's forms carry: part of its tag (another session, another
    copy). Flask-WTF keeps the raw token in the session, made by the first generate_csrf."""
    key = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
    if key not in session:
        generate_csrf()
    return hashlib.sha256(str(session.get(key)).encode()).hexdigest()[:12]


@bp.get("/videos/<video_id>/row", merge_slashes=False)
def library_row(video_id: str):
    """One library row; it keeps polling while its video is being processed."""
    weights = ext.settings().weights
    tag = progress.poll_tag(ext.db(), video_id, weights)  # 404 for an unknown video

    def render() -> tuple[str, str]:
        video = processing.get_video(ext.db(), video_id)
        state, tag = progress.tagged_progress(ext.db(), video.id, weights)
        posters = publications.with_step(ext.db(), [video.id], "thumbnails")
        return render_template("library/_row.html", video=video, state=state,
                               posters=posters), f"row-{tag}"

    return polled_fragment(f"row-{tag}", render)


@bp.errorhandler(NotFound)
def video_gone(exc: NotFound):
    """A video deleted since its page was opened (in another tab, by the library's
    selection, through the API), as HTMX asked for it: its polled row or panel, or a button
    of that panel, is answered in place. The 404 page swapped in there would put a second
    site header inside the page. Without HTMX, the 404 page."""
    if is_htmx():
        if request.endpoint == "ui.library_row":
            return render_template("library/_gone.html"), 404
        if request.endpoint in ("ui.panel", "ui.start", "ui.cancel"):
            return render_template("videos/_gone.html"), 404
        if request.endpoint == "ui.delete":
            flash("That video had already been deleted.", "ok")
            return go_to(url_for("ui.library"))
    return html_error(exc.status, "Not Found", NO_SUCH_VIDEO)


# The API's 404 says "video <uuid> not found": a person followed a link or a bookmark.
NO_SUCH_VIDEO = ("There is no such video: it may have been deleted, or the link that led here "
                 "is incomplete.")


@bp.post("/videos")
def upload():
    """Upload from the form (one file or several), start processing at once; one file goes
    to its video page, several to the library saying what became of each."""
    try:
        files = [f for f in request.files.getlist("file") if f.filename]
        if not files:
            raise InvalidMedia("choose a file to upload first")
        language, translate = form_options()
        requested = languages.parse(ext.settings(), language)
    except RequestEntityTooLarge:
        limit = human_size(ext.settings().max_upload_bytes)
        return upload_failed(f"the file is larger than the limit of {limit}", 413)
    except BadRequest as exc:  # the body was cut short, or is no readable form
        return upload_failed(str(exc.description), 400)
    except ServiceError as exc:
        return upload_failed(exc.message, exc.status)
    if len(files) == 1:
        try:
            video = ingest_one(files[0], requested, bool(translate))
        except ServiceError as exc:
            return upload_failed(exc.message, exc.status)
        return go_to(url_for("ui.video_page", video_id=video.id))
    for file in files:
        try:
            ingest_one(file, requested, bool(translate))
            flash(f"{ingest.clean_filename(file.filename)}: uploaded, processing started", "ok")
        except ServiceError as exc:
            flash(f"{ingest.clean_filename(file.filename)}: {exc.message}", "error")
    return go_to(url_for("ui.library"))


def ingest_one(file, requested_language: str | None, translate: bool) -> Video:
    """Store one uploaded file and start its processing (a queue that is down only delays
    that: the video is kept, and its page says so)."""
    video = ingest.ingest(ext.db(), ext.storage(), file.stream, file.filename,
                          ext.settings().probe_timeout, requested_language=requested_language,
                          translate=translate)
    try:
        processing.trigger(ext.db(), ext.settings(), ext.storage(), ext.redis(),
                           video.id, "run_sync")
    except ServiceError as exc:
        log.warning("video %s uploaded but not started: %s", video.id, exc.message)
    return video


def upload_failed(message: str, status: int):
    """The library page (or just its upload message) explaining why the upload was refused."""
    if is_htmx():
        return render_template("library/_upload_message.html", message=message), status
    return library_page(message=message), status


def go_to(url: str) -> Response:
    """Navigate: HX-Redirect for HTMX, 303 See Other for a plain form."""
    if is_htmx():
        return Response(status=204, headers={"HX-Redirect": url})
    return redirect(url, code=303)


@bp.get("/videos/<video_id>", merge_slashes=False)
def video_page(video_id: str):
    """One video: metadata, actions, live progress and, when done, the results; `?t=12.3`
    plays it from that second (a link from search, or one to share)."""
    return show_video(video_id, start_at=request.args.get("t"))


def seconds_into(video: Video, value: str | None) -> float | None:
    """A `t` parameter as a time in the video, None unless it is a number of seconds from 0
    to the video's length (a link is never an error: a bad `t` is left out)."""
    try:
        seconds = float(value) if value and len(value) <= 32 else None
    except ValueError:
        return None
    end = video.duration if video.duration is not None else math.inf
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= end:
        return None
    return seconds


@bp.get("/videos/<video_id>/panel", merge_slashes=False)
def panel(video_id: str):
    """The progress panel fragment (polled while a task is active)."""
    poll = request.args.get("poll") == "1"
    weights = ext.settings().weights
    tag = progress.poll_tag(ext.db(), video_id, weights)  # 404 for an unknown video
    # The panel says when no worker lives, and how many runs a queued one waits behind:
    # both are part of what it shows, so of its tag.
    ahead = runs_ahead(video_id, "queued") if tag.endswith("-queued") else 0
    workers = {None: "down", 0: "0"}.get(worker_count(), "1")
    session_tag = f"{_csrf_digest()}-{int(poll)}-w{workers}-a{ahead}"

    def render() -> tuple[str, str]:
        video = processing.get_video(ext.db(), video_id)
        state, tag = progress.tagged_progress(ext.db(), video.id, weights)
        html = render_template("videos/_panel.html",
                               **video_context(video, poll=poll, state=state))
        return html, f"panel-{tag}-{session_tag}"

    return polled_fragment(f"panel-{tag}-{session_tag}", render)


def act(video_id: str, action: Callable[[], str | None]):
    """Run a panel action: the updated panel (or page), with the error message if it failed,
    or the note the action returned (the page itself, not a redirect that would lose it)."""
    try:
        note = action()
    except ServiceError as exc:
        return show_video(video_id, exc.message, exc.status)
    if note:
        return show_video(video_id, note, notice=True)
    if is_htmx():
        return show_video(video_id)
    return go_to(url_for("ui.video_page", video_id=video_id))


@bp.post("/videos/<video_id>/<any(run, reprocess, force):action>", merge_slashes=False)
def start(video_id: str, action: str):
    """Run, Reprocess or Force reprocess; answers with the updated panel."""
    mode, force = ACTIONS[action]
    language, translate = form_options()

    def trigger() -> str | None:
        try:
            task = processing.trigger(ext.db(), ext.settings(), ext.storage(), ext.redis(),
                                      video_id, mode, force=force, language=language,
                                      translate=translate)
        except Conflict as exc:
            raise Conflict(busy_message(exc), **exc.extra) from exc
        # A Run with every output there (made with these options) is done at once: without
        # a word, the press seemed to do nothing but blank the steps' times.
        return NOTHING_TO_RUN if task.status == "completed" else None

    return act(video_id, trigger)


# The 409s of a page that was out of date when its button was pressed (the run ended, or
# started from elsewhere, since its last poll), said to a person: no ids, the page's way out.
NOTHING_TO_CANCEL = "There is nothing to cancel: this video's run has already ended."
STILL_RUNNING = ("This video is being processed: cancel its run (or wait for it to end), "
                 "then delete it.")
NOTHING_TO_RUN = ("Nothing to run: every output is already there, made with these settings. "
                  "Reprocess makes them all again.")


def busy_message(exc: Conflict) -> str:
    """The 409 of a trigger said to a person: the service's sentence is the API's (ids, and
    `force=true`); a page offers its Force reprocess button instead."""
    task = ext.db().get(ProcessingTask, exc.extra.get("task_id") or "")
    status = f"a {task.status}" if task is not None and task.status in ("queued", "running") \
        else "an active"
    return (f"This video already has {status} task: wait for it to end, cancel it, "
            "or use Force reprocess to replace it.")


@bp.post("/videos/<video_id>/cancel", merge_slashes=False)
def cancel(video_id: str):
    """Cancel the active task; answers with the updated panel."""
    def stop() -> None:
        try:
            processing.cancel(ext.db(), ext.storage(), ext.redis(), video_id)
        except Conflict as exc:  # the API's sentence names the video by id
            raise Conflict(NOTHING_TO_CANCEL, **exc.extra) from exc

    return act(video_id, stop)


@bp.post("/videos/<video_id>/delete", merge_slashes=False)
def delete(video_id: str):
    """Delete the video and its files, then back to the library, which says so. The page's
    script asks first (hx-confirm); without it, a page asks, as for the selection."""
    if not is_htmx() and request.form.get("confirmed") != "1":
        video = processing.get_video(ext.db(), video_id)
        page = url_for("ui.video_page", video_id=video_id)
        return render_template("library/confirm.html", action="delete",
                               label="Delete", videos=[video], ids=[video_id],
                               back=page, post_to=url_for("ui.delete", video_id=video_id))
    try:
        name = processing.get_video(ext.db(), video_id).original_filename
        ingest.delete_video(ext.db(), ext.storage(), video_id)
    except Conflict as exc:  # the API's sentence names the video and its task by id
        return show_video(video_id, STILL_RUNNING, exc.status)
    except ServiceError as exc:
        return show_video(video_id, exc.message, exc.status)
    flash(f"Deleted {name} and all its files.", "ok")
    return go_to(url_for("ui.library"))


BULK_ACTIONS = {"delete": "Delete", "reprocess": "Reprocess"}


@bp.post("/videos/selected")
def selected():
    """Delete or reprocess the selected videos, once confirmed (a page asks first, or the
    page's script did); then the library reports what became of each one."""
    action = request.form.get("action")
    ids = list(dict.fromkeys(request.form.getlist("ids")))
    back = request.form.get("back") or url_for("ui.library")
    if not back.startswith("/") or back.startswith("//"):
        back = url_for("ui.library")
    if action not in BULK_ACTIONS or not ids:
        flash("Select one or more videos first, then an action.", "error")
        return go_to(back)
    videos = bulk.find(ext.db(), ids)
    if request.form.get("confirmed") != "1":
        return render_template("library/confirm.html", action=action,
                               label=BULK_ACTIONS[action], videos=videos, ids=ids, back=back)
    outcomes = bulk.apply(ext.db(), ext.settings(), ext.storage(), ext.redis(), action, ids)
    report_outcomes(action, outcomes)
    return go_to(back)


# The flashed messages live in the session cookie (about 4 kB in all): a long selection is
# summed up, and only so many refusals are named one by one.
NAMED_REFUSALS = 8


def report_outcomes(action: str, outcomes: list[bulk.Outcome]) -> None:
    """Flash what the action did: a count of the videos it was done to, a sentence for
    each one it was refused for (up to NAMED_REFUSALS, then how many more)."""
    done = [o for o in outcomes if o.ok]
    refused = [o for o in outcomes if not o.ok]
    if len(done) == 1:
        flash(done[0].sentence, "ok")
    elif done:
        verb = "Deleted" if action == "delete" else "Started reprocessing"
        flash(f"{verb} {len(done)} videos.", "ok")
    for outcome in refused[:NAMED_REFUSALS]:
        flash(outcome.sentence, "error")
    if len(refused) > NAMED_REFUSALS:
        flash(f"… and {len(refused) - NAMED_REFUSALS} more not done.", "error")
