"""The UI's blueprint and what its pages share: template helpers and filters, the queue's
state, HTMX's page-or-fragment answers. The pages: ui_library, ui_video, ui_search (each
adds its routes to `bp` when imported); they call the same services as the JSON API."""

from __future__ import annotations

import hashlib
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
    render_template_string,
    request,
    send_from_directory,
    session,
    url_for,
)
from flask_wtf.csrf import generate_csrf
from redis.exceptions import RedisError

from webapp import extensions as ext
from webapp.api import html_error
from webapp.config import STEPS
from webapp.services import languages
from webapp.services.errors import NotFound
from webapp.services.mediainput import video_format
from webapp.sizes import human_size

bp = Blueprint("ui", __name__)
# Routes taking an id have merge_slashes=False: werkzeug would answer an id like `..%2F`
# (so `/videos/..//panel`) with a 308 to a merged path instead of a plain 404.

@bp.after_request
def pages_are_not_stored(response: Response) -> Response:
    """A page shows a video's state as it was when it was made: kept by the browser, Back or
    Forward showed that copy ("Not processed yet" beside a run started since, a panel that
    did not poll). `no-store` has the browser ask again; the polled fragments have their own
    validators (polled_fragment), the favicon is a file."""
    if response.mimetype == "text/html" and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_context_processor
def queue_status() -> dict:
    """Pages warn when the job queue is unreachable (progress and results still work), and
    when no worker serves it while a task is active (ui.no_worker)."""
    return {"queue_down": queue_down, "no_worker": no_worker,
            "queue_unreachable": queue_unreachable}


def queue_down() -> bool:
    """True when Redis does not answer a ping (asked once per request)."""
    if "queue_down" not in g:
        try:
            ext.redis().ping()
            g.queue_down = False
        except RedisError:
            g.queue_down = True
    return g.queue_down


@bp.get("/queue-banner")
def queue_banner():
    """Whether the queue answers, asked by every page (templates/_macros.html, queue_status)
    every 10 s, every 5 s while it does not: 204 while it is as the page shows it (`shown`:
    1 the banner, 0 nothing), so that nothing is rendered or swapped; else what the page is
    to show now. From the census: however many pages ask, at most one Redis round trip
    every 2 s per web process."""
    down = queue_unreachable()
    if request.args.get("shown") == str(int(down)):
        return Response(status=204)
    return render_template_string(
        '{% from "_macros.html" import queue_watch %}{{ queue_watch(down, watch=true) }}',
        down=down)


@bp.get("/worker-banner")
def worker_banner():
    """Whether a worker serves the queue, asked by the library while it has active rows
    (templates/_macros.html, worker_status) every 10 s, every 5 s while it says none does:
    204 while it is as the page shows it (`shown`: 1 the banner, 0 nothing), else what the
    page is to show now. From the census, as queue_banner; a Redis that does not answer is
    the queue banner's to say, not this one's."""
    shown = no_worker()
    if request.args.get("shown") == str(int(shown)):
        return Response(status=204)
    return render_template_string(
        '{% from "_macros.html" import worker_watch %}{{ worker_watch(shown) }}',
        shown=shown)


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


def csrf_digest() -> str:
    """Which CSRF token the panel's forms carry: part of its tag (another session, another
    copy). Flask-WTF keeps the raw token in the session, made by the first generate_csrf."""
    key = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
    if key not in session:
        generate_csrf()
    return hashlib.sha256(str(session.get(key)).encode()).hexdigest()[:12]


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


def go_to(url: str) -> Response:
    """Navigate: HX-Redirect for HTMX, 303 See Other for a plain form."""
    if is_htmx():
        return Response(status=204, headers={"HX-Redirect": url})
    return redirect(url, code=303)
