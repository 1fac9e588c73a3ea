"""The web UI in a real browser (Debian's Chromium via Playwright), against a live server and a
real RQ worker: upload, live progress, player/transcript/storyboard, cancel, conflicts.

Runs once, on SQLite: the UI does not depend on the database backend.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

from tests import browser, mediagen
from tests.browser import (
    LOCAL_HOST,
    api_progress,
    api_trigger,
    api_upload,
    button_states,
    enabled,
    panel_state,
    player_state,
    requests_so_far,
    sample_panel,
    screenshot_dir,
    step_states,
    wait_until,
)
from tests.helpers import always
from webapp.config import STEPS
from webapp.services.storage import ARTIFACT_NAMES
from webapp.ui_video import STILL_RUNNING

# The harness's fixtures, used by name below.
chromium, browser_log, live_server, page = (
    browser.chromium, browser.browser_log, browser.live_server, browser.page)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

# About 30 s of speech: with one worker the whole run takes several seconds, long enough to
# watch the bar move (the panel polls once a second) and to cancel a running task.
LONG_TEXT = (
    "Hello and welcome to the video pipeline. Today we talk about the weather in the "
    "mountains. It will rain in the morning and the sun comes out in the afternoon. Please "
    "call me tomorrow morning about the report. The meeting starts at nine and ends before "
    "lunch. Bring your notes and a cup of coffee. The train leaves at six in the evening. "
    "Thank you for watching and goodbye."
)
SHORT_TEXT = ("Hello and welcome. Please call me tomorrow morning about the weather report. "
              "The meeting starts at nine. Thank you and goodbye.")
VIDEO_URL = re.compile(r"/videos/([0-9a-f-]{36})$")
SEEK_TOLERANCE = 0.5
# A short video's whole run (four steps, Whisper among them) took 41 s of one worker here
# with the machine loaded as CI's is (load 10 on 2 cores): waits for a run to end allow
# 180 s, as test_search_browser.py does, not 60.
RUN_TIMEOUT = 180


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("browser-media")
    return {
        "long": mediagen.make_speech_video(root / "long-talk.mp4", LONG_TEXT, size="960x540"),
        "short": mediagen.make_speech_video(root / "short-talk.mp4", SHORT_TEXT,
                                            size="640x360"),
        "audio": mediagen.make_audio_only(root / "voice-memo.m4a", SHORT_TEXT),
    }


# -- helpers -------------------------------------------------------------------------------

def check_page_frame(page: Page) -> None:
    """What every page has: a title, a favicon, a nav to the library and to rq-dashboard."""
    assert page.title().strip(), f"{page.url}: empty <title>"
    assert page.locator("link[rel~='icon']").count() >= 1, f"{page.url}: no favicon link"
    hrefs = page.locator("nav a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    paths = {urlsplit(h).path for h in hrefs}
    assert "/" in paths, f"{page.url}: nav has no link to / ({hrefs})"
    assert paths & {"/rq", "/rq/"}, f"{page.url}: nav has no link to /rq ({hrefs})"


def upload_with_form(page: Page, path: Path) -> str:
    """Choose the file, press the button, land on the new video's page; returns its id."""
    page.goto("/")
    page.set_input_files("#upload-file", str(path))
    page.click("#upload-submit")
    page.wait_for_url(VIDEO_URL, timeout=30_000)
    return VIDEO_URL.search(page.url).group(1)


def wait_api_status(page: Page, vid: str, status: str, timeout: float = 120) -> dict:
    def check():
        state = api_progress(page, vid)
        return state if state["status"] == status else None
    return wait_until(check, timeout=timeout, interval=0.2,
                      what=f"video {vid} reaching {status}")


def panel(page: Page):
    return page.locator("#progress-panel")


def show_results(page: Page, timeout: float = 10_000) -> None:
    """The results appear by themselves once the task has completed (the panel's last poll
    brings them, out of band), their captions showing; fail with what the page shows if not.
    """
    try:
        expect(page.locator("#results #player")).to_be_attached(timeout=timeout)
    except AssertionError as exc:
        results = page.evaluate("() => document.querySelector('#results')?.outerHTML ?? null")
        raise AssertionError(
            f"{page.url}: no results {timeout / 1000:.0f} s after completion, without a "
            f"reload; panel {panel_state(page)}; #results {str(results)[:600]!r}") from exc
    if page.locator("#player track").count():
        expect_captions_showing(page)


def captions_mode(page: Page) -> str | None:
    """The mode of the player's first text track (None without one)."""
    return page.evaluate("() => document.querySelector('#player')?.textTracks[0]?.mode ?? null")


def expect_captions_showing(page: Page, timeout: float = 5) -> None:
    """The default captions track shows by itself: the browser's automatic text track
    selection turns a <track default> on once the player has its metadata."""
    try:
        wait_until(lambda: captions_mode(page) == "showing", timeout=timeout)
    except AssertionError:
        raise AssertionError(f"the default captions track is {captions_mode(page)!r}, not "
                             f"'showing', {timeout} s after the results appeared") from None


def pause(page: Page) -> None:
    page.evaluate("() => document.querySelector('#player').pause()")


def play_muted(page: Page) -> None:
    page.evaluate("""async () => {
        const p = document.querySelector('#player');
        p.muted = true;
        await p.play();
    }""")


def expect_seek_to(page: Page, start: float) -> None:
    page.wait_for_function(
        "([s, tol]) => Math.abs(document.querySelector('#player').currentTime - s) < tol",
        arg=[start, SEEK_TOLERANCE], timeout=30_000)


def float_attr(locator, name: str) -> float:
    value = locator.get_attribute(name)
    assert value is not None, f"missing {name}"
    return float(value)


def percent_number(text: str | None) -> float:
    match = re.search(r"(\d+(?:\.\d+)?)\s*%", text or "")
    assert match, f"no percentage in {text!r}"
    return float(match.group(1))


# -- 1. upload through the form, live progress ---------------------------------------------

def test_upload_form_then_live_progress_until_completed(page, worker, browser_log, media):
    path = media["long"]
    page.goto("/")
    check_page_frame(page)
    expect(page.locator("#upload-list progress")).to_have_count(0)

    # Slow the upload down (Chromium's own throttling) so its progress bar can be seen moving.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": path.stat().st_size / 1.5})
    page.set_input_files("#upload-file", str(path))
    page.click("#upload-submit")
    upload_values = []
    while not VIDEO_URL.search(page.url):
        try:
            shown = page.evaluate("""() => {
                const b = document.querySelector('#upload-list progress');
                return b && b.offsetParent !== null ? b.value : null;
            }""")
        except PlaywrightError:  # the page navigated away between two samples
            break
        if shown is not None:
            upload_values.append(shown)
        time.sleep(0.05)
    page.wait_for_url(VIDEO_URL, timeout=30_000)
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    vid = VIDEO_URL.search(page.url).group(1)
    assert [v for v in upload_values if 0 < v < 100], (
        f"the file's upload bar never showed a value between 0 and 100: {upload_values}")
    assert upload_values == sorted(upload_values), upload_values

    check_page_frame(page)
    first = panel_state(page)
    assert first["status"] in ("queued", "running"), (
        f"processing was not active when the page opened ({first}); the test video is too "
        "short for this machine")
    assert first["trigger"] and first["get"], f"an active panel must poll: {first}"
    progress_path = urlsplit(first["get"]).path

    samples = []
    buttons_while_running = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = panel_state(page)
        samples.append(state)
        if state["status"] == "running" and buttons_while_running is None:
            buttons_while_running = button_states(page)
        if state["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.1)
    done_at = time.monotonic()
    assert samples[-1]["status"] == "completed", samples[-1]

    statuses = [s["status"] for s in samples]
    assert set(statuses) <= {"queued", "running", "completed"}, statuses
    # Between two steps, while no step runs (its worker between two jobs), the run waits
    # for a worker and says so: queued for a moment. It never comes back once ended.
    assert "completed" not in statuses[:-1], statuses
    assert "running" in statuses, statuses

    values = [s["value"] for s in samples]
    assert None not in values, f"#overall-progress without a value: {samples}"
    values = [float(v) for v in values]
    assert all(s["max"] == "100" for s in samples)
    assert values == sorted(values), f"the bar went backwards: {values}"
    assert values[-1] == 100, values
    intermediate = sorted({v for v in values if 0 < v < 100})
    print(f"upload bar: {len(upload_values)} samples; overall bar, distinct values seen "
          f"in {len(samples)} samples: {sorted(set(values))}")
    assert len(intermediate) >= 3, f"too few intermediate values: {values}"
    for s in samples:
        assert abs(percent_number(s["percent"]) - float(s["value"])) <= 0.5, s

    etas = [s["eta"] for s in samples if s["status"] == "running"]
    assert any(re.search(r"\d", e or "") for e in etas), f"#eta never showed a time: {etas}"
    assert buttons_while_running == {"run": False, "reprocess": False, "force": True,
                                     "cancel": True, "delete": False}, buttons_while_running

    # Finished: polling stopped, every step done, buttons follow.
    final = panel_state(page)
    assert final["trigger"] is None and final["get"] is None, final
    assert percent_number(final["percent"]) == 100
    steps = step_states(page)
    assert all(float(s["value"]) == 100 and s["status"] == "completed"
               for s in steps.values()), steps
    expect(page.locator("#eta")).to_be_attached()
    buttons = button_states(page)
    assert buttons["cancel"] is False and buttons["force"] is False, buttons
    assert buttons["reprocess"] is True and buttons["delete"] is True, buttons

    show_results(page)
    # Of the progress: the queue's watch asks on (every 10 s, test_ui_outage.py).
    progress_polls = page.locator("[hx-trigger*='every']:not(#queue-watch):not(#queue-banner)")
    assert progress_polls.count() == 0, "a poll is still set up"
    # Over 2.5 poll periods, no request: failing as soon as one is made.
    always(lambda: not requests_so_far(page, browser_log, progress_path, since=done_at),
           within=2.5, what=f"no poll of {progress_path} after completion")
    assert api_progress(page, vid)["status"] == "completed"


# -- 2. the results: player, captions, transcript, storyboard, downloads ------------------

def test_player_transcript_storyboard_and_downloads(page, worker, media):
    vid = api_upload(page, media["short"])
    api_trigger(page, vid)
    page.goto(f"/videos/{vid}")
    expect(panel(page)).to_have_attribute("data-status", "completed",
                                          timeout=RUN_TIMEOUT * 1000)
    show_results(page)
    check_page_frame(page)

    player = page.locator("#player")
    assert player.evaluate("p => p.tagName") == "VIDEO"
    assert player.get_attribute("controls") is not None
    poster = player.get_attribute("poster")
    assert poster and poster.endswith(f"/{vid}/artifacts/poster.jpg"), poster
    resp = page.request.get(poster)
    assert resp.status == 200 and resp.headers["content-type"] == "image/jpeg"
    source = page.locator("#player source")
    assert source.get_attribute("src").endswith(f"/{vid}/artifacts/preview.mp4")
    assert source.get_attribute("type") == "video/mp4"
    track = page.locator("#player track")
    assert {a: track.get_attribute(a) for a in ("kind", "srclang", "label")} == {
        "kind": "captions", "srclang": "en", "label": "English"}
    assert track.get_attribute("default") is not None
    assert track.get_attribute("src").endswith(f"/{vid}/artifacts/captions.vtt")

    # The preview really plays (H.264/AAC in Debian's Chromium).
    assert page.evaluate("() => document.createElement('video').canPlayType("
                         "'video/mp4; codecs=\"avc1.42E01E, mp4a.40.2\"')") == "probably"
    play_muted(page)
    page.wait_for_function("() => document.querySelector('#player').currentTime > 0.5",
                           timeout=10_000)
    state = player_state(page)
    assert state["error"] is None and not state["paused"], state
    assert page.evaluate("() => document.querySelector('#player').videoWidth") == 640

    # Captions: the default track shows by itself and its cues say the transcript's lines.
    expect_captions_showing(page)
    page.wait_for_function("""() => {
        const t = document.querySelector('#player').textTracks[0];
        return t.cues && t.cues.length > 0;
    }""", timeout=10_000)
    cues = page.evaluate("""() => Array.from(document.querySelector('#player').textTracks[0]
        .cues, c => ({start: c.startTime, end: c.endTime, text: c.text}))""")

    lines = page.locator("#transcript button.line")
    count = lines.count()
    assert count >= 2, f"expected several transcript lines, got {count}"
    assert len(cues) >= count, (count, cues)  # a long line is cut into several cues
    texts = lines.all_text_contents()
    starts = [float_attr(lines.nth(i), "data-start") for i in range(count)]
    ends = [float_attr(lines.nth(i), "data-end") for i in range(count)]
    assert starts == sorted(starts) and all(s < e for s, e in zip(starts, ends, strict=True))
    # Each cue's words are in the transcript line being spoken when the cue starts.
    for cue in cues:
        spoken = [t for t, s, e in zip(texts, starts, ends, strict=True)
                  if s - 0.01 <= cue["start"] < e]
        assert spoken and " ".join(cue["text"].split()) in " ".join(spoken[0].split()), cue

    # Clicking a transcript line (not the first) seeks there ...
    pause(page)
    index = count // 2
    lines.nth(index).click()
    expect_seek_to(page, starts[index])
    # ... and while playing, the line at the current time is marked. What the page marks is
    # recorded at every timeupdate, right after the page's own handler has run (a listener
    # on the player runs after the capture-phase one on the document): sampled from outside
    # at a fixed pace, a busy browser's late timeupdate read as a wrong mark.
    page.evaluate("""() => {
        const player = document.querySelector('#player');
        window.marksSeen = [];
        player.addEventListener('timeupdate', () => window.marksSeen.push([player.currentTime,
            Array.from(document.querySelectorAll('#transcript .line.current'),
                       l => [parseFloat(l.dataset.start), parseFloat(l.dataset.end)])]));
    }""")
    play_muted(page)
    page.wait_for_function("() => window.marksSeen.length >= 6", timeout=30_000)
    pause(page)
    marks = page.evaluate("() => window.marksSeen")
    seen_clicked_current = False
    for t, current in marks:
        assert len(current) <= 1, f"several current lines at {t}: {current}"
        spoken = [[s, e] for s, e in zip(starts, ends, strict=True) if s <= t < e]
        if not any(abs(t - edge) < 0.05 for edge in starts + ends):
            assert current == spoken, f"at {t} the marked line is {current}, not {spoken}"
        seen_clicked_current |= bool(current) and current[0][0] == starts[index]
    assert seen_clicked_current, f"the clicked line never got class 'current': {marks}"
    assert page.locator("#transcript .line.current").count() <= 1

    # Clicking a storyboard tile seeks to its time.
    pause(page)
    tiles = page.locator("#storyboard button.tile")
    n_tiles = tiles.count()
    assert n_tiles >= 2, n_tiles
    tile_starts = [float_attr(tiles.nth(i), "data-start") for i in range(n_tiles)]
    assert tile_starts == sorted(tile_starts) and tile_starts[0] < tile_starts[-1]
    for i in (n_tiles - 1, 1):
        tiles.nth(i).click()
        expect_seek_to(page, tile_starts[i])
    box = tiles.nth(0).bounding_box()
    assert box and box["width"] > 20 and box["height"] > 10, box

    # Every download link works, one per artifact.
    hrefs = page.locator("#downloads a").evaluate_all(
        "as => as.map(a => a.getAttribute('href'))")
    assert sorted(h.rsplit("/", 1)[-1] for h in hrefs) == sorted(ARTIFACT_NAMES), hrefs
    for href in hrefs:
        resp = page.request.get(href)
        assert resp.status == 200, (href, resp.status)
        assert resp.body(), href


def test_audio_upload_gets_an_audio_player_and_can_be_deleted(page, worker, media):
    vid = upload_with_form(page, media["audio"])
    expect(panel(page)).to_have_attribute("data-status", "completed",
                                          timeout=RUN_TIMEOUT * 1000)
    assert set(step_states(page)) == set(STEPS)
    assert "skipped" in step_states(page)["thumbnails"]["status"]
    show_results(page)
    assert page.locator("#player").evaluate("p => p.tagName") == "AUDIO"
    play_muted(page)
    page.wait_for_function("() => document.querySelector('#player').currentTime > 0.3",
                           timeout=10_000)
    assert page.locator("#transcript button.line").count() >= 1
    assert page.locator("#storyboard button.tile").count() == 0
    names = sorted(h.rsplit("/", 1)[-1] for h in page.locator("#downloads a").evaluate_all(
        "as => as.map(a => a.getAttribute('href'))"))
    assert names == sorted(["audio.wav", "transcript.json", "captions.vtt", "captions.srt"])

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#btn-delete")
    page.wait_for_url(re.compile(r"/$"))
    expect(page.locator(f".video-row[data-video-id='{vid}']")).to_have_count(0)
    assert page.request.get(f"/api/v1/videos/{vid}").status == 404


def test_upload_of_a_non_media_file_is_refused_readably(page, browser_log, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video\n" * 100)
    page.goto("/")
    browser_log.expect_http_error("/videos")
    with page.expect_response(lambda r: r.request.method == "POST"
                              and urlsplit(r.url).path == "/videos") as info:
        page.set_input_files("#upload-file", str(notes))
        page.click("#upload-submit")
    assert info.value.status == 422
    outcome = page.locator("#upload-list li .outcome")
    expect(outcome).to_contain_text("not a playable audio or video file")
    expect(page.locator("#upload-form [role=alert]")).to_have_text(
        "The file was refused: see why beside its name, then choose another.")
    assert urlsplit(page.url).path == "/"
    expect(page.locator("#video-list .video-row")).to_have_count(0)
    # The form is ready for another try: button enabled, the file's line says "refused".
    expect(page.locator("#upload-submit")).to_be_enabled()
    expect(page.locator("#upload-list li .pct")).to_have_text("refused")
    assert page.request.get("/api/v1/videos").json() == []


# -- 4. cancel from the browser, then run again --------------------------------------------

def test_cancel_then_run_again_from_the_browser(page, worker, media):
    vid = upload_with_form(page, media["long"])
    expect(panel(page)).to_have_attribute("data-status", "running", timeout=30_000)
    expect(page.locator("#btn-cancel")).to_be_enabled()
    page.click("#btn-cancel")
    expect(panel(page)).to_have_attribute("data-status", "cancelled", timeout=10_000)
    assert api_progress(page, vid)["status"] == "cancelled"
    assert panel_state(page)["trigger"] is None
    expect(page.locator("#btn-run")).to_be_enabled()
    expect(page.locator("#btn-cancel")).to_be_disabled()
    expect(page.locator("#btn-force")).to_be_disabled()
    expect(page.locator("#btn-delete")).to_be_enabled()
    statuses = {s["status"] for s in step_states(page).values()}
    assert "cancelled" in statuses, statuses
    # A cancelled panel stays cancelled: no stale poll brings "running" back (a poll
    # answered after the cancel would land within a poll period; watch two).
    always(lambda: panel_state(page)["status"] == "cancelled", within=2.0,
           what="the panel staying cancelled")

    with page.expect_response(lambda r: r.request.method == "POST"
                              and urlsplit(r.url).path == f"/videos/{vid}/run") as info:
        page.click("#btn-run")
    assert info.value.status in (200, 202), info.value.status
    expect(panel(page)).to_have_attribute("data-status", re.compile(r"^(queued|running)$"))
    samples = sample_panel(page, timeout=120)
    assert samples[-1]["status"] == "completed", samples[-1]
    assert float(samples[-1]["value"]) == 100
    assert enabled(page, "#btn-cancel") is False
    assert api_progress(page, vid)["status"] == "completed"


def test_a_cancel_shows_what_the_run_left_without_a_reload(page, worker, media):
    """A run cancelled once extract_audio has made audio.wav: the page said nothing of it
    (its results stayed hidden, as when it was opened) until it was reloaded."""
    upload_with_form(page, media["long"])
    expect(page.locator("#status-extract_audio")).to_have_text("completed", timeout=30_000)
    expect(panel(page)).to_have_attribute("data-status", "running")
    page.click("#btn-cancel")
    expect(panel(page)).to_have_attribute("data-status", "cancelled", timeout=10_000)
    expect(page.locator("#results")).to_be_visible()
    shown = page.locator("#downloads a").all_inner_texts()
    assert "audio.wav" in shown, shown
    page.reload()
    assert page.locator("#downloads a").all_inner_texts() == shown


# -- 5. conflicts are readable; force replaces the running task -----------------------------

def test_conflict_is_shown_as_a_message_and_force_replaces_the_task(page, worker, media,
                                                                    browser_log):
    vid = api_upload(page, media["long"])
    first_task = api_trigger(page, vid)
    page.goto(f"/videos/{vid}")
    expect(panel(page)).to_have_attribute("data-status", "running", timeout=30_000)
    expect(page.locator("#btn-reprocess")).to_be_disabled()

    # A person cannot press the disabled button; a stale page (or a second tab) can.
    browser_log.expect_http_error(f"/videos/{vid}/reprocess")
    with page.expect_response(lambda r: r.request.method == "POST"
                              and urlsplit(r.url).path == f"/videos/{vid}/reprocess") as info:
        page.evaluate("""() => {
            const b = document.querySelector('#btn-reprocess');
            b.disabled = false;
            b.click();
        }""")
    assert info.value.status == 409
    message = page.locator("#message")
    expect(message).to_contain_text("already", timeout=30_000)
    assert message.get_attribute("role") == "alert"
    assert first_task in message.text_content() or "running" in message.text_content()
    # Readable means it stays long enough to be read, whatever the panel's polling does
    # (checked at the end, so that a vanishing message does not hide the force check).
    shown_at, lost_after = time.monotonic(), None
    while time.monotonic() - shown_at < 2.5 and lost_after is None:
        if "already" not in (message.text_content() or ""):
            lost_after = time.monotonic() - shown_at
        time.sleep(0.05)
    assert api_progress(page, vid)["task_id"] == first_task

    with page.expect_response(lambda r: r.request.method == "POST"
                              and urlsplit(r.url).path == f"/videos/{vid}/force") as info:
        page.click("#btn-force")
    assert info.value.status in (200, 202), info.value.status
    wait_until(lambda: api_progress(page, vid)["task_id"] != first_task, timeout=60,
               what="a new task replacing the running one")
    second = api_progress(page, vid)["task_id"]
    assert panel_state(page)["status"] in ("queued", "running")
    expect(panel(page)).to_have_attribute("data-status", "completed", timeout=120_000)
    state = api_progress(page, vid)
    assert (state["task_id"], state["status"]) == (second, "completed")
    assert "already" not in (page.locator("#message").text_content() or "")
    assert lost_after is None, (
        f"#message lost the 409 message {lost_after:.2f} s after it appeared: the active "
        "panel's next poll (hx-swap outerHTML) replaced it with an empty #message")


def test_delete_on_a_page_that_missed_a_run_shows_the_run_in_place(page, media,
                                                                    browser_log):
    """A page opened before a run began (from another tab, through the API) still offers
    Delete; the server refuses it (409) and answers with the panel as it is now and the
    message. The panel went inside the Delete form: a second panel, polling, within the
    first, which still said "pending", and no Delete button."""
    vid = api_upload(page, media["short"])
    page.goto(f"/videos/{vid}")
    expect(panel(page)).to_have_attribute("data-status", "pending")
    api_trigger(page, vid)  # no worker: the run stays queued
    browser_log.expect_http_error(f"/videos/{vid}/delete")
    page.once("dialog", lambda d: d.accept())
    with page.expect_response(lambda r: r.request.method == "POST"
                              and urlsplit(r.url).path == f"/videos/{vid}/delete") as info:
        page.click("#btn-delete")
    assert info.value.status == 409
    expect(page.locator("#message")).to_have_text(STILL_RUNNING)
    expect(page.locator("#progress-panel")).to_have_count(1)
    expect(panel(page)).to_have_attribute("data-status", "queued")
    expect(panel(page)).to_have_attribute("hx-trigger", "every 1s")
    expect(page.locator("#btn-delete")).to_have_count(1)
    expect(page.locator("#btn-delete")).to_be_disabled()
    expect(page.locator("#btn-cancel")).to_be_enabled()


# -- 6. screenshots of the library, an active and a finished video page ---------------------

def test_library_and_screenshots(page, worker, media, tmp_path):
    shots = screenshot_dir(tmp_path)
    short = api_upload(page, media["short"])
    api_trigger(page, short)
    wait_api_status(page, short, "completed", timeout=RUN_TIMEOUT)
    pending = api_upload(page, media["audio"])
    long = api_upload(page, media["long"])
    api_trigger(page, long)

    page.goto("/")
    check_page_frame(page)
    rows = page.locator("#video-list .video-row")
    expect(rows).to_have_count(3)
    ids = rows.evaluate_all("rs => rs.map(r => r.dataset.videoId)")
    assert ids == [long, pending, short], "the library is not newest first"
    for vid in ids:
        row = page.locator(f".video-row[data-video-id='{vid}']")
        assert row.locator(f"a[href$='/videos/{vid}']").count() >= 1, f"row {vid} has no link"
    active = page.locator(f".video-row[data-video-id='{long}']")
    expect(active.locator("progress.overall")).to_be_attached(timeout=10_000)
    page.wait_for_function(
        """(id) => {
            const bar = document.querySelector(
                `.video-row[data-video-id="${id}"] progress.overall`);
            return bar && parseFloat(bar.getAttribute('value')) > 0;
        }""", arg=long, timeout=30_000)
    assert page.locator(
        f".video-row[data-video-id='{short}'] progress.overall").count() == 0
    page.screenshot(path=str(shots / "library.png"))
    page.emulate_media(color_scheme="dark")  # the system's dark scheme is followed
    page.screenshot(path=str(shots / "library-dark.png"))
    page.emulate_media(color_scheme="light")

    page.goto(f"/videos/{long}")
    page.wait_for_function("""() => {
        const panel = document.querySelector('#progress-panel');
        const bar = document.querySelector('#overall-progress');
        return panel.dataset.status === 'running' && parseFloat(bar.getAttribute('value')) > 20;
    }""", timeout=60_000)
    page.screenshot(path=str(shots / "video-active.png"))

    expect(panel(page)).to_have_attribute("data-status", "completed", timeout=120_000)
    show_results(page)
    expect(page.locator("#transcript button.line").first).to_be_visible()
    page.wait_for_function("() => document.querySelector('#player').readyState >= 1",
                           timeout=10_000)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shots / "video-done.png"), full_page=True)

    for name in ("library.png", "library-dark.png", "video-active.png", "video-done.png"):
        data = (shots / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name

    # Back in the library the finished row is no longer shown as active.
    page.click("nav a[href='/']")
    row = page.locator(f".video-row[data-video-id='{long}']")
    expect(row).to_be_visible()
    expect(row.locator("progress.overall")).to_have_count(0)


# -- 3. nothing broke in the browser, nothing left 127.0.0.1 ------------------------------

def test_no_console_errors_and_no_foreign_requests(page, browser_log, media):
    """Over every page this module opened (tests 1, 2, 4, 5, 6 run before this one)."""
    if not any(VIDEO_URL.search(urlsplit(u).path) for u in browser_log.pages):
        # Run alone: walk the pages once so the checks below are not vacuous.
        vid = api_upload(page, media["short"])
        page.goto(f"/videos/{vid}")
        page.goto("/")
    # The nav's other links (rq-dashboard, and the API docs if linked) work offline too.
    page.goto("/")
    page.locator("nav a[href^='/rq']").click()
    page.wait_for_load_state("networkidle")
    assert urlsplit(page.url).path.startswith("/rq")
    assert page.locator("body").inner_text().strip()
    page.goto("/")
    if page.locator("nav a[href='/api/docs']").count():
        page.locator("nav a[href='/api/docs']").click()
        page.wait_for_load_state("networkidle")
        expect(page.locator(".swagger-ui .info")).to_be_visible()
    print(f"{len(browser_log.pages)} pages, {len(browser_log.requests)} requests; "
          f"aborted by the browser: {browser_log.failed_requests}")

    assert browser_log.pages, "no page was recorded"
    assert len(browser_log.requests) > 10, browser_log.requests
    assert not browser_log.console_errors, browser_log.console_errors
    assert not browser_log.page_errors, browser_log.page_errors
    assert not browser_log.real_failures(), browser_log.real_failures()
    foreign = browser_log.foreign_requests()
    assert not foreign, f"requests left {LOCAL_HOST}: {foreign}"


# -- 9. a poll that fails (the database gone for a moment) does not take the page with it ---

def test_a_failed_poll_leaves_the_panel_and_polling_goes_on(page, media, browser_log,
                                                             monkeypatch):
    """A 500 to a poll is not a fragment: the panel must stay as it was (not be replaced by
    the error page, with a second site header inside the first page), and go on polling so
    that it follows the task again once the server answers."""
    from sqlalchemy.exc import OperationalError

    from webapp.services import progress

    vid = api_upload(page, media["short"])
    api_trigger(page, vid)  # no worker here: the task stays queued, and its panel polls
    page.goto(f"/videos/{vid}")
    expect(panel(page)).to_have_attribute("hx-trigger", "every 1s")
    poll_path = f"/videos/{vid}/panel"

    def database_down(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("the database is not answering"))

    browser_log.expect_http_error(poll_path)
    with monkeypatch.context() as patched:
        patched.setattr(progress, "poll_tag", database_down)
        # The first 500, not merely the next answer: a poll the server answered just before
        # the patch (its answer still on its way, or not yet handed over by Playwright,
        # which does so only during one of its calls) would be seen first.
        with page.expect_response(lambda r: urlsplit(r.url).path == poll_path
                                  and r.status == 500):
            pass
        failed_at = time.monotonic()
        # two more polls after the failed one (every 1 s; the window is wide for a loaded
        # machine), made once its 500 had come back
        wait_until(lambda: len(requests_so_far(page, browser_log, poll_path, failed_at)) >= 2,
                   timeout=15, what="polling on after a failed poll")
        assert page.locator("header.site").count() == 1, "the error page went into the panel"
        expect(panel(page)).to_have_attribute("data-status", "queued")
        # The page says it may be out of date (it said nothing, the ETA counting down).
        expect(page.locator("#connection-status")).to_contain_text(
            "The server answered with an error (500)")
    # The database answers again: the panel polls on by itself, no reload. A 500 seen now
    # is one answered before the patch was undone, delivered late: the next answer after it.
    with page.expect_response(lambda r: urlsplit(r.url).path == poll_path
                              and r.status != 500) as answered:
        pass
    assert answered.value.status in (200, 304)
    expect(panel(page)).to_have_attribute("hx-trigger", "every 1s")
    assert page.locator("header.site").count() == 1
    expect(page.locator("#connection-status")).to_have_text("")


# -- 10. the ETA counts down between polls, on the server's clock ---------------------------

def test_the_eta_counts_down_between_polls(page, media, browser_log, db_session):
    """The ETA is the one as of the task's last change (an unchanged panel answers 304):
    between changes the page counts down to its data-eta-at, once a second, on the server's
    clock though the browser's is an hour off; past it, it says so instead of a number."""
    from sqlalchemy import select

    from tests.test_progress import make_task
    from webapp.models import SubTask, Video
    from webapp.services import progress

    vid = api_upload(page, media["short"])
    # No worker: the test writes the progress. Only the preview runs, from 1 % to 50 % in
    # 20 s, so about 20 s are left: whole seconds, which show it count down.
    task = make_task(db_session, db_session.get(Video, vid),
                     skipped={s: "not in this test" for s in STEPS if s != "transcode"})
    attempt = progress.start_subtask(db_session, task.id, "transcode")
    progress.report_progress(db_session, task.id, "transcode", attempt, 1.0)
    step = db_session.scalar(select(SubTask).where(SubTask.task_id == task.id,
                                                   SubTask.name == "transcode"))
    step.started_at -= timedelta(seconds=20)
    step.first_progress_at -= timedelta(seconds=20)
    db_session.commit()
    progress.report_progress(db_session, task.id, "transcode", attempt, 50.0)
    state = api_progress(page, vid)
    assert state["status"] == "running" and 15 < state["eta_seconds"] < 40, state
    ends = datetime.fromisoformat(state["eta_at"])

    def left() -> int:
        text = page.locator("#eta").inner_text().strip()
        found = re.fullmatch(r"about (\d+) s left", text)
        assert found, f"#eta reads {text!r}"
        return int(found.group(1))

    page.clock.install(time=datetime.now(UTC) - timedelta(hours=1))  # the browser's is off
    page.goto(f"/videos/{vid}")
    expect(panel(page)).to_have_attribute("hx-trigger", "every 1s")
    eta_at = page.locator("#eta").get_attribute("data-eta-at")
    # Each reading is compared with the time around it, however long the test took to make
    # it on a loaded machine; 2 s either way are the page's whole seconds, shown once a second.
    before, first_from = datetime.now(UTC), time.monotonic()
    first = left()
    after, first_to = datetime.now(UTC), time.monotonic()
    assert ((ends - after).total_seconds() - 2 <= first
            <= (ends - before).total_seconds() + 2), (first, ends, before, after)
    poll_path = f"/videos/{vid}/panel"
    since = time.monotonic()
    # 2.6 s at least, and two polls meanwhile (a loaded machine may take longer for them)
    wait_until(lambda: time.monotonic() - since >= 2.6
               and len(requests_so_far(page, browser_log, poll_path, since)) >= 2,
               timeout=15, what="two polls of the panel")
    second_from = time.monotonic()
    second = left()
    second_to = time.monotonic()
    assert page.locator("#eta").get_attribute("data-eta-at") == eta_at  # nothing changed
    # It counted down by the time between the two readings (2.6 s and the test's own, which
    # a loaded machine stretches), not frozen and not at another pace.
    passed = (second_from - first_to, second_to - first_from)
    assert passed[0] - 2 <= first - second <= passed[1] + 2, (first, second, passed)
    # The estimate runs out while the run goes on: no negative or frozen number.
    page.clock.fast_forward((second + 1) * 1000)
    expect(page.locator("#eta")).to_have_text("finishing")
    page.clock.fast_forward(10_000)
    expect(page.locator("#eta")).to_have_text("taking longer than estimated")


# -- a run started from a completed video's page: the viewer keeps their place -------------

@pytest.mark.parametrize("playing", [False, True], ids=["paused", "playing"])
def test_the_end_of_a_run_keeps_the_viewers_place_in_the_results(page, worker, media,
                                                                 playing):
    """A run started from a completed video's page leaves the results shown, and its end
    brings them anew (the panel's last poll, out of band): the player started again from 0,
    paused; captions turned off in its menu came back; a search's marks (`?q=`) were gone."""
    vid = api_upload(page, media["short"])
    api_trigger(page, vid)
    wait_api_status(page, vid, "completed", timeout=RUN_TIMEOUT)
    page.goto(f"/videos/{vid}?q=weather")
    marks = page.locator("#transcript .line.match mark")
    expect(marks.first).to_be_visible()
    marked = marks.all_inner_texts()
    expect(page.locator("#transcript-matches")).to_be_visible()
    expect_captions_showing(page)
    page.wait_for_function("() => document.querySelector('#player').readyState >= 1")
    at = 2.0 if playing else 4.0
    page.evaluate("""([at, playing]) => {
        const p = document.querySelector('#player');
        p.firstPlayer = true;
        p.currentTime = at;
        if (playing) {  // playing (muted, as a browser plays by itself) at `at` when it ends
            p.muted = true;
            p.loop = true;
            document.addEventListener('htmx:oobBeforeSwap', () => { p.currentTime = at; },
                                      true);
            return p.play();
        }
        p.textTracks[0].mode = 'disabled';  // captions turned off in the player's menu
    }""", [at, playing])
    expect_seek_to(page, at)
    page.click("#btn-reprocess")
    expect(panel(page)).to_have_attribute("data-status", re.compile(r"^(queued|running)$"))
    expect(panel(page)).to_have_attribute("data-status", "completed",
                                          timeout=RUN_TIMEOUT * 1000)
    page.wait_for_function("""() => {
        const p = document.querySelector('#player');
        return p && !p.firstPlayer && p.readyState >= 1;
    }""", timeout=10_000)

    problems = []
    try:
        page.wait_for_function(
            "([at, playing]) => { const p = document.querySelector('#player');"
            " return p.currentTime >= at - 0.05 && p.paused === !playing; }",
            arg=[at, playing], timeout=5_000)
    except PlaywrightError:
        problems.append(f"the player is not at {at} s, {'playing' if playing else 'paused'}:"
                        f" {player_state(page)}")
    if playing:
        try:
            expect_captions_showing(page)  # the page's own choice, made again
        except AssertionError as exc:
            problems.append(str(exc))
    elif not always_true(lambda: captions_mode(page) == "disabled", within=1.5):
        problems.append(f"the captions turned off are {captions_mode(page)!r} again")
    if marks.all_inner_texts() != marked or not page.locator("#transcript-matches").count():
        problems.append(f"the marks of ?q=weather are {marks.all_inner_texts()}, "
                        f"not {marked}")
    assert not problems, problems


def always_true(predicate, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.1)
    return True
