"""The library in a real browser (Debian's Chromium via Playwright): the drop zone with several
files, delete confirmed then said, filters, sorting and pages, the selection's actions, the
transcript's copy button. Runs once, on SQLite (the server side is tested on both databases
in test_ui.py and test_api_videos.py).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from tests import browser, mediagen
from tests.browser import api_upload, wait_until
from tests.conftest import run_worker, start_worker, stop_worker
from tests.helpers import always, publish_transcript

chromium, browser_log, live_server, page = (
    browser.chromium, browser.browser_log, browser.live_server, browser.page)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]
VIDEO_URL = re.compile(r"/videos/([0-9a-f-]{36})$")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("library-media")
    notes = root / "notes.txt"
    notes.write_text("not a video\n" * 50)
    return {
        "a": mediagen.make_video(root / "alpha.mp4", duration=1.0, size="160x120"),
        "b": mediagen.make_video(root / "bravo.mp4", duration=3.0, size="160x120"),
        "c": mediagen.make_video(root / "charlie.mp4", duration=2.0, size="160x120"),
        "notes": notes,
    }


ROW_NAMES = "#video-list .video-row .name"


def row_names(page: Page) -> list[str]:
    """The names in the list as it is now: read once its rows are known to be there."""
    return page.locator(ROW_NAMES).all_text_contents()


def expect_rows(page: Page, names: list[str]) -> None:
    """The list shows these names, in this order, once it does. After a click that
    navigates, Playwright returns as the new page starts to load: a read at once saw it
    half parsed (`[]` on a slow network or a loaded machine), or still the page before."""
    expect(page.locator(ROW_NAMES)).to_have_text(names)


def drop_files(page: Page, paths: list[Path]) -> None:
    """Drag files onto the drop zone, as a person drags them from their file manager."""
    files = [{"name": p.name, "type": "video/mp4" if p.suffix == ".mp4" else "text/plain",
              "data": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    transfer = page.evaluate_handle("""(files) => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.data), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name, {type: f.type}));
        }
        return dt;
    }""", files)
    page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": transfer})
    expect(page.locator("#drop-zone")).to_have_class(re.compile(r"\bdragging\b"))
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})


def test_drop_zone_uploads_several_files_each_with_its_own_bar(page, media, browser_log):
    page.goto("/")
    # Slow uploads (Chromium's own throttling) so that each bar is seen on its way.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": media["b"].stat().st_size / 1.0})
    drop_files(page, [media["a"], media["notes"], media["b"]])
    expect(page.locator("#chosen")).to_contain_text("3 files")
    page.select_option("#upload-language", "de")
    browser_log.expect_http_error("/videos")  # the text file's 422
    page.click("#upload-submit")
    items = page.locator("#upload-list li")
    expect(items).to_have_count(3)
    seen = set()
    for _ in range(200):  # bars between 0 and 100, while the uploads go
        values = items.locator("progress").evaluate_all("bs => bs.map(b => b.value)")
        seen |= {round(v) for v in values if 0 < v < 100}
        if page.locator("#upload-list li[data-state]").count() == 3:
            break
        page.wait_for_timeout(50)
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    expect(page.locator("#upload-list li[data-state]")).to_have_count(3, timeout=30_000)
    assert seen, "no upload bar was seen between 0 and 100"
    states = items.evaluate_all("ls => ls.map(l => l.dataset.state)")
    assert states == ["done", "failed", "done"], states
    expect(items.nth(1).locator(".outcome")).to_contain_text("not a playable")
    expect(page.locator("#upload-message")).to_contain_text("1 of 3 files were refused")
    assert urlsplit(page.url).path == "/"  # several files: the page stays, the list fills
    expect(page.locator("#video-list .video-row")).to_have_count(2)
    assert sorted(row_names(page)) == ["alpha.mp4", "bravo.mp4"]
    videos = page.request.get("/api/v1/videos").json()
    assert {v["original_filename"]: v["requested_language"] for v in videos} == {
        "alpha.mp4": "de", "bravo.mp4": "de"}
    link = items.nth(0).locator(".outcome a")
    assert VIDEO_URL.search(link.get_attribute("href"))


def test_one_file_chosen_with_the_keyboard_goes_to_its_page(page, media):
    page.goto("/")
    page.focus("#upload-file")  # the zone's input is reachable and shows focus
    assert page.evaluate("() => document.activeElement.id") == "upload-file"
    assert page.evaluate("""() => getComputedStyle(document.querySelector('#drop-zone'))
                                  .outlineStyle""") != "none"
    page.set_input_files("#upload-file", str(media["c"]))
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "upload-submit"
    page.keyboard.press("Enter")
    page.wait_for_url(VIDEO_URL, timeout=30_000)
    expect(page.locator("#format")).to_have_text("MP4")


def test_delete_asks_first_then_the_library_says_so(page, media):
    vid = api_upload(page, media["a"])
    page.goto(f"/videos/{vid}")
    questions = []

    def answer(dialog, accept):
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda d: answer(d, False))
    page.click("#btn-delete")
    page.wait_for_timeout(300)
    assert questions == ["Delete this video and all its files?"]
    assert VIDEO_URL.search(page.url) and page.request.get(f"/api/v1/videos/{vid}").ok
    page.once("dialog", lambda d: answer(d, True))
    page.click("#btn-delete")
    page.wait_for_url(re.compile(r"/$"))
    expect(page.locator("#flashes .flash.ok")).to_have_text(
        "Deleted alpha.mp4 and all its files.")
    assert page.request.get(f"/api/v1/videos/{vid}").status == 404
    page.reload()  # said once
    expect(page.locator("#flashes .flash")).to_have_count(0)


def test_filters_sorting_and_pages(page, media):
    ids = {name: api_upload(page, media[key])
           for key, name in (("a", "alpha.mp4"), ("b", "bravo.mp4"), ("c", "charlie.mp4"))}
    page.request.post(f"/api/v1/videos/{ids['bravo.mp4']}/run_sync")  # queued (no worker)
    page.goto("/")
    expect_rows(page, ["charlie.mp4", "bravo.mp4", "alpha.mp4"])  # newest first
    page.select_option("#filter-sort", "duration")
    page.click("#filter-apply")
    expect_rows(page, ["bravo.mp4", "charlie.mp4", "alpha.mp4"])
    page.select_option("#filter-sort", "name")
    page.select_option("#filter-per-page", "10")
    page.click("#filter-apply")
    expect_rows(page, ["alpha.mp4", "bravo.mp4", "charlie.mp4"])
    page.select_option("#filter-status", "active")
    page.click("#filter-apply")
    expect_rows(page, ["bravo.mp4"])
    page.select_option("#filter-status", "pending")
    page.click("#filter-apply")
    expect_rows(page, ["alpha.mp4", "charlie.mp4"])
    page.select_option("#filter-status", "failed")
    page.click("#filter-apply")
    expect(page.locator("#video-list")).to_contain_text("No video is failed")

    # Pages keep the sort and filter; two a page.
    page.goto("/?sort=name&per_page=2")
    expect_rows(page, ["alpha.mp4", "bravo.mp4"])
    expect(page.locator(".pages .page-of")).to_have_text("Page 1 of 2")
    page.click(".pages a[rel=next]")
    expect_rows(page, ["charlie.mp4"])
    assert "sort=name" in page.url and "per_page=2" in page.url
    expect(page.locator(".pages [aria-current=page]")).to_have_text("2")
    page.click(".pages a[rel=first]")
    expect_rows(page, ["alpha.mp4", "bravo.mp4"])


def test_selection_reprocesses_and_deletes_reporting_each_refusal(page, media):
    ids = {name: api_upload(page, media[key])
           for key, name in (("a", "alpha.mp4"), ("b", "bravo.mp4"), ("c", "charlie.mp4"))}
    page.request.post(f"/api/v1/videos/{ids['bravo.mp4']}/run_sync")  # active: 409 below
    page.goto("/?sort=name")
    expect(page.locator("#bulk-delete")).to_be_disabled()  # nothing selected yet
    page.check("#select-all")
    expect(page.locator("#selected-count")).to_have_text("3 selected")
    page.uncheck(f"#select-{ids['charlie.mp4']}")
    expect(page.locator("#selected-count")).to_have_text("2 selected")
    assert page.evaluate("() => document.querySelector('#select-all').indeterminate")

    # Cancelled at the question: nothing happens.
    questions = []
    page.once("dialog", lambda d: (questions.append(d.message), d.dismiss()))
    page.click("#bulk-delete")
    page.wait_for_timeout(300)
    assert questions == ["Delete 2 selected videos and all their files?"]
    assert len(page.request.get("/api/v1/videos").json()) == 3

    # Reprocess alpha (not running) and bravo (running: 409, said by name).
    page.once("dialog", lambda d: d.accept())
    page.click("#bulk-reprocess")
    page.wait_for_load_state()
    expect(page.locator("#flashes .flash.ok")).to_have_text("alpha.mp4: reprocessing started")
    refusal = page.locator("#flashes .flash.error")
    expect(refusal).to_contain_text("bravo.mp4: not reprocessed: it is being processed")
    assert "sort=name" in page.url  # back where it was
    statuses = {v["original_filename"]: v["processing"]["status"]
                for v in page.request.get("/api/v1/videos").json()}
    assert statuses == {"alpha.mp4": "queued", "bravo.mp4": "queued", "charlie.mp4": "pending"}

    # Cancel both runs, then delete two of three with the keyboard alone.
    for name in ("alpha.mp4", "bravo.mp4"):
        page.request.post(f"/api/v1/videos/{ids[name]}/cancel")
    page.goto("/?sort=name")
    page.focus(f"#select-{ids['alpha.mp4']}")
    page.keyboard.press("Space")
    page.focus(f"#select-{ids['charlie.mp4']}")
    page.keyboard.press("Space")
    expect(page.locator("#selected-count")).to_have_text("2 selected")
    page.once("dialog", lambda d: d.accept())
    page.focus("#bulk-delete")
    page.keyboard.press("Enter")
    page.wait_for_load_state()
    expect(page.locator("#flashes .flash.ok")).to_have_text("Deleted 2 videos.")
    expect_rows(page, ["bravo.mp4"])


def test_transcript_downloads_as_text_and_copies(page, media, tmp_path):
    talk = mediagen.make_speech_video(tmp_path / "talk.mp4",
                                      "Hello and welcome. Please call me tomorrow morning.")
    vid = api_upload(page, talk)
    page.request.post(f"/api/v1/videos/{vid}/run_sync")
    run_worker()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(f"/videos/{vid}")
    expect(page.locator("#results")).to_be_visible()
    href = page.locator("#transcript-download").get_attribute("href")
    resp = page.request.get(href)
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text()
    lines = page.locator("#transcript .line").evaluate_all("""ls => ls.map(l =>
        l.textContent.replace(/^\\s*\\S+\\s*/, '').replace(/\\s+/g, ' ').trim())""")
    assert text.splitlines() == lines and "tomorrow" in text.lower()
    page.click("#transcript-copy")
    expect(page.locator("#copy-status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("() => navigator.clipboard.readText()") == text
    # Saved from the page, the files are named after the video: they were all preview.mp4,
    # captions.vtt, ... for every video (the server's name wins over the link's).
    for name in ("captions.vtt", "preview.mp4"):
        with page.expect_download() as saved:
            page.locator("#downloads a", has_text=name).click()
        assert saved.value.suggested_filename == f"talk.{name}"
    with page.expect_download() as saved:
        page.click("#transcript-download")
    assert saved.value.suggested_filename == "talk.txt"


@pytest.mark.parametrize("language, said, direction", [
    ("ar", "كَتَبَ الطالبُ رسالةً إلى المدرسة.", "rtl"),
    ("en", "The student wrote a letter to the school.", "ltr"),
])
def test_a_transcript_reads_in_its_languages_direction(page, media, settings, language, said,
                                                      direction):
    """Arabic (Persian, Urdu, Hebrew...) runs right to left: its lines start at the right,
    with their time first, and the full stop ends the sentence on its left; others stay as
    they were."""
    vid = api_upload(page, media["a"])
    publish_transcript(settings, vid, [(0.0, 1.0, said)], language=language)
    page.goto(f"/videos/{vid}")
    line = page.locator("#transcript .line").first
    expect(line).to_contain_text(said)
    assert page.locator("#transcript").get_attribute("dir") == direction
    box = line.bounding_box()
    stamp = line.locator("time").bounding_box()
    text_box = line.evaluate("""l => { const r = document.createRange();
        r.selectNodeContents(l); r.setStartAfter(l.querySelector('time'));
        const b = r.getBoundingClientRect(); return {x: b.x, width: b.width}; }""")
    if direction == "rtl":  # the time at the right edge, the words to its left
        assert stamp["x"] + stamp["width"] > box["x"] + box["width"] - 20
        assert text_box["x"] + text_box["width"] <= stamp["x"] + 1
    else:
        assert stamp["x"] < box["x"] + 20 and text_box["x"] >= stamp["x"] + stamp["width"] - 1


def test_a_long_file_name_chosen_stays_inside_the_page(page, tmp_path):
    """A name without spaces (cameras, exports) wraps in the drop zone's list of the files
    chosen, rather than widening the page past the screen; down to 320 px wide (WCAG's
    reflow width), where the header's search button once stuck out by 3 px."""
    long_name = "_".join(["recording"] * 20) + ".mp4"
    chosen = mediagen.make_video(tmp_path / long_name, duration=1.0, size="160x120")
    for viewport in ({"width": 1280, "height": 900}, {"width": 390, "height": 844},
                     {"width": 320, "height": 640}):
        page.set_viewport_size(viewport)
        page.goto("/")
        page.set_input_files("#upload-file", str(chosen))
        expect(page.locator("#chosen")).to_contain_text(long_name)
        widths = page.evaluate("""() => ({page: document.documentElement.scrollWidth,
                                          screen: document.documentElement.clientWidth})""")
        assert widths["page"] <= widths["screen"], (viewport, widths)


def test_files_the_browser_gives_back_after_back_are_shown(page, media):
    """Back on the library after an upload, Chromium hands the file control the files it
    had (form restoration): the zone says which, so that Upload and process does not send
    them again unannounced."""
    page.goto("/")
    page.set_input_files("#upload-file", str(media["c"]))
    page.click("#upload-submit")
    page.wait_for_url(VIDEO_URL, timeout=30_000)
    page.go_back()
    expect(page.locator("#upload-submit")).to_be_enabled()
    restored = page.evaluate("() => document.getElementById('upload-file').files.length")
    assert restored == 1, "Chromium no longer restores the file control (adapt this test)"
    expect(page.locator("#chosen")).to_have_text("1 file: charlie.mp4")


_OUTLINE_ROOM_JS = """(sel) => {
    const el = document.querySelector(sel);
    const list = el.closest('#storyboard, #transcript');
    const style = getComputedStyle(el);
    const r = el.getBoundingClientRect(), b = list.getBoundingClientRect();
    const left = b.left + list.clientLeft, top = b.top + list.clientTop;
    return {reach: parseFloat(style.outlineWidth) + parseFloat(style.outlineOffset),
            style: style.outlineStyle,
            room: [r.left - left, r.top - top, left + list.clientWidth - r.right]};
}"""


def test_a_focused_tile_or_transcript_line_shows_its_whole_outline(page, tmp_path):
    """The storyboard and the transcript scroll, so they clip what overflows them: the
    focus outline of their first tile or line must fit inside, on every side."""
    talk = mediagen.make_speech_video(tmp_path / "talk.mp4", "Hello there. Good morning.")
    vid = api_upload(page, talk)
    page.request.post(f"/api/v1/videos/{vid}/run_sync")
    run_worker()
    page.goto(f"/videos/{vid}")
    for selector in ("#storyboard .tile", "#transcript .line"):
        page.locator(selector).first.wait_for()
        page.keyboard.press("Tab")  # the keyboard is in use: :focus-visible
        page.locator(selector).first.focus()
        found = page.evaluate(_OUTLINE_ROOM_JS, selector)
        assert found["style"] != "none" and found["reach"] >= 3, (selector, found)
        assert min(found["room"]) >= found["reach"], (selector, found)


def test_files_dropped_beside_the_zone_do_not_leave_the_page(page):
    """A drop that misses the zone is not the browser's to open (it would leave the page,
    and any upload under way, for the file): the page cancels it; nothing is uploaded."""
    page.goto("/")
    cancelled = page.evaluate("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File(["x"], "missed.mp4", {type: "video/mp4"}));
        return ["dragover", "drop"].map(type => {
            const evt = new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true});
            document.querySelector("#library").dispatchEvent(evt);
            return evt.defaultPrevented;
        });
    }""")
    assert cancelled == [True, True]
    expect(page.locator("#chosen")).to_be_empty()
    assert page.locator("#upload-list li").count() == 0


def test_leaving_the_page_during_an_upload_asks_first(page, media):
    """Leaving the library stops the uploads under way: the browser asks first (and stays
    if told to); once they are done, the page is left without a question."""
    page.goto("/")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": media["b"].stat().st_size / 4.0})
    asked = []
    page.on("dialog", lambda dialog: (asked.append(dialog.type), dialog.dismiss()))
    page.set_input_files("#upload-file", [str(media["a"]), str(media["b"])])
    page.click("#upload-submit")
    expect(page.locator("#upload-list li")).to_have_count(2)
    page.click("a.brand")  # to the library again: a navigation
    # Playwright hands the dialog to its handler only while one of its calls runs: a round
    # trip to the page in each look (once dismissed, the page answers again).
    wait_until(lambda: page.evaluate("() => 0") == 0 and asked, timeout=10,
               what="the browser asking before leaving")
    assert asked == ["beforeunload"]
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    expect(page.locator("#upload-list li[data-state=done]")).to_have_count(2, timeout=30_000)
    # The list below is fetched again once both are done: wait for it, then read it.
    expect(page.locator("#video-list .video-row")).to_have_count(2)
    assert sorted(row_names(page)) == ["alpha.mp4", "bravo.mp4"]
    page.click("nav a[href='/api/docs']")
    page.wait_for_url("**/api/docs")
    assert asked == ["beforeunload"]


def test_the_filters_keep_each_label_beside_its_menu_on_a_phone(page):
    """On a narrow screen the filters wrap; a label (Status, Sort, Per page) goes to the next
    line with its menu, never stays alone at the end of the line above it."""
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/")
    for name in ("status", "sort", "per-page"):
        label = page.locator(f"label[for=filter-{name}]").bounding_box()
        menu = page.locator(f"#filter-{name}").bounding_box()
        middle = label["y"] + label["height"] / 2
        assert menu["y"] <= middle <= menu["y"] + menu["height"], (name, label, menu)
        assert 0 <= menu["x"] - (label["x"] + label["width"]) < 20, (name, label, menu)


def test_the_line_being_spoken_is_brought_into_the_transcripts_view(page, media, settings):
    """A long transcript scrolls in its own box: the line being spoken is brought into that
    box's view when it becomes current (the highlight never runs off out of sight), and the
    page itself stays where it is."""
    vid = api_upload(page, media["b"])
    page.request.post(f"/api/v1/videos/{vid}/run_sync")
    run_worker()
    publish_transcript(settings, vid, [(i / 10, (i + 1) / 10, f"Line number {i}.")
                                       for i in range(30)])
    page.goto(f"/videos/{vid}")
    expect(page.locator("#transcript .line")).to_have_count(30)
    page.locator("#player").evaluate("p => p.scrollIntoView({block: 'start'})")
    scrolled = page.evaluate("() => window.scrollY")
    page.locator("#player").evaluate("p => { p.currentTime = 2.75; }")
    current = page.locator("#transcript .line.current")
    expect(current).to_contain_text("Line number 27.")
    box, line = page.locator("#transcript").bounding_box(), current.bounding_box()
    assert box["y"] <= line["y"] and line["y"] + line["height"] <= box["y"] + box["height"]
    assert page.evaluate("() => window.scrollY") == scrolled


def test_more_matching_lines_of_a_search_are_shown_marked(page, media, settings):
    """A search's "and 7 more matching lines" led to the top of the video page: the lines it
    promised were far below, and in the transcript's box beyond its first lines. The page
    is taken to them, and the box to the first of them."""
    vid = api_upload(page, media["c"])
    page.request.post(f"/api/v1/videos/{vid}/run_sync")
    run_worker()
    publish_transcript(settings, vid, [
        (i / 20, (i + 1) / 20, f"Line {i}: the budget" if i >= 30 and i % 3 == 0 else f"Line {i}.")
        for i in range(40)])
    page.goto("/search?q=budget")
    page.click("li.more a")
    first = page.locator("#transcript .line.match").first
    expect(first).to_contain_text("Line 30: the budget")
    expect(page.locator("#transcript-matches")).to_be_in_viewport()
    expect(first).to_be_in_viewport()
    box, line = page.locator("#transcript").bounding_box(), first.bounding_box()
    assert box["y"] <= line["y"] and line["y"] + line["height"] <= box["y"] + box["height"]
    expect(page.locator("#transcript .line.match mark")).to_have_text(["budget"] * 4)


def test_the_storyboard_and_the_transcript_are_one_tab_stop_each(page, media, settings):
    """Every frame of the storyboard and every transcript line was a tab stop: past a long
    video's hundred frames and hundreds of lines, its downloads were hundreds of Tabs away.
    Each list is one stop now, the arrow keys (and Home, End) move within it, and Tab
    leaves it; coming back lands where one left it, or on what is playing."""
    vid = api_upload(page, media["b"])
    page.request.post(f"/api/v1/videos/{vid}/run_sync")
    run_worker()
    publish_transcript(settings, vid, [(i / 10, (i + 1) / 10, f"Line number {i}.")
                                       for i in range(30)])
    page.goto(f"/videos/{vid}")
    tiles, lines = page.locator("#storyboard .tile"), page.locator("#transcript .line")
    expect(lines).to_have_count(30)
    assert tiles.count() >= 2
    tiles.first.focus()
    page.keyboard.press("ArrowRight")
    expect(tiles.nth(1)).to_be_focused()
    page.keyboard.press("Tab")  # out of the storyboard, not to its next frame
    expect(page.locator("#transcript-download")).to_be_focused()
    for _ in range(2):  # past "Copy text", where the browser lets it show
        if page.evaluate("() => !!document.activeElement.closest('#transcript')"):
            break
        page.keyboard.press("Tab")
    expect(lines.first).to_be_focused()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect(lines.nth(2)).to_be_focused()
    page.keyboard.press("End")
    expect(lines.last).to_be_focused()
    box, line = page.locator("#transcript").bounding_box(), lines.last.bounding_box()
    assert box["y"] <= line["y"] and line["y"] + line["height"] <= box["y"] + box["height"]
    page.keyboard.press("Tab")  # out of the transcript, to the downloads
    expect(page.locator("#downloads a").first).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(lines.last).to_be_focused()
    page.keyboard.press("Home")
    expect(lines.first).to_be_focused()
    for _ in range(5):
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")  # still a button: it seeks
    wait_until(lambda: abs(page.evaluate("() => document.querySelector('#player').currentTime")
                           - 0.5) < 0.05, timeout=30, what="a seek to line 5 (0.5 s)")
    for _ in range(3):
        page.keyboard.press("Shift+Tab")
        if page.evaluate("() => !!document.activeElement.closest('#storyboard')"):
            break
    # The frame of the moment the line's seek went to (0.5 s), as the transcript's stop
    # follows the line being spoken, not the frame it was left on.
    expect(tiles.first).to_be_focused()


def test_a_focused_rows_link_keeps_the_focus_when_the_row_is_refreshed(page, media):
    """The row of a video being processed is replaced as its progress changes: a keyboard
    user on its name lost the focus to the page's top at the next change (the next Tab
    started from the header again). The focus stays on the name, the row's box likewise."""
    vid = api_upload(page, media["a"])
    assert page.request.post(f"/api/v1/videos/{vid}/run_sync").status == 202  # no worker
    page.goto("/")
    row = page.locator(f".video-row[data-video-id='{vid}']")
    expect(row).to_have_attribute("data-status", "queued")
    page.keyboard.press("Tab")  # the keyboard is in use
    row.locator("a.name").focus()
    row.evaluate("r => { r.dataset.before = '1'; }")
    assert page.request.post(f"/api/v1/videos/{vid}/cancel").status == 200
    expect(row).to_have_attribute("data-status", "cancelled")  # the row's last refresh
    assert row.evaluate("r => !r.dataset.before"), "the row was not replaced"
    expect(row.locator("a.name")).to_be_focused()
    page.keyboard.press("Shift+Tab")  # on from where it was: the row's own box
    expect(page.locator(f"#select-{vid}")).to_be_focused()


def test_the_storyboard_follows_the_player(page, tmp_path):
    """The transcript showed the line being spoken; the storyboard showed nothing of where
    the player was, and on a phone its strip stayed at its first frames. The frame of the
    moment is marked (aria-current), brought into the strip's view without moving the page,
    and is where Tab enters the strip."""
    clip = mediagen.make_video(tmp_path / "twelve.mp4", duration=12.0, size="160x120")
    vid = api_upload(page, clip)
    page.request.post(f"/api/v1/videos/{vid}/run_sync")
    run_worker()
    page.set_viewport_size({"width": 360, "height": 640})
    page.goto(f"/videos/{vid}")
    tiles = page.locator("#storyboard .tile")
    expect(tiles).to_have_count(6)  # one every 2 s
    last = tiles.last
    assert not last.evaluate(_IN_STRIP_JS), "the strip shows its last frame already"
    page.locator("#player").evaluate("p => p.scrollIntoView({block: 'start'})")
    scrolled = page.evaluate("() => window.scrollY")
    page.locator("#player").evaluate("p => { p.currentTime = 11; }")
    expect(last).to_have_attribute("aria-current", "true")
    expect(page.locator("#storyboard .tile.current")).to_have_count(1)
    wait_until(lambda: last.evaluate(_IN_STRIP_JS), timeout=30, what="the frame in view")
    assert page.evaluate("() => window.scrollY") == scrolled
    page.locator("#player").evaluate("p => { p.currentTime = 2.5; }")
    expect(tiles.nth(1)).to_have_attribute("aria-current", "true")
    expect(last).not_to_have_attribute("aria-current", "true")
    page.locator("#player").focus()
    for _ in range(12):  # past the player's own controls, if the browser gives them stops
        page.keyboard.press("Tab")
        if page.evaluate("() => !!document.activeElement.closest('#storyboard')"):
            break
    expect(tiles.nth(1)).to_be_focused()


_IN_STRIP_JS = """(tile) => {
    const strip = tile.parentNode.getBoundingClientRect(), r = tile.getBoundingClientRect();
    return r.left >= strip.left - 1 && r.right <= strip.right + 1;
}"""


def test_the_first_tab_offers_to_skip_the_header(page, media):
    """Every page began with the header's six stops (the name, three links, the search box
    and its button) before its own content. The first Tab shows "Skip to content", and
    Enter on it makes the next Tab the page's first control."""
    vid = api_upload(page, media["a"])
    for path, first in (("/", "#upload-file"), (f"/videos/{vid}", "#btn-run")):
        page.goto(path)
        page.keyboard.press("Tab")
        skip = page.locator("a.skip-link")
        expect(skip).to_be_focused()
        expect(skip).to_be_in_viewport()
        assert skip.bounding_box()["height"] > 10
        page.keyboard.press("Enter")
        page.keyboard.press("Tab")
        expect(page.locator(first)).to_be_focused()
        assert not skip.evaluate("a => { const r = a.getBoundingClientRect(); "
                                 "return r.bottom > 0 && r.top < innerHeight; }")


def test_a_refused_files_bar_is_in_the_error_colour(page, media, browser_log):
    """Its bytes were all sent, so the bar of a refused file is full: it must not look like
    the others' blue \"done\" bar."""
    page.goto("/")
    browser_log.expect_http_error("/videos")  # the text file's 422
    page.set_input_files("#upload-file", [str(media["notes"]), str(media["a"])])
    page.click("#upload-submit")
    expect(page.locator("#upload-list li[data-state]")).to_have_count(2, timeout=30_000)
    colours = page.locator("#upload-list progress").evaluate_all(
        "bs => bs.map(b => getComputedStyle(b).accentColor)")
    error = page.locator("#upload-list li[data-state=failed] .outcome").evaluate(
        "o => getComputedStyle(o).color")
    assert colours[0] == error and colours[1] != error, (colours, error)


_PLAYER_IN_VIEW_JS = """() => {
    const r = document.querySelector('#player').getBoundingClientRect();
    return r.top > -1 && r.bottom < window.innerHeight + 1;  // scrolled to a fraction
}"""


def test_seeking_from_below_the_player_brings_it_into_view(page, media, settings):
    """On a phone the transcript's lines (and the storyboard's tiles) are below the player:
    a click seeks it, and the page scrolls to show it, or nothing seemed to happen. Under
    prefers-reduced-motion it is there at once, not scrolled to smoothly."""
    vid = api_upload(page, media["b"])
    page.request.post(f"/api/v1/videos/{vid}/run_sync")
    run_worker()
    publish_transcript(settings, vid, [(i / 10, (i + 1) / 10, f"Line number {i}.")
                                       for i in range(30)])
    page.set_viewport_size({"width": 360, "height": 640})
    page.goto(f"/videos/{vid}")
    for selector, reduced in (("#transcript .line >> nth=20", "no-preference"),
                              ("#storyboard .tile >> nth=1", "reduce")):
        page.emulate_media(reduced_motion=reduced)
        target = page.locator(selector)
        target.scroll_into_view_if_needed()
        page.evaluate("() => window.scrollBy(0, 200)")
        assert not page.evaluate(_PLAYER_IN_VIEW_JS), selector
        start = float(target.get_attribute("data-start"))
        if reduced == "reduce":  # no animation: in view as the click returns
            assert target.evaluate(f"(t) => {{ t.click(); return ({_PLAYER_IN_VIEW_JS})(); }}")
        else:
            target.click()
            wait_until(lambda: page.evaluate(_PLAYER_IN_VIEW_JS), timeout=30,
                       what=f"the player in view after a click on {selector}")
        assert abs(page.evaluate("() => document.querySelector('#player').currentTime")
                   - start) < 0.5


_SHOWING_JS = """() => {
    const p = document.querySelector('#player');
    return p.readyState >= 1 ? Array.from(p.textTracks).filter(t => t.mode === 'showing')
        .map(t => t.label) : null;
}"""


@pytest.mark.parametrize("languages, shown", [
    (["en-GB", "de"], "English (translated)"),
    (["fr-CA", "de-AT", "en"], "German"),  # the first the video has a track in
    (["fr"], "German"),  # none: the spoken language's
])
def test_the_captions_shown_first_are_in_the_viewers_language(page, chromium, live_server,
                                                            media, settings, languages, shown):
    """With English captions too, the player showed the spoken language's captions to
    everyone: a viewer whose browser asks for English sees the English ones, and one whose
    browser asks for neither language the spoken language's."""
    vid = api_upload(page, media["b"])
    page.request.post(f"/api/v1/videos/{vid}/run_sync")
    run_worker()
    publish_transcript(settings, vid, [(0.0, 1.5, "Guten Tag.")], "de",
                       translation=[(0.0, 1.5, "Good day.")])
    context = chromium.new_context(base_url=live_server)
    try:
        viewer = context.new_page()
        viewer.add_init_script(
            f"Object.defineProperty(navigator, 'languages', {{get: () => {languages!r}}})")
        viewer.goto(f"/videos/{vid}")
        assert viewer.locator("#player track").count() == 2
        wait_until(lambda: viewer.evaluate(_SHOWING_JS), timeout=10,
                   what="the player's metadata and a track showing")
        always(lambda: viewer.evaluate(_SHOWING_JS) == [shown], within=1.0,
               what=f"{shown} captions alone showing for {languages}")
        assert viewer.locator("#player track[default]").get_attribute("label") == shown
    finally:
        context.close()


@pytest.mark.parametrize("touch, said", [
    (False, "Drop video or audio files here\nor choose files (several at once, up to"),
    (True, "Choose video or audio files\n(several at once, up to"),
])
def test_a_phone_is_asked_to_choose_files_not_to_drop_them(chromium, live_server, touch,
                                                           said):
    """A phone (a touch screen, 360 px wide) has no files to drag onto the zone: it said
    "Drop video or audio files here" all the same. There the zone says to choose them (the
    file control's name too, which is the zone's label); a mouse is still asked to drop."""
    context = chromium.new_context(base_url=live_server, has_touch=touch,
                                   viewport={"width": 360, "height": 640})
    try:
        phone = context.new_page()
        phone.goto("/")
        label = phone.locator("label[for=upload-file]")
        assert label.inner_text().startswith(said), label.inner_text()
        expect(phone.locator("#upload-file")).to_have_accessible_name(
            re.compile("^" + re.escape(said.replace("\n", " "))))
    finally:
        context.close()


def test_a_kept_box_keeps_the_focus_in_a_browser_without_move_before(page, media):
    """A row's box is kept across the row's refreshes (hx-preserve). Where the browser has no
    Element.moveBefore (Safari), HTMX takes the kept box out of the page and puts it back,
    which drops the focus, and HTMX gives the focus back only to an element that left the
    page for good: a keyboard user on a running video's box lost it at every poll."""
    page.add_init_script("delete Element.prototype.moveBefore")
    vid = api_upload(page, media["a"])
    assert page.request.post(f"/api/v1/videos/{vid}/run_sync").status == 202  # no worker
    page.goto("/")
    assert page.evaluate("() => !('moveBefore' in Element.prototype)")
    row = page.locator(f".video-row[data-video-id='{vid}']")
    expect(row).to_have_attribute("data-status", "queued")
    box = page.locator(f"#select-{vid}")
    box.focus()
    row.evaluate("r => { r.dataset.before = '1'; }")
    wait_until(lambda: row.evaluate("r => !r.dataset.before"), timeout=15,
               what="the row refreshed by its poll")
    page.wait_for_timeout(1500)  # a refresh more
    expect(box).to_be_focused()
    page.keyboard.press("Space")  # still the keyboard's: it ticks the box
    expect(page.locator("#selected-count")).to_have_text("1 selected")


def test_a_confirmed_selection_action_is_sent_once(page, media):
    """After the question was answered, the selection's answer can take a while (many
    videos); a second press meanwhile sent the selection again, unasked, and the page then
    showed the second answer's refusals for an action that had worked. Here the answer is
    a 204 (the browser stays on the page, as while a slow answer is on its way)."""
    ids = [api_upload(page, media[key]) for key in ("a", "c")]
    page.goto("/")
    for vid in ids:
        page.check(f"#select-{vid}")
    sent = []

    def no_answer_yet(route):
        sent.append(route.request.post_data)
        route.fulfill(status=204)

    page.route("**/videos/selected", no_answer_yet)
    questions = []
    page.on("dialog", lambda d: (questions.append(d.message), d.accept()))
    page.click("#bulk-reprocess")
    wait_until(lambda: page.evaluate("() => 0") == 0 and sent, timeout=15,
               what="the selection sent")
    expect(page.locator("#bulk-reprocess")).to_be_disabled()
    expect(page.locator("#bulk-delete")).to_be_disabled()
    # A submit by other means than the disabled buttons (Enter in the form) sends nothing.
    page.evaluate("() => document.getElementById('bulk-form').requestSubmit()")
    page.wait_for_timeout(500)
    page.evaluate("() => 0")  # the requests made meanwhile handed to the route
    assert len(sent) == 1, sent
    assert "action=reprocess" in sent[0] and "confirmed=1" in sent[0], sent[0]
    assert questions == ["Reprocess 2 selected videos from scratch?"]


def test_a_failing_row_poll_is_said_until_it_answers_again(page, media, browser_log,
                                                          monkeypatch):
    """A row whose poll the app answers with a 500 (its database not answering) keeps what
    it shows; the page says it may be out of date (it said nothing: HTMX's responseError
    does not fire for the page's responseHandling), and keeps saying so though the queue's
    watch, answered from Redis, goes on answering every 10 s meanwhile."""
    from sqlalchemy.exc import OperationalError

    from webapp.services import progress

    vid = api_upload(page, media["a"])
    assert page.request.post(f"/api/v1/videos/{vid}/run_sync").status == 202  # no worker
    page.goto("/")
    expect(page.locator(f".video-row[data-video-id='{vid}']")).to_have_attribute(
        "data-status", "queued")
    status = page.locator("#connection-status")
    row_path = f"/videos/{vid}/row"

    def database_down(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("the database is not answering"))

    browser_log.expect_http_error(row_path)
    with monkeypatch.context() as patched:
        patched.setattr(progress, "poll_tag", database_down)
        expect(status).to_contain_text("The server answered with an error (500)",
                                       timeout=15_000)
        with page.expect_response(lambda r: urlsplit(r.url).path == "/queue-banner",
                                  timeout=30_000) as watch:
            pass
        assert watch.value.status == 204
        page.wait_for_timeout(300)  # the watch's answer handled
        expect(status).to_contain_text("The server answered with an error (500)")
    expect(status).to_have_text("", timeout=15_000)
    expect(page.locator(f".video-row[data-video-id='{vid}']")).to_have_count(1)


NO_WORKER = "No worker is running: queued tasks will wait until one starts"


def test_the_no_worker_banner_comes_and_goes_with_the_workers(page, media, tmp_path):
    """The library said "No worker is running" as of its loading: a worker started and the
    rows ran to completed under it, or the only worker died mid-run and nothing was said.
    Its watch asks again while rows are active (GET /worker-banner), in a live region that
    was on the page from its loading, and goes once no row is active."""
    page.goto("/")
    status = page.locator("#worker-status[role=status]")
    expect(status).to_be_empty()  # nothing active: nothing shown, nothing asked
    expect(status.locator("[hx-get]")).to_have_count(0)

    # The long video first: the worker is busy with it while the other one waits.
    long_clip = mediagen.make_video(tmp_path / "long.mp4", duration=12.0, size="1280x720")
    vids = [api_upload(page, long_clip), api_upload(page, media["a"])]
    for vid in vids:
        assert page.request.post(f"/api/v1/videos/{vid}/run_sync").status == 202
    page.goto("/")
    banner = status.locator("#worker-banner")
    expect(banner).to_contain_text(NO_WORKER)
    page.evaluate("() => { document.querySelector('#worker-status').dataset.since = 'loaded'; }")
    started = []
    try:
        started.append(start_worker())
        # Within the watch's 5 s, the 2 s census and the worker's start.
        expect(banner).to_have_count(0, timeout=15_000)
        # Gone by the watch's answer, while the rows are still active: it asks on.
        expect(status.locator("#worker-watch[hx-get]")).to_have_count(1)
        assert page.locator(".video-row[hx-get]").count() >= 1, "both rows ended first"
        expect(status).to_have_attribute("data-since", "loaded")

        # The only worker stops mid-run: its step goes back to the queue, the rows poll on.
        stop_worker(started[-1])
        expect(banner).to_contain_text(NO_WORKER, timeout=16_000)  # 10 s watch, 2 s census
        expect(status).to_have_attribute("data-since", "loaded")
        assert page.locator(".video-row[hx-get]").count() == 2

        # A worker again: the rows run to completed, and then nothing is asked any more.
        started.append(start_worker())
        expect(banner).to_have_count(0, timeout=15_000)
        expect(page.locator(".video-row[data-status=completed]")).to_have_count(
            2, timeout=180_000)
        expect(status).to_be_empty()
        expect(page.locator("[hx-trigger*='every']:not(#queue-watch):not(#queue-banner)")
               ).to_have_count(0)
    finally:
        for proc in started:
            stop_worker(proc)
