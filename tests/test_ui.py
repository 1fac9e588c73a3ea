"""Web UI pages and HTMX fragments through Flask's test client."""

from __future__ import annotations

from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from tests import mediagen
from tests.conftest import run_worker
from tests.helpers import publish_files, publish_transcript, upload_ok
from tests.test_progress import make_video
from webapp import create_app
from webapp.config import Settings
from webapp.models import ProcessingTask
from webapp.services import progress
from webapp.sizes import human_size

HX = {"HX-Request": "true"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return mediagen.make_video(tmp_path_factory.mktemp("m") / "clip.mp4", duration=2.0)


def soup(resp) -> BeautifulSoup:
    return BeautifulSoup(resp.get_data(as_text=True), "html.parser")


@pytest.fixture
def client(app):
    """Like a browser that opened the library: its requests carry the page's CSRF token in
    X-CSRFToken, as HTMX sends it (CSRF itself is tested in test_security.py)."""
    client = app.test_client()
    token = soup(client.get("/")).select_one('meta[name="csrf-token"]')["content"]
    client.environ_base["HTTP_X_CSRFTOKEN"] = token
    return client


def form_upload(client, path, name=None, headers=None):
    with open(path, "rb") as fh:
        return client.post("/videos", data={"file": (fh, name or path.name)},
                           content_type="multipart/form-data", headers=headers or {})


def uploaded(client, path, name=None) -> str:
    resp = form_upload(client, path, name)
    assert resp.status_code == 303, resp.get_data(as_text=True)[:500]
    return resp.headers["Location"].rsplit("/", 1)[-1]


def buttons(page: BeautifulSoup) -> dict[str, bool]:
    """Which action buttons are enabled."""
    return {b["id"]: not b.has_attr("disabled") for b in page.select(".actions button")}


def test_library_page_has_upload_form_and_navigation(client):
    resp = client.get("/")
    assert resp.status_code == 200
    page = soup(resp)
    assert page.title.string.strip()
    form = page.select_one("form#upload-form")
    assert form["method"] == "post" and form["enctype"] == "multipart/form-data"
    assert page.select_one('#drop-zone input[type=file][name=file][multiple]')
    assert page.select_one('#drop-zone label[for="upload-file"]')
    assert page.select_one("button#upload-submit[type=submit]")
    assert page.select_one('#upload-form select[name=language]')  # the upload's language
    assert page.select_one("ol#upload-list")  # the page's script lists each file there
    assert {a["href"] for a in page.select("nav a")} >= {"/", "/rq/"}
    assert page.select_one('link[rel=icon]')
    assert "No videos yet" in page.get_text()
    assert not page.select("noscript")  # nothing runs: the page is as fresh as it gets
    assert page.select_one('script[src="/static/vendor/htmx/htmx.min.js"]')


def test_form_upload_starts_processing_and_goes_to_the_video(client, clip):
    resp = form_upload(client, clip)
    assert resp.status_code == 303
    vid = resp.headers["Location"].rsplit("/", 1)[-1]
    assert resp.headers["Location"] == f"/videos/{vid}"
    page = soup(client.get(f"/videos/{vid}"))
    assert page.select_one("#progress-panel")["data-status"] == "queued"
    # Without JavaScript the panel is not polled: the page says as of when it is true, and
    # links to itself to see more (no meta refresh: it would reset the form).
    notice = page.select_one("noscript #no-live-progress")
    assert "does not update itself" in notice.get_text() and notice.time["datetime"]
    assert notice.select_one("a")["href"] == f"/videos/{vid}"
    assert notice.select_one("a").get_text() == "Refresh"
    assert not page.select('meta[http-equiv="refresh"]')
    # The library's rows are polled too: the same notice there while one is active.
    notice = soup(client.get("/?sort=name")).select_one("noscript #no-live-progress")
    assert "does not update itself" in notice.get_text()
    assert notice.select_one("a")["href"] == "/?sort=name"
    assert page.h1.get_text() == "clip.mp4"


def test_htmx_upload_redirects_with_a_header(client, clip):
    resp = form_upload(client, clip, headers=HX)
    assert resp.status_code == 204
    assert resp.headers["HX-Redirect"].startswith("/videos/")


@pytest.mark.parametrize("htmx", [False, True])
def test_refused_upload_shows_a_readable_message(client, tmp_path, htmx):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video at all\n" * 20)
    resp = form_upload(client, bad, headers=HX if htmx else None)
    assert resp.status_code == 422
    page = soup(resp)
    assert "not a playable audio or video file" in page.select_one("#upload-message").get_text()
    assert (page.html is None) == htmx  # a fragment for HTMX, the whole page otherwise
    resp = client.post("/videos", data={}, content_type="multipart/form-data")
    assert resp.status_code == 422
    assert "choose a file" in soup(resp).select_one("#upload-message").get_text()


@pytest.mark.parametrize("htmx", [False, True])
def test_upload_cut_short_shows_a_readable_message(client, settings, htmx):
    """The body ends inside the file part: 400, said where the upload's message goes."""
    cut = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
           + b"\0" * 1000)
    resp = client.post("/videos", data=cut, content_type="multipart/form-data; boundary=b",
                       headers=HX if htmx else {})
    assert resp.status_code == 400
    page = soup(resp)
    assert "the upload is incomplete" in page.select_one("#upload-message").get_text()
    assert (page.html is None) == htmx
    assert not [p for p in settings.media_root.rglob("*") if p.is_file()]


def test_library_lists_newest_first_and_polls_only_active_rows(client, clip):
    first = uploaded(client, clip, "first.mp4")
    second = uploaded(client, clip, "second.mp4")
    client.post(f"/videos/{first}/cancel")
    rows = soup(client.get("/")).select(".video-row")
    assert [r["data-video-id"] for r in rows] == [second, first]
    assert rows[0].has_attr("hx-trigger") and rows[0].select_one("progress.overall")
    assert not rows[1].has_attr("hx-trigger") and rows[1]["data-status"] == "cancelled"
    row = client.get(f"/videos/{second}/row", headers=HX)
    assert soup(row).select_one("li.video-row")["data-status"] == "queued"


def test_video_page_vs_htmx_fragment(client, clip):
    vid = uploaded(client, clip)
    full = soup(client.get(f"/videos/{vid}"))
    assert full.html is not None and full.select_one("#metadata")
    fragment = soup(client.get(f"/videos/{vid}", headers=HX))
    assert fragment.html is None
    assert fragment.select_one("section#progress-panel")
    assert not fragment.select_one("#metadata")


def test_buttons_and_polling_follow_the_task_state(client, clip):
    vid = uploaded(client, clip)
    page = soup(client.get(f"/videos/{vid}"))
    panel = page.select_one("#progress-panel")
    assert panel["hx-trigger"] == "every 1s" and panel["hx-swap"] == "outerHTML"
    assert buttons(page) == {"btn-run": False, "btn-reprocess": False, "btn-force": True,
                             "btn-cancel": True, "btn-delete": False}
    resp = client.post(f"/videos/{vid}/cancel", headers=HX)
    assert resp.status_code == 200
    panel_page = soup(resp)
    panel = panel_page.select_one("#progress-panel")
    assert panel["data-status"] == "cancelled" and not panel.has_attr("hx-trigger")
    assert buttons(panel_page) == {"btn-run": True, "btn-reprocess": True, "btn-force": False,
                                   "btn-cancel": False, "btn-delete": True}
    assert panel_page.select_one("#btn-run").get_text() == "Resume"


def test_conflict_is_shown_as_a_message(client, clip):
    vid = uploaded(client, clip)
    resp = client.post(f"/videos/{vid}/reprocess", headers=HX)
    assert resp.status_code == 409
    message = soup(resp).select_one("#message").get_text()
    assert "already has a queued task" in message
    # Said to a person, with the page's own way out: the button, not the API's force=true
    # (nor the ids, which the page does not show anywhere).
    assert "Force reprocess" in message and "force=true" not in message
    assert vid not in message
    plain = client.post(f"/videos/{vid}/run")
    assert plain.status_code == 409 and soup(plain).html is not None
    # A page out of date when its button is pressed: a sentence for a person, no ids.
    resp = client.post(f"/videos/{vid}/delete", headers=HX)
    assert resp.status_code == 409
    assert soup(resp).select_one("#message").get_text() == (
        "This video is being processed: cancel its run (or wait for it to end), then delete it.")
    assert client.post(f"/videos/{vid}/cancel", headers=HX).status_code == 200
    resp = client.post(f"/videos/{vid}/cancel", headers=HX)
    assert resp.status_code == 409
    assert soup(resp).select_one("#message").get_text() == (
        "There is nothing to cancel: this video's run has already ended.")


def test_a_server_error_to_htmx_is_a_message_or_nothing_not_the_error_page(client, clip,
                                                                            monkeypatch):
    """HTMX swaps 5xx answers in: the error page would land inside the panel (a second site
    header) and end its polling. An action's 500 is a message; a poll's changes nothing."""
    from webapp.services import processing

    vid = uploaded(client, clip)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(processing, "trigger", broken)
    monkeypatch.setattr(progress, "poll_tag", broken)
    resp = client.post(f"/videos/{vid}/force", headers=HX)
    assert resp.status_code == 500
    assert resp.headers["HX-Retarget"] == "#message" and resp.headers["HX-Reswap"] == "outerHTML"
    answer = soup(resp)
    assert "internal error (reference" in answer.select_one("p#message.error").get_text()
    assert not answer.select_one("header")
    resp = client.get(f"/videos/{vid}/panel?poll=1", headers=HX)
    assert resp.status_code == 500 and resp.headers["HX-Reswap"] == "none"
    assert not resp.get_data()
    resp = client.get(f"/videos/{vid}/row", headers=HX)
    assert resp.status_code == 500 and resp.headers["HX-Reswap"] == "none"
    # Without HTMX (a page, a plain form): the readable error page, as before.
    resp = client.get(f"/videos/{vid}/panel")
    assert resp.status_code == 500 and soup(resp).select_one("header.site")


def test_an_http_error_of_5xx_to_an_htmx_poll_changes_nothing_either(client, clip, monkeypatch):
    """The same for werkzeug's HTTP exceptions (a 503), which keep the headers HTTP gives
    them; the error page without HTMX keeps them too (a 405's Allow)."""
    from werkzeug.exceptions import ServiceUnavailable

    vid = uploaded(client, clip)

    def unavailable(*args, **kwargs):
        raise ServiceUnavailable("try again in a moment", retry_after=5)

    monkeypatch.setattr(progress, "poll_tag", unavailable)
    resp = client.get(f"/videos/{vid}/panel?poll=1", headers=HX)
    assert resp.status_code == 503 and resp.headers["HX-Reswap"] == "none"
    assert resp.headers["Retry-After"] == "5" and not resp.get_data()
    resp = client.get(f"/videos/{vid}/panel?poll=1")
    assert resp.status_code == 503 and soup(resp).select_one("header.site")
    assert resp.headers["Retry-After"] == "5"
    resp = client.put(f"/videos/{vid}/panel")
    assert resp.status_code == 405 and "GET" in resp.headers["Allow"]
    assert soup(resp).select_one("header.site")


def test_force_and_run_answer_with_a_fresh_panel(client, clip):
    vid = uploaded(client, clip)
    # The upload queued a run: cancelled, so that a panel from before the press differs.
    assert client.post(f"/videos/{vid}/cancel", headers=HX).status_code == 200
    before = soup(client.get(f"/videos/{vid}")).select_one("#progress-panel")
    assert before["data-status"] == "cancelled"
    resp = client.post(f"/videos/{vid}/force", headers=HX)
    assert resp.status_code == 200
    assert soup(resp).select_one("#progress-panel")["data-status"] == "queued"
    plain = client.post(f"/videos/{vid}/cancel")
    assert plain.status_code == 303 and plain.headers["Location"] == f"/videos/{vid}"


def test_delete_goes_back_to_the_library(client, clip):
    vid = uploaded(client, clip)
    client.post(f"/videos/{vid}/cancel")
    resp = client.post(f"/videos/{vid}/delete", headers=HX)
    assert resp.status_code == 204 and resp.headers["HX-Redirect"] == "/"
    assert client.get(f"/videos/{vid}").status_code == 404


def test_unknown_video_page_is_an_html_404(client, clip):
    resp = client.get("/videos/not-a-video")
    assert resp.status_code == 404 and resp.mimetype == "text/html"
    assert "Back to the library" in resp.get_data(as_text=True)
    # A bookmark to a video deleted since: said to a person, not as "video <uuid> not found".
    vid = upload_ok(client, clip)["id"]  # through the API: no run to wait for
    assert client.delete(f"/api/v1/videos/{vid}").status_code == 204
    said = soup(client.get(f"/videos/{vid}")).select_one("main").get_text(" ", strip=True)
    assert "There is no such video: it may have been deleted" in said and vid not in said


def test_original_filename_is_escaped(client, clip):
    vid = uploaded(client, clip, "<img src=x onerror=alert(1)>.mp4")
    for url in (f"/videos/{vid}", "/"):
        html = client.get(url).get_data(as_text=True)
        assert "<img src=x" not in html
        assert "&lt;img src=x onerror=alert(1)&gt;.mp4" in html


def test_finished_video_shows_player_storyboard_transcript_and_downloads(client, tmp_path):
    talk = mediagen.make_speech_video(tmp_path / "talk.mp4",
                                      "Hello and welcome. Please call me tomorrow morning.")
    vid = uploaded(client, talk)
    page = soup(client.get(f"/videos/{vid}"))
    assert not page.select_one("#results video")
    run_worker()
    page = soup(client.get(f"/videos/{vid}"))
    assert page.select_one("#progress-panel")["data-status"] == "completed"
    assert not page.select_one("#progress-panel").has_attr("hx-trigger")
    # Run stays enabled: with other language options it redoes the transcription.
    assert buttons(page) == {"btn-run": True, "btn-reprocess": True, "btn-force": False,
                             "btn-cancel": False, "btn-delete": True}
    player = page.select_one("video#player")
    assert player["poster"].endswith("/artifacts/poster.jpg")
    assert player.select_one('source[type="video/mp4"]')["src"].endswith("/artifacts/preview.mp4")
    track = player.select_one('track[kind=captions]')
    assert track["src"].endswith("/artifacts/captions.vtt") and track.has_attr("default")
    tiles = page.select("#storyboard button.tile[data-start]")
    assert len(tiles) >= 2 and float(tiles[1]["data-start"]) > 0
    # Each tile is named once by the time it shows: the picture itself is not announced.
    assert tiles[1]["aria-label"] == f"Frame at {tiles[1].span.get_text()}"
    assert tiles[1].svg["aria-hidden"] == "true" and not tiles[1].svg.has_attr("aria-label")
    lines = page.select("#transcript button.line")
    assert lines and "tomorrow" in " ".join(li.get_text() for li in lines).lower()
    assert all(float(li["data-end"]) > float(li["data-start"]) for li in lines)
    links = [a["href"] for a in page.select("#downloads a")]
    assert len(links) == 8
    assert all(client.get(href).status_code == 200 for href in links)
    # The poll that sees the end also brings the results in, out of band.
    last_poll = soup(client.get(f"/videos/{vid}/panel?poll=1", headers=HX))
    assert last_poll.select_one('#results[hx-swap-oob="true"] video#player')
    assert not soup(client.get(f"/videos/{vid}/panel", headers=HX)).select_one("#results")


def test_a_language_asked_for_is_not_shown_as_detected(client, tmp_path):
    """Whisper's language probability is 1 when the language was given, not detected: the
    page must not present it as a 100 % confident detection (here English speech, German
    asked for), but say that the language was chosen."""
    talk = mediagen.make_audio_only(tmp_path / "voice.m4a", "Please call me tomorrow.")
    with open(talk, "rb") as fh:
        resp = client.post("/videos", data={"file": (fh, "voice.m4a"), "language": "de",
                                            "options": "1"},
                           content_type="multipart/form-data")
    assert resp.status_code == 303
    vid = resp.headers["Location"].rsplit("/", 1)[-1]
    run_worker()
    said = soup(client.get(f"/videos/{vid}")).select_one("#transcript-language").get_text()
    assert said.startswith("German"), said
    assert "probability" not in said and "chosen" in said, said


def test_audio_only_gets_an_audio_player(client, tmp_path):
    audio = mediagen.make_audio_only(tmp_path / "voice.m4a", "Please call me tomorrow.")
    vid = uploaded(client, audio)
    run_worker()
    page = soup(client.get(f"/videos/{vid}"))
    assert page.select_one("audio#player") and not page.select_one("video")
    assert page.select("#transcript button.line")
    # Run with every output there: done at once, and the page says so (not an error), with
    # or without the page's script.
    for headers in (HX, {}):
        resp = client.post(f"/videos/{vid}/run", headers=headers)
        assert resp.status_code == 200
        said = soup(resp).select_one("#message")
        assert said["class"] == ["message", "note"], said
        assert said.get_text().startswith("Nothing to run: every output is already there")


def test_a_video_without_sound_offers_no_language_to_transcribe(client, clip, tmp_path):
    """Nothing can be transcribed without a sound track: its page says so instead of
    offering the spoken language and the English captions, which would change nothing."""
    silent = uploaded(client, mediagen.make_video(tmp_path / "silent.mp4", 1.0, audio=False))
    panel = soup(client.get(f"/videos/{silent}")).select_one("#progress-panel")
    assert not panel.select("select[name=language], input[name=translate], "
                            "input[name=options]")
    assert "no sound track" in panel.select_one("#run-form #no-sound").get_text()
    assert panel.select_one("#btn-reprocess")  # its pictures can still be made again
    talking = soup(client.get(f"/videos/{uploaded(client, clip)}")).select_one("#run-form")
    assert talking.select_one("select[name=language]") and not talking.select_one("#no-sound")


def test_the_english_translation_is_shown_beside_the_transcript(client, app, clip):
    """A run with "English captions too" made a translation that only a <video>'s subtitle
    menu showed: an audio file never, nor the line a search in English found."""
    vid = upload_ok(client, clip, "vortrag.mp4")["id"]  # through the API: no run started
    publish_transcript(app.extensions["vidpipe"].settings, vid,
                       [(0.0, 1.5, "Ein alter Vortrag."), (1.5, 3.0, "Guten Tag.")], "de",
                       translation=[(0.0, 1.5, "An old lecture."), (1.5, 3.0, "Good day.")])
    page = soup(client.get(f"/videos/{vid}"))
    assert page.select_one("#transcript")["lang"] == "de"
    box = page.select_one("details#translation-box[open]")
    assert "English translation" in box.summary.get_text()
    assert box.select_one("ol#translation")["lang"] == "en"
    lines = box.select("#translation button.line")
    assert [" ".join(b.get_text().split()) for b in lines] == [
        "0:00 An old lecture.", "0:01 Good day."]
    assert (lines[1]["data-start"], lines[1]["data-end"]) == ("1.500", "3.000")


AUDIO_FAILED = "The audio could not be extracted: the file is cut short or damaged after 3.3 s."
POSTER_FAILED = "The poster could not be made: the video data is damaged after 1.2 s."
# Raw ffmpeg output, with characters that must come out as text, not markup.
AUDIO_DETAIL = ("[mov,mp4,m4a,3gp,3g2,mj2] stream 1, offset 0x1b775a: partial file\n"
                "[h264] Invalid NAL unit size (3969 > 3943).\n<script>alert(1)</script>")


def fail_steps(db_session, vid: str) -> str:
    """The video's queued task, run by hand through the progress service: extract_audio and
    thumbnails fail, transcribe is not run, transcode completes."""
    task_id = db_session.query(ProcessingTask.id).filter_by(video_id=vid).scalar()
    for step, status, error in [
        ("extract_audio", "failed", AUDIO_FAILED),
        ("transcribe", "cancelled", "not run because extract_audio failed"),
        ("thumbnails", "failed", POSTER_FAILED),
        ("transcode", "completed", None),
    ]:
        if status == "cancelled":  # never started
            progress.finish_subtask(db_session, task_id, step, status, error)
            continue
        attempt = progress.start_subtask(db_session, task_id, step)
        if status == "completed":
            assert progress.complete_subtask(db_session, task_id, step, attempt)
        else:
            detail = AUDIO_DETAIL if step == "extract_audio" else None
            assert progress.finish_subtask(db_session, task_id, step, status, error,
                                           attempt=attempt, detail=detail)
    return task_id


def test_failed_steps_say_each_sentence_once_with_the_raw_output_behind_details(
        client, clip, db_session):
    vid = uploaded(client, clip)
    task_id = fail_steps(db_session, vid)
    panel = soup(client.get(f"/videos/{vid}/panel", headers=HX)).select_one("#progress-panel")
    assert panel["data-status"] == "failed"
    text = panel.get_text()
    # Steps are named as the step table names them, not by the API's `name`.
    for sentence in (AUDIO_FAILED, POSTER_FAILED, "Not run because extract audio failed"):
        assert text.count(sentence) == 1, (sentence, text)
    assert "extract_audio" not in text
    assert AUDIO_FAILED in panel.select_one("#step-extract_audio").get_text()
    assert POSTER_FAILED in panel.select_one("#step-thumbnails").get_text()
    # The raw output: once, behind a closed "details" disclosure of its own step, as text.
    details = panel.select("details")
    assert [d["id"] for d in details] == [f"detail-{task_id}-extract_audio"]
    # "details" on screen; to a screen reader, which step's (several steps may fail).
    assert details[0].summary.get_text() == "details of extract audio"
    assert details[0].summary.span["class"] == ["visually-hidden"]
    assert not details[0].has_attr("open")
    assert details[0].has_attr("hx-preserve")  # an opened one stays open while others poll
    assert details[0].pre.get_text() == AUDIO_DETAIL
    assert not panel.select("script") and text.count("Invalid NAL unit size") == 1
    assert not panel.select_one("#step-transcode small.error")


def test_a_task_error_is_not_repeated_by_its_steps(client, clip, db_session):
    vid = uploaded(client, clip)
    task_id = db_session.query(ProcessingTask.id).filter_by(video_id=vid).scalar()
    assert progress.cancel_task(db_session, task_id, "cancelled by user")
    db_session.commit()
    panel = soup(client.get(f"/videos/{vid}/panel", headers=HX)).select_one("#progress-panel")
    assert panel.select_one("#task-error").get_text() == "Cancelled by user"
    assert panel.get_text().count("ancelled by user") == 1
    # A failed task's error is a summary naming its steps (as the step table does, not as
    # the API's summary "failed: extract_audio, thumbnails; ..."); each step says why, once.
    vid = uploaded(client, clip, "second.mp4")
    fail_steps(db_session, vid)
    panel = soup(client.get(f"/videos/{vid}/panel", headers=HX)).select_one("#progress-panel")
    assert panel.select_one("#task-error").get_text() == (
        "Failed: extract audio, thumbnails; not run: transcribe")
    assert panel.get_text().count(AUDIO_FAILED) == 1


def test_rq_dashboard_is_mounted(client):
    assert client.get("/rq/").status_code == 200
    queues = client.get("/rq/0/data/queues.json")
    assert queues.status_code == 200 and "queues" in queues.get_json()


def test_rq_dashboard_shows_a_job_that_waits_for_another(client, tmp_path, caplog):
    """rq-dashboard 0.9 read a job's dependency ids as RQ 2's bytes: with RQ 3 the page of
    every transcription (it waits for its audio) was a 500 with a traceback in the log."""
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=1.0)
    vid = upload_ok(client, clip)["id"]
    task = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    assert client.get(f"/rq/0/view/job/{task}-transcribe").status_code == 200
    data = client.get(f"/rq/0/data/job/{task}-transcribe.json")
    assert data.status_code == 200, data.get_data(as_text=True)[:300]
    info = data.get_json()
    assert (info["id"], info["status"], info["origin"]) == (
        f"{task}-transcribe", "deferred", client.application.extensions["vidpipe"]
        .settings.queue_name)
    assert (info["depends_on"], info["depends_on_status"]) == (
        [f"{task}-extract_audio"], ["active"])
    audio = client.get(f"/rq/0/data/job/{task}-extract_audio.json").get_json()
    assert audio["status"] == "queued" and "depends_on" not in audio
    assert client.get("/rq/0/data/job/no-such-job.json").status_code == 404
    assert "Traceback" not in caplog.text


def test_rq_dashboard_actions_on_what_is_gone_are_not_errors(client, caplog):
    """"Compact" of an empty queue was a 500 (Redis: "no such key"), and so was "Requeue" of
    a job that expired while its page was open, each with a traceback in the log."""
    queue = client.application.extensions["vidpipe"].settings.queue_name
    same = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    compact = client.post(f"/rq/queue/{queue}/compact", headers=same)
    assert (compact.status_code, compact.get_json()) == (200, {"status": "OK"})
    gone = client.post("/rq/job/no-such-job/requeue", headers=same)
    assert gone.status_code == 404
    assert "no such job in the queue" in gone.get_data(as_text=True)
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


def test_static_assets_and_favicon(client):
    for url in ("/favicon.ico", "/static/favicon.svg", "/static/css/app.css",
                "/static/js/app.js", "/static/vendor/htmx/htmx.min.js"):
        assert client.get(url).status_code == 200, url


# -- the library that feels finished (issue 13) ----------------------------------------------

def names(page: BeautifulSoup) -> list[str]:
    return [a.get_text() for a in page.select("#video-list .video-row .name")]


def test_library_filters_sorts_and_pages(client, clip, tmp_path):
    longer = mediagen.make_video(tmp_path / "longer.mp4", duration=3.0)
    b = uploaded(client, longer, "Bravo.mp4")  # queued: uploads start processing
    a = uploaded(client, clip, "alpha.mp4")
    c = uploaded(client, clip, "charlie.mp4")
    client.post(f"/videos/{a}/cancel")
    client.post(f"/videos/{c}/cancel")
    assert names(soup(client.get("/"))) == ["charlie.mp4", "alpha.mp4", "Bravo.mp4"]
    assert names(soup(client.get("/?sort=oldest"))) == ["Bravo.mp4", "alpha.mp4", "charlie.mp4"]
    assert names(soup(client.get("/?sort=name"))) == ["alpha.mp4", "Bravo.mp4", "charlie.mp4"]
    assert names(soup(client.get("/?sort=duration")))[0] == "Bravo.mp4"
    assert names(soup(client.get("/?status=active"))) == ["Bravo.mp4"]
    assert names(soup(client.get("/?status=cancelled&sort=name"))) == ["alpha.mp4", "charlie.mp4"]
    assert names(soup(client.get("/?status=failed"))) == []
    assert "No video is failed" in soup(client.get("/?status=failed")).get_text()
    # Nonsense falls back to the defaults instead of failing.
    assert names(soup(client.get("/?status=x&sort=y&per_page=-3"))) == names(soup(client.get("/")))
    page = soup(client.get("/?sort=name&per_page=2"))
    assert names(page) == ["alpha.mp4", "Bravo.mp4"]
    nav = page.select_one("nav.pages")
    assert nav.select_one("[aria-current=page]").get_text() == "1"
    assert nav.select_one("a[rel=next]")["href"] == "/?sort=name&per_page=2&page=2"
    assert names(soup(client.get(nav.select_one("a[rel=next]")["href"]))) == ["charlie.mp4"]
    # A size the menu does not offer (a link, an API habit) is shown as the one chosen,
    # not as the menu's first entry: re-sorting the page would otherwise change its size.
    menu = page.select_one("select[name=per_page]")
    assert menu.select_one("option[selected]")["value"] == "2"
    assert [o["value"] for o in menu.select("option")] == ["2", "10", "20", "50", "100"]
    assert b  # (queued)


def test_selection_asks_first_then_reports_each_video(client, clip):
    a = uploaded(client, clip, "alpha.mp4")
    b = uploaded(client, clip, "bravo.mp4")  # stays queued: 409 for delete
    client.post(f"/videos/{a}/cancel")
    form = {"action": "delete", "ids": [a, b, "not-a-video"], "back": "/?sort=name"}
    ask = client.post("/videos/selected", data=form)
    assert ask.status_code == 200  # the confirmation page, nothing done yet
    page = soup(ask)
    assert page.select_one("#confirm-yes").get_text() == "Delete 2 videos"
    assert [li.get_text() for li in page.select("#confirm-list li")] == ["alpha.mp4",
                                                                        "bravo.mp4"]
    assert client.get(f"/videos/{a}").status_code == 200
    done = client.post("/videos/selected", data={**form, "confirmed": "1"})
    assert done.status_code == 303 and done.headers["Location"] == "/?sort=name"
    flashes = soup(client.get("/?sort=name")).select("#flashes .flash")
    texts = [(f["class"][1], f.get_text()) for f in flashes]
    assert texts[0] == ("ok", "alpha.mp4: deleted with all its files")
    # Said to a person: what to do, no HTTP status, no ids.
    assert texts[1] == ("error", "bravo.mp4: not deleted: it is being processed; cancel its "
                                 "run (or wait for it to end), then delete it")
    assert texts[2] == ("error", "not-a-video: not deleted: no such video (deleted meanwhile?)")
    assert client.get(f"/videos/{a}").status_code == 404
    assert client.get(f"/videos/{b}").status_code == 200
    assert not soup(client.get("/")).select("#flashes .flash")  # said once
    # Reprocess: the queued one is refused (409), by name.
    client.post("/videos/selected", data={"action": "reprocess", "ids": [b], "confirmed": "1"})
    assert soup(client.get("/")).select_one("#flashes .flash.error").get_text() == (
        "bravo.mp4: not reprocessed: it is being processed already; wait for it to end, or "
        "cancel it first")
    client.post(f"/videos/{b}/cancel")
    client.post("/videos/selected", data={"action": "reprocess", "ids": [b], "confirmed": "1"})
    assert (soup(client.get("/")).select_one("#flashes .flash.ok").get_text()
            == "bravo.mp4: reprocessing started")
    # Nothing selected: said, nothing done.
    client.post("/videos/selected", data={"action": "delete", "confirmed": "1"})
    assert "Select one or more videos" in soup(client.get("/")).select_one("#flashes").get_text()


def test_delete_is_said_on_the_library(client, clip):
    vid = uploaded(client, clip, "gone.mp4")
    client.post(f"/videos/{vid}/cancel")
    assert client.post(f"/videos/{vid}/delete", data={"confirmed": "1"}).status_code == 303
    flash = soup(client.get("/")).select_one("#flashes .flash.ok")
    assert flash.get_text() == "Deleted gone.mp4 and all its files."


def test_plain_form_uploads_several_files(client, clip, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n" * 20)
    with open(clip, "rb") as one, open(bad, "rb") as two, open(clip, "rb") as three:
        resp = client.post("/videos", data={
            "file": [(one, "one.mp4"), (two, "notes.mp4"), (three, "three.mp4")],
            "options": "1", "language": "de"}, content_type="multipart/form-data")
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    page = soup(client.get("/"))
    said = [(f["class"][1], f.get_text()) for f in page.select("#flashes .flash")]
    assert said[0] == ("ok", "one.mp4: uploaded, processing started")
    assert said[1][0] == "error" and "notes.mp4: not a playable" in said[1][1]
    assert said[2] == ("ok", "three.mp4: uploaded, processing started")
    assert sorted(names(page)) == ["one.mp4", "three.mp4"]
    listed = client.get("/api/v1/videos").get_json()
    assert {v["requested_language"] for v in listed} == {"de"}
    assert {v["processing"]["status"] for v in listed} == {"queued"}


def test_panel_styles_and_results_card(client, clip, db_session):
    vid = uploaded(client, clip)
    page = soup(client.get(f"/videos/{vid}"))
    assert page.select_one("#results").has_attr("hidden")  # no empty card while it runs
    percent = page.select_one("#overall-percent").get_text()
    assert percent == "0.0\u00a0%"  # a no-break space: never "0.0 /%"
    assert page.select_one("#progress-announcer[aria-live=polite]")
    fail_steps(db_session, vid)
    page = soup(client.get(f"/videos/{vid}"))
    assert page.select_one("#results").has_attr("hidden")
    assert not page.select("noscript")  # it ended: nothing more to see by refreshing
    assert "error" in page.select_one("#error-extract_audio")["class"]
    # A step not run because another failed is no error of its own: a note.
    assert page.select_one("#error-transcribe")["class"] == ["note"]
    audio = uploaded(client, mediagen.make_audio_only(Path(clip).parent / "memo.m4a", "hello"))
    page = soup(client.get(f"/videos/{audio}"))
    assert page.select_one("#error-thumbnails")["class"] == ["note"]  # "no video stream"
    assert page.select_one("#error-thumbnails").get_text() == "No video stream"


def test_transcript_as_plain_text(client, tmp_path):
    talk = mediagen.make_speech_video(tmp_path / "talk.mp4", "Please call me tomorrow morning.")
    vid = uploaded(client, talk, "my talk.mp4")
    missing = client.get(f"/api/v1/videos/{vid}/transcript.txt")
    assert missing.status_code == 404 and missing.get_json()["code"] == 404
    run_worker()
    resp = client.get(f"/api/v1/videos/{vid}/transcript.txt")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="my talk.txt"'
    lines = [li.get_text(" ", strip=True).split(" ", 1)[1]
             for li in soup(client.get(f"/videos/{vid}")).select("#transcript .line")]
    assert resp.get_data(as_text=True).splitlines() == lines
    assert "tomorrow" in resp.get_data(as_text=True).lower()
    page = soup(client.get(f"/videos/{vid}"))
    assert page.select_one("#transcript-download")["href"] == (
        f"/api/v1/videos/{vid}/transcript.txt")


@pytest.mark.parametrize(("seconds", "approximate", "shown"), [
    (0.04, False, "0.0 s"), (8.44, False, "8.4 s"), (42.4, False, "42 s"),
    (754.3, False, "12 min 34 s"), (3725, False, "1 h 02 min"),
    (0.7, True, "1 s"), (42.4, True, "42 s"), (119, True, "119 s"), (754.3, True, "13 min"),
    (3540, True, "59 min"), (4210, True, "1 h 10 min"), (7190, True, "2 h"),
])
def test_durations_read_as_a_person_says_them(seconds, approximate, shown):
    from webapp.ui import duration

    assert duration(seconds, approximate) == shown


def test_the_panel_says_times_in_minutes_and_finishing_rather_than_0_s(client, clip,
                                                                       db_session):
    """A 10-minute estimate reads "about 10 min left", not "about 600 s left"; a step that
    took 754 s reads 12 min 34 s; an estimate that reached 0 while whisper still writes its
    last words reads "finishing", not "about 0 s left"; a queued task's estimate is said to
    be of the work alone (the wait for a free worker is not in it)."""
    from datetime import timedelta

    from webapp.models import SubTask, utcnow

    vid = uploaded(client, clip)
    task = db_session.query(ProcessingTask).filter_by(video_id=vid).one()
    now = utcnow()
    subs = {s.name: s for s in db_session.query(SubTask).filter_by(task_id=task.id)}
    # Queued, with a history of what each step costs here: the work, not the wait.
    for sub in subs.values():
        sub.expected_seconds = 45.0
    task.updated_at = now
    db_session.commit()
    page = soup(client.get(f"/videos/{vid}/panel", headers=HX))
    assert page.select_one("#eta").get_text() == "about 3 min of work once a worker takes it"
    for name in ("extract_audio", "thumbnails"):
        subs[name].status, subs[name].progress = "completed", 100.0
        subs[name].started_at, subs[name].finished_at = now - timedelta(seconds=800), now
    subs["extract_audio"].finished_at = now - timedelta(seconds=46)  # 754 s alone
    for name in ("transcode", "transcribe"):
        subs[name].status, subs[name].started_at = "running", now - timedelta(seconds=600)
        subs[name].first_progress_at, subs[name].first_progress = subs[name].started_at, 1.0
        subs[name].expected_seconds = None
    subs["transcode"].progress, subs["transcribe"].progress = 21.0, 99.9
    task.status, task.updated_at = "running", now
    db_session.commit()
    page = soup(client.get(f"/videos/{vid}/panel", headers=HX))
    eta_text = page.select_one("#eta").get_text()
    assert eta_text.startswith("about ") and eta_text.endswith(" min left"), eta_text
    assert 5 <= int(eta_text.split()[1]) <= 40, eta_text  # ~20 % of the preview in 300 s alone
    cells = {row["id"]: row.select("td")[-1].get_text() for row in page.select("tr[id]")}
    assert cells["step-extract_audio"] == "12 min 34 s", cells
    # The preview is done; whisper says 99.9 % and keeps writing: nothing measurable left.
    subs["transcode"].status, subs["transcode"].progress = "completed", 100.0
    subs["transcode"].finished_at = now
    db_session.commit()
    page = soup(client.get(f"/videos/{vid}/panel", headers=HX))
    assert page.select_one("#eta").get_text() == "finishing"


def test_a_queued_run_says_how_many_runs_it_waits_behind(client, clip):
    """Uploads queue in order: the third waits behind the first two, and says so; when one
    ahead of it ends, its polled panel changes (not a 304 of the old count)."""
    first, second, third = (uploaded(client, clip, f"{n}.mp4") for n in ("a", "b", "c"))

    def eta(vid, etag=None):
        resp = client.get(f"/videos/{vid}/panel?poll=1",
                          headers={**HX, **({"If-None-Match": etag} if etag else {})})
        text = soup(resp).select_one("#eta").get_text() if resp.status_code == 200 else None
        return resp, text

    resp, text = eta(third)
    assert text.endswith(", behind 2 other runs"), text
    assert text.startswith(("waiting for a worker", "about ")), text
    etag = resp.headers["ETag"]
    assert eta(third, etag)[0].status_code == 304  # nothing changed
    assert "behind" not in eta(first)[1]  # the first waits for a worker only
    assert eta(second)[1].endswith(", behind 1 other run")

    assert client.post(f"/videos/{first}/cancel", headers=HX).status_code == 200
    resp, text = eta(third, etag)
    assert resp.status_code == 200 and text.endswith(", behind 1 other run"), text
    assert client.post(f"/videos/{second}/cancel", headers=HX).status_code == 200
    assert "behind" not in eta(third)[1]
    # The full page says the same as its polled panel.
    page = soup(client.get(f"/videos/{second}"))
    assert page.select_one("#task-status").get_text() == "cancelled"
    assert "behind" not in soup(client.get(f"/videos/{third}")).select_one("#eta").get_text()


def test_a_page_past_the_last_shows_the_last_page(client, clip):
    """The selection's Delete comes back to the page it was on: once that page's videos are
    gone it is past the end, and the library shows its last page, not "No videos yet"."""
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        uploaded(client, clip, name)
    page = soup(client.get("/?sort=name&per_page=2&page=5"))
    assert names(page) == ["c.mp4"]
    nav = page.select_one("nav.pages")
    assert nav.select_one("[aria-current=page]").get_text() == "2"
    assert "Page 2 of 2" in nav.get_text()
    assert nav.select_one("a[rel=prev]")["href"] == "/?sort=name&per_page=2"
    assert "No videos yet" not in page.get_text()


def test_a_video_deleted_meanwhile_is_said_in_place_of_its_row_or_panel(client, clip):
    """Another tab (the API, the library's selection) deleted the video while a page polled
    it or showed its buttons: HTMX gets a fragment saying so where it asked, never the 404
    page with a second site header inside the page."""
    vid = uploaded(client, clip, "gone.mp4")
    client.post(f"/videos/{vid}/cancel")
    assert client.post(f"/videos/{vid}/delete", headers=HX).status_code == 204
    row = client.get(f"/videos/{vid}/row", headers=HX)
    assert row.status_code == 404
    page = soup(row)
    assert not page.select("header.site") and not page.select("[hx-get]")
    assert "has been deleted" in page.select_one("li.video-row.gone").get_text()
    for method, path in [("get", f"/videos/{vid}/panel?poll=1"), ("post", f"/videos/{vid}/run"),
                         ("post", f"/videos/{vid}/force"), ("post", f"/videos/{vid}/cancel")]:
        resp = getattr(client, method)(path, headers=HX)
        assert resp.status_code == 404, path
        page = soup(resp)
        assert not page.select("header.site"), path
        panel = page.select_one("section#progress-panel")
        assert panel["data-status"] == "deleted" and not panel.has_attr("hx-get"), path
        assert not panel.select("button") and panel.select_one("a")["href"] == "/"
        results = page.select_one("#results")  # its player's files are gone too
        assert results.has_attr("hidden") and results["hx-swap-oob"] == "true"
    again = client.post(f"/videos/{vid}/delete", headers=HX)
    assert again.status_code == 204 and again.headers["HX-Redirect"] == "/"
    assert "already been deleted" in soup(client.get("/")).select_one("#flashes").get_text()
    plain = client.get(f"/videos/{vid}/panel")  # without HTMX: the 404 page, as before
    assert plain.status_code == 404 and soup(plain).select("header.site")


def test_the_selection_comes_back_to_the_library_after_a_refused_upload(client, clip, tmp_path):
    """Without JavaScript a refused upload answers with the library at POST /videos: the
    selection's actions (and the confirmation's Cancel) come back to the library's view,
    not to /videos, which is no page (its GET sends to the library)."""
    vid = uploaded(client, clip, "kept.mp4")
    client.post(f"/videos/{vid}/cancel")
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video at all\n" * 20)
    page = soup(form_upload(client, bad))
    back = page.select_one("#bulk-form input[name=back]")["value"]
    assert back == "/"
    ask = soup(client.post("/videos/selected", data={"action": "reprocess", "ids": [vid],
                                                     "back": back}))
    assert ask.select_one("#confirm-no")["href"] == "/"
    done = client.post("/videos/selected", data={"action": "reprocess", "ids": [vid],
                                                 "back": back, "confirmed": "1"})
    assert done.status_code == 303 and client.get(done.headers["Location"]).status_code == 200
    # The library's own view is kept (filter, sort, size, page), as before.
    page = soup(client.get("/?status=active&sort=name&per_page=10"))
    assert (page.select_one("#bulk-form input[name=back]")["value"]
            == "/?status=active&sort=name&per_page=10")


def test_delete_without_javascript_asks_first_on_a_page(client, clip):
    """The video page's Delete asks first through the page's script (hx-confirm); without
    JavaScript the form posts as it is, and a page asks, as for the selection."""
    vid = uploaded(client, clip, "keep me.mp4")
    client.post(f"/videos/{vid}/cancel")
    ask = client.post(f"/videos/{vid}/delete")
    assert ask.status_code == 200
    page = soup(ask)
    assert page.title.get_text().startswith("Delete 1 video?")
    assert page.select_one("#confirm-title").get_text() == "Delete 1 video?"
    assert [li.get_text() for li in page.select("#confirm-list li")] == ["keep me.mp4"]
    assert page.select_one("#confirm-no")["href"] == f"/videos/{vid}"
    form = page.select_one("form.actions")
    assert form["action"] == f"/videos/{vid}/delete"
    assert client.get(f"/videos/{vid}").status_code == 200  # nothing done yet
    fields = {i["name"]: i["value"] for i in form.select("input[type=hidden]")}
    done = client.post(form["action"], data=fields)
    assert done.status_code == 303 and done.headers["Location"] == "/"
    assert client.get(f"/videos/{vid}").status_code == 404
    assert (soup(client.get("/")).select_one("#flashes .flash.ok").get_text()
            == "Deleted keep me.mp4 and all its files.")


@pytest.mark.parametrize(("weights", "shares"), [
    ({}, ["10", "50", "10", "30"]),
    ({"WEIGHT_EXTRACT_AUDIO": "1", "WEIGHT_TRANSCRIBE": "1", "WEIGHT_THUMBNAILS": "1",
      "WEIGHT_TRANSCODE": "3"}, ["17", "17", "17", "50"]),
])
def test_each_step_says_its_share_of_the_total_not_a_weight(settings, clip, monkeypatch,
                                                          weights, shares):
    """"weight 50" meant nothing to a viewer: each step says the share of the overall bar
    it counts for, from the configured weights (the API keeps `weight`)."""
    for key, value in weights.items():
        monkeypatch.setenv(key, value)
    app = create_app(Settings.from_env())
    client = app.test_client()
    vid = upload_ok(client, clip)["id"]
    page = soup(client.get(f"/videos/{vid}"))
    rows = page.select("#progress-panel table.steps tbody th")
    assert [" ".join(r.select_one(".share").get_text().split()) for r in rows] == [
        f"{share} % of the total" for share in shares]
    assert "weight" not in page.select_one("#progress-panel").get_text()
    subtasks = client.get(f"/api/v1/videos/{vid}/reprocess").get_json()["subtasks"]
    assert [s["weight"] for s in subtasks] == [
        float(weights.get(f"WEIGHT_{s['name'].upper()}", s["weight"])) for s in subtasks]


@pytest.mark.parametrize("htmx", [False, True])
def test_the_upload_limit_is_said_in_the_units_of_the_readme(settings, clip, htmx):
    """The limit was said as "262,144 bytes" on the page: the library names it up front
    and a refusal says it, as the README does ("2 GiB"); the API adds the exact bytes."""
    app = create_app(Settings.from_env(max_upload_bytes=256 * 1024))
    client = app.test_client()
    page = soup(client.get("/"))
    assert "up to 256 KiB each" in page.select_one("#drop-zone label").get_text()
    token = page.select_one('meta[name="csrf-token"]')["content"]
    big = clip.parent / "big.mp4"
    big.write_bytes(clip.read_bytes() + b"\0" * 300 * 1024)
    resp = form_upload(client, big, headers={**(HX if htmx else {}), "X-CSRFToken": token})
    assert resp.status_code == 413
    said = soup(resp).select_one("#upload-message").get_text()
    assert "the file is larger than the limit of 256 KiB" in said and "262" not in said, said
    with open(big, "rb") as fh:
        resp = client.post("/api/v1/videos", data={"file": (fh, "big.mp4")},
                           content_type="multipart/form-data")
    assert resp.get_json()["message"] == (
        "the request body is larger than the limit of 256 KiB (262,144 bytes)")


@pytest.mark.parametrize(("size", "said"), [
    (0, "0 bytes"), (1, "1 byte"), (1023, "1,023 bytes"), (1024, "1 KiB"),
    (497_964, "486 KiB"), (1_048_575, "1 MiB"), (1_740_900, "1.7 MiB"),
    (2 * 1024**3, "2 GiB"), (5 * 1024**3 + 1024**3 // 2, "5.5 GiB"),
])
def test_sizes_read_in_binary_units(size, said):
    assert human_size(size) == said


def test_after_a_cancelled_run_in_another_language_the_page_says_which_is_which(
        client, clip, settings):
    """A run asked for German, then cancelled: the menu shows German (the next run's) above
    an English transcript. The page says that the menu is for the next run and what the
    transcript shown is in."""
    vid = upload_ok(client, clip)["id"]
    publish_transcript(settings, vid, [(0.0, 1.0, "Hello there.")], "en")
    assert not soup(client.get(f"/videos/{vid}")).select_one("#next-run-note")
    resp = client.post(f"/videos/{vid}/reprocess", headers=HX,
                       data={"options": "1", "language": "de", "translate": "1"})
    assert resp.status_code == 200
    assert client.post(f"/videos/{vid}/cancel", headers=HX).status_code == 200
    page = soup(client.get(f"/videos/{vid}"))
    assert page.select_one("#run-language option[selected]")["value"] == "de"
    assert page.select_one("#transcript-language").get_text().startswith("English")
    note = page.select_one("#run-form #next-run-note").get_text()
    assert note == ("These settings are for the next run: the transcript shown below is in "
                    "English (detected automatically), without English captions."), note
    # The API is as it was: the video's options are the next run's.
    video = client.get(f"/api/v1/videos/{vid}").get_json()
    assert (video["requested_language"], video["translate"], video["language"]) == (
        "de", True, "en")


def test_an_actions_message_is_a_sentence(client, clip):
    """The service's messages are the API's ("unknown language 'xx' ..."): on the page,
    beside the UI's own sentences, each begins with a capital and ends with a stop."""
    vid = uploaded(client, clip)
    for headers in (HX, {}):
        resp = client.post(f"/videos/{vid}/force", headers=headers,
                           data={"language": "xx", "options": "1"})
        assert resp.status_code == 422
        said = soup(resp).select_one("#message").get_text()
        assert said.startswith("Unknown language 'xx'") and said.endswith("."), said
        assert not said.endswith(".."), said


def test_a_video_never_run_says_how_to_start_it(client, clip):
    """Uploaded while the queue was down (or through the API), a video stays "pending":
    nothing starts it later by itself, and its page said nothing of what to do."""
    vid = upload_ok(client, clip)["id"]
    note = soup(client.get(f"/videos/{vid}")).select_one("#progress-panel #not-run")
    assert note.get_text() == "Not processed yet: Run starts it."
    assert client.post(f"/videos/{vid}/run", headers=HX).status_code == 200
    assert not soup(client.get(f"/videos/{vid}")).select_one("#not-run")


def test_an_actions_address_opened_as_a_page_leads_to_its_page(client, clip):
    """Without JavaScript, a refused action's answer is shown at the address it posted to
    (/videos for an upload, /videos/<id>/cancel, ...): opened again, it was "405 Method
    Not Allowed" (or "no such video" for /videos/selected), a dead end in words no one
    uses. It leads to the page the action belongs to."""
    vid = upload_ok(client, clip)["id"]
    for action in ("run", "reprocess", "force", "cancel", "delete"):
        resp = client.get(f"/videos/{vid}/{action}")
        assert (resp.status_code, resp.headers.get("Location")) == (303, f"/videos/{vid}")
    for address in ("/videos", "/videos/selected"):
        resp = client.get(address)
        assert (resp.status_code, resp.headers.get("Location")) == (303, "/"), address
    assert client.get("/videos/not-a-video/cancel").status_code == 404
    assert client.get(f"/api/v1/videos/{vid}").get_json()["processing"]["status"] == "pending"


def test_a_cancelled_or_failed_run_says_the_earlier_results_are_kept(client, clip, settings):
    """A run cancelled (or failed) after a completed one leaves that one's results published,
    and the video's page shows them: its library row said "cancelled" alone, as if there
    were nothing to see. It says the results from an earlier run are kept; a video whose
    only run was cancelled, with nothing to show, does not."""
    vid = uploaded(client, clip, "done.mp4")
    never = uploaded(client, clip, "never.mp4")
    client.post(f"/videos/{never}/cancel")
    run_worker()

    def row(video_id: str):
        on_page = soup(client.get("/")).select_one(f'.video-row[data-video-id="{video_id}"]')
        alone = soup(client.get(f"/videos/{video_id}/row", headers=HX)).select_one(".video-row")
        assert str(on_page) == str(alone)
        kept = on_page.select_one(".state .kept")
        why = on_page.select_one(".state .why")
        whys.append(why.get_text() if why else None)
        return on_page["data-status"], kept.get_text() if kept else None

    whys: list[str | None] = []  # why each row's run ended, as the row says it

    assert row(vid) == ("completed", None)
    assert row(never) == ("cancelled", None)
    assert earlier_note(client, vid) is None  # its own results
    completed_run = client.get(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    assert client.post(f"/videos/{vid}/reprocess", headers=HX).status_code == 200
    assert client.post(f"/videos/{vid}/cancel", headers=HX).status_code == 200
    assert row(vid) == ("cancelled", "results kept from an earlier run")
    assert soup(client.get(f"/videos/{vid}")).select_one("#results #player")
    first = started(settings, completed_run)
    assert earlier_note(client, vid) == (
        f"The latest run was cancelled: these results are from an earlier run, started {first}.")
    # A run that fails keeps them too: its source spoilt, the transcode cannot read it.
    source = next((settings.media_root / "videos" / vid).glob("source*"), None)
    assert source, sorted(p.name for p in (settings.media_root / "videos" / vid).iterdir())
    source.write_bytes(b"not a video any more\n" * 100)
    assert client.post(f"/videos/{vid}/reprocess", headers=HX).status_code == 200
    run_worker()
    assert row(vid) == ("failed", "results kept from an earlier run")
    assert earlier_note(client, vid) == (
        f"The latest run failed: these results are from an earlier run, started {first}.")
    # Each ended row says why, as the video page does: a failed row said "failed" alone.
    assert whys == [None, "cancelled by request", "cancelled by request",
                    "failed: extract_audio, thumbnails, transcode; not run: transcribe"]


def started(settings, task_id: str) -> str:
    """When a run started, as the video page says it."""
    from webapp.db import session_factory

    with session_factory(settings.database_url)() as session:
        task = session.get(ProcessingTask, task_id)
        return (task.started_at or task.created_at).strftime("%Y-%m-%d %H:%M:%S UTC")


def earlier_note(client, video_id: str) -> str | None:
    """The video page's note on results from earlier runs (the same in the panel's last
    poll, which brings the results in when a run ends), None without one."""
    page = soup(client.get(f"/videos/{video_id}"))
    note = page.select_one("#results #earlier-results")
    polled = soup(client.get(f"/videos/{video_id}/panel?poll=1", headers=HX))
    assert str(polled.select_one("#results #earlier-results")) == str(note)
    return " ".join(note.get_text().split()) if note else None


def test_a_run_ended_early_says_which_results_are_its_own_and_which_runs_made_the_others(
        client, clip, settings):
    """A run cancelled or failed after some of its steps completed: the page showed its
    results and an earlier run's together, without a word of which were which (the library
    says only "results kept from an earlier run"). A note names the steps kept from each
    earlier run, with when it started, and the downloads say which files are not the
    latest run's."""
    vid = upload_ok(client, clip)["id"]
    thumbs = publish_files(settings, vid, "thumbnails", {
        "poster.jpg": b"jpeg", "storyboard.jpg": b"jpeg", "storyboard.vtt": b"WEBVTT\n\n"})
    words = publish_transcript(settings, vid, [(0.0, 1.0, "Hello there.")])
    assert client.post(f"/videos/{vid}/run", headers=HX).status_code == 200  # no worker
    latest = client.get(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    publish_files(settings, vid, "transcode", {"preview.mp4": b"mp4"}, task_id=latest)
    assert client.post(f"/videos/{vid}/cancel", headers=HX).status_code == 200
    assert earlier_note(client, vid) == (
        "The latest run was cancelled: only some of these results are its own. From earlier "
        f"runs: transcribe (started {started(settings, words)}); thumbnails (started "
        f"{started(settings, thumbs)}).")
    downloads = {li.select_one("a").get_text(): li.select_one("small").get_text()
                 for li in soup(client.get(f"/videos/{vid}")).select("#downloads li")}
    earlier = {name for name, said in downloads.items() if "from an earlier run" in said}
    assert earlier == {"transcript.json", "captions.vtt", "captions.srt", "poster.jpg",
                       "storyboard.jpg", "storyboard.vtt"}, downloads
    assert "preview.mp4" in downloads


def test_a_portrait_videos_resolution_is_named_by_its_short_side(client, db_session):
    """A phone's 360x640 portrait video was "640p" in the library, beside "360p" for the
    same pixels held sideways (and "1920p" for a 1080x1920 one): the "p" names the short
    side, as players and video sites name it."""
    for name, width, height in (("wide.mp4", 640, 360), ("tall.mp4", 360, 640),
                                ("phone.mp4", 1080, 1920)):
        make_video(db_session, original_filename=name, width=width, height=height)
    page = soup(client.get("/?sort=name"))
    facts = {row.select_one("a.name").get_text(): " ".join(row.select_one(".facts").text.split())
             for row in page.select("#video-list .video-row")}
    assert " · 1080p · " in facts["phone.mp4"], facts
    assert " · 360p · " in facts["tall.mp4"] and " · 360p · " in facts["wide.mp4"], facts
