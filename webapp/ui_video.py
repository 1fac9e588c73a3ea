"""The video page: metadata, the progress panel (polled) with its actions, the results."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from flask import flash, redirect, render_template, request, url_for
from sqlalchemy import select

from webapp import extensions as ext
from webapp.config import STEPS
from webapp.models import ProcessingTask, Video, utcnow
from webapp.services import (
    ingest,
    languages,
    processing,
    progress,
    publications,
    results,
    search,
    searchterms,
)
from webapp.services.errors import Conflict, ServiceError
from webapp.services.storage import ArtifactFile
from webapp.ui import (
    bp,
    csrf_digest,
    form_options,
    go_to,
    is_htmx,
    polled_fragment,
    worker_count,
)

ACTIONS = {
    "run": ("run_sync", False),
    "reprocess": ("reprocess", False),
    "force": ("reprocess", True),
}


def video_context(video: Video, message: str | None = None, poll: bool = False,
                  state: progress.ProgressView | None = None, query: str | None = None,
                  marked: bool = False) -> dict:
    """Everything the video page and its fragments show. `query`: the page's `q`, which its
    panel carries on (its polls, its buttons) so that the results a run's end brings mark
    its lines too; `marked`: the results are shown, marked for it (ui_video.Matches)."""
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
        "ahead": state.runs_ahead,
        "earlier": earlier_runs(state, artifacts.values()),
        "query": page_query(query),
        "matches": transcript_matches(transcript, query) if marked else None,
    }


def page_query(query: str | None) -> str | None:
    """A page's `q` to carry on, None for nothing to search (or too long to be one)."""
    query = (query or "").strip()
    return query if query and len(query) <= search.MAX_QUERY else None


@dataclass
class Matches:
    """A search's words in a transcript (the page's `q`): each line's pieces, None for a line
    that does not hold them all; the translation's the same way."""

    query: str
    lines: list[list[tuple[str, bool]] | None]
    translation: list[list[tuple[str, bool]] | None]

    @property
    def count(self) -> int:
        return sum(1 for pieces in (*self.lines, *self.translation) if pieces)


def transcript_matches(transcript: results.TranscriptView | None,
                       query: str | None) -> Matches | None:
    """Where "and 7 more matching lines" of a search leads: the lines that hold every word
    searched for, to mark. None without a transcript, or a query of nothing to search."""
    query = (query or "").strip()
    if transcript is None or not query or len(query) > search.MAX_QUERY:
        return None
    if not searchterms.query_units(query):
        return None
    return Matches(
        query,
        [search.marked_if_matching(line.text, query, transcript.language)
         for line in transcript.lines],
        [search.marked_if_matching(line.text, query, "en") for line in transcript.translation])


@dataclass
class EarlierRun:
    """A run whose results a video's page shows though a later run ended without them."""

    steps: list[str]  # in the pipeline's order
    started_at: datetime


def earlier_runs(state: progress.ProgressView,
                 shown: Iterable[ArtifactFile]) -> list[EarlierRun]:
    """The earlier runs that made results the page shows while its latest run failed or was
    cancelled (which left the published ones as they were), by their first step in the
    pipeline's order; none otherwise (a run active replaces them as its steps complete, one
    completed made or kept them)."""
    if state.status not in ("failed", "cancelled"):
        return []
    steps_of: dict[str, set[str]] = {}
    for artifact in shown:
        if artifact.task_id and artifact.task_id != state.task_id:
            steps_of.setdefault(artifact.task_id, set()).add(artifact.step)
    if not steps_of:
        return []
    tasks = ext.db().scalars(select(ProcessingTask).where(ProcessingTask.id.in_(steps_of)))
    runs = [EarlierRun([s for s in STEPS if s in steps_of[task.id]],
                       task.started_at or task.created_at) for task in tasks]
    return sorted(runs, key=lambda run: STEPS.index(run.steps[0]))


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


def show_video(video_id: str, message: str | None = None, status: int = 200,
               start_at: str | None = None, notice: bool = False, query: str | None = None,
               results_too: bool = False):
    """The video page, or for HTMX the fresh panel plus the action's message (out of band):
    an error, or with `notice` what the action did. `start_at` (the page's `t`) is where its
    player starts, in seconds; `query` (its `q`) a search whose lines it marks.
    `results_too`: an HTMX answer whose run is over brings the results too (out of band),
    as the panel's last poll does: a Cancel's panel stops polling, so nothing else would."""
    video = processing.get_video(ext.db(), video_id)
    context = video_context(video, message, query=query,
                            marked=not is_htmx() or results_too)
    if not is_htmx():
        return render_template("videos/show.html", start_at=seconds_into(video, start_at),
                               rendered_at=utcnow(), notice=notice, **context), status
    html = render_template("videos/_panel.html", **context)
    if results_too and not context["state"].active:
        html += render_template("videos/_results.html", oob=True, **context)
    html += render_template("videos/_message.html", message=message, oob=True, notice=notice)
    return html, status


@bp.get("/videos/<video_id>", merge_slashes=False)
def video_page(video_id: str):
    """One video: metadata, actions, live progress and, when done, the results; `?t=12.3`
    plays it from that second (a link from search, or one to share); `?q=words` marks the
    transcript's lines that hold them (a search's "and 7 more matching lines")."""
    return show_video(video_id, start_at=request.args.get("t"), query=request.args.get("q"))


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
    """The progress panel fragment (polled while a task is active); its `q`, the page's,
    marks the lines of the results its last poll brings."""
    poll = request.args.get("poll") == "1"
    query = request.args.get("q")
    weights = ext.settings().weights
    tag = progress.poll_tag(ext.db(), video_id, weights)  # 404 for an unknown video
    # The panel says when no worker lives: part of what it shows, so of its tag (as the
    # runs a queued one waits behind are of the progress tag).
    workers = {None: "down", 0: "0"}.get(worker_count(), "1")
    session_tag = f"{csrf_digest()}-{int(poll)}-w{workers}"

    def render() -> tuple[str, str]:
        video = processing.get_video(ext.db(), video_id)
        state, tag = progress.tagged_progress(ext.db(), video.id, weights)
        html = render_template("videos/_panel.html",
                               **video_context(video, poll=poll, state=state, query=query,
                                               marked=poll and not state.active))
        return html, f"panel-{tag}-{session_tag}"

    return polled_fragment(f"panel-{tag}-{session_tag}", render)


def act(video_id: str, action: Callable[[], str | None], results_too: bool = False):
    """Run a panel action: the updated panel (or page), with the error message if it failed,
    or the note the action returned (the page itself, not a redirect that would lose it);
    `results_too` as for show_video. The form's `q` (the page's) goes on with the panel."""
    query = page_query(request.form.get("q"))
    try:
        note = action()
    except ServiceError as exc:
        return show_video(video_id, exc.message, exc.status, results_too=results_too,
                          query=query)
    if note:
        return show_video(video_id, note, notice=True, results_too=results_too, query=query)
    if is_htmx():
        return show_video(video_id, results_too=results_too, query=query)
    return go_to(url_for("ui.video_page", video_id=video_id, q=query))


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

    # What the ended run left (a first run's audio.wav; which results are an earlier run's)
    # was shown only after a reload: the page showed the results as they were when opened.
    return act(video_id, stop, results_too=True)


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


@bp.get("/videos/<video_id>/<any(run, reprocess, force, cancel, delete):action>",
        merge_slashes=False)
def action_address(video_id: str, action: str):
    """An action's address opened as a page: without JavaScript a refused action's answer
    (a 409's page, the delete's question) is shown at it, and opening it again (Enter in the
    address bar, a bookmark) was "405 Method Not Allowed". The video's page instead."""
    processing.get_video(ext.db(), video_id)  # 404 for an unknown video
    return redirect(url_for("ui.video_page", video_id=video_id), code=303)
