"""The library: the upload form, the videos (filtered, sorted, paged, polled rows) and the
selection's actions."""

from __future__ import annotations

import logging

from flask import flash, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from webapp import extensions as ext
from webapp.models import Video, utcnow
from webapp.services import bulk, ingest, languages, processing, progress, publications
from webapp.services.errors import InvalidMedia, ServiceError
from webapp.sizes import human_size
from webapp.ui import bp, form_options, go_to, is_htmx, polled_fragment

log = logging.getLogger(__name__)
PAGE_SIZE = 20
PAGE_SIZES = (10, 20, 50, 100)


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
                           kept=earlier_results_kept(rows),
                           message=message, view=view,
                           page_sizes=sorted({*PAGE_SIZES, per_page}),
                           rendered_at=utcnow(),
                           library_url=lambda n: library_url(view, n))


def library_url(view: dict, page: int) -> str:
    """The library's URL for another page of the same filter, sort and page size."""
    params = {"status": view["status"],
              "sort": view["sort"] if view["sort"] != "newest" else None,
              "per_page": view["per_page"] if view["per_page"] != PAGE_SIZE else None,
              "page": page if page > 1 else None}
    return url_for("ui.library", **{k: v for k, v in params.items() if v is not None})


def earlier_results_kept(rows: list[tuple[Video, progress.ProgressView]]) -> set[str]:
    """The videos whose latest run was cancelled or failed while a whole set of results is
    published (an earlier run's, which such a run leaves as it was): their page shows them,
    so their row says so beside "cancelled" or "failed"."""
    ended = [(video, state) for video, state in rows if state.status in ("cancelled", "failed")]
    published = publications.published_steps(ext.db(), (video.id for video, _ in ended))
    kept = set()
    for video, state in ended:
        steps = {sub.name for sub in state.subtasks if sub.status != "skipped"}
        if steps and steps <= published[video.id]:
            kept.add(video.id)
    return kept


@bp.get("/")
def library():
    """The library: upload form and the videos, filtered, sorted and paged."""
    return library_page()


@bp.get("/videos/<video_id>/row", merge_slashes=False)
def library_row(video_id: str):
    """One library row; it keeps polling while its video is being processed."""
    weights = ext.settings().weights
    tag = progress.poll_tag(ext.db(), video_id, weights)  # 404 for an unknown video

    def render() -> tuple[str, str]:
        video = processing.get_video(ext.db(), video_id)
        state, tag = progress.tagged_progress(ext.db(), video.id, weights)
        posters = publications.with_step(ext.db(), [video.id], "thumbnails")
        kept = earlier_results_kept([(video, state)])
        return render_template("library/_row.html", video=video, state=state,
                               posters=posters, kept=kept), f"row-{tag}"

    return polled_fragment(f"row-{tag}", render)


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


@bp.get("/videos")
@bp.get("/videos/selected")
def library_address():
    """The upload's and the selection's addresses opened as pages: without JavaScript a
    refused upload (the library, saying why) or the selection's question is shown at them,
    and opening one again was "405 Method Not Allowed" or "no such video". The library."""
    return redirect(url_for("ui.library"), code=303)
