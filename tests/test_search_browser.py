"""Search in a real browser: the header's box, the results, a click on a line, and the video
playing from that moment (Debian's Chromium via Playwright, a live server, a real worker).

Runs once, on SQLite: the page does not depend on the database backend (the API tests run
search on both).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from tests import browser, mediagen
from tests.browser import api_trigger, api_upload, player_state, wait_until

chromium, browser_log, live_server, page = (
    browser.chromium, browser.browser_log, browser.live_server, browser.page)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

# The word searched for is said well after the start, in a line of its own.
SPEECH = ("Welcome to our little programme about animals. First we visit the farm and "
          "say hello to the cows and the sheep. After that we travel far to the south. "
          "There the giraffe eats leaves from the tallest trees. Thank you for watching.")
WORD = "GIRAFFE"
TOLERANCE = 0.5  # seconds: a seek lands on a frame near the time asked for


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    return mediagen.make_speech_video(tmp_path_factory.mktemp("search-browser") / "animals.mp4",
                                      SPEECH, size="640x360")


def test_search_then_click_a_line_plays_the_video_from_that_moment(page, worker, browser_log,
                                                                    talk):
    vid = api_upload(page, talk)
    api_trigger(page, vid)
    wait_until(lambda: page.request.get(f"/api/v1/videos/{vid}/reprocess").json()["status"]
               in ("completed", "failed"), timeout=180, interval=0.5, what="processing")
    assert page.request.get(f"/api/v1/videos/{vid}/reprocess").json()["status"] == "completed"

    # The box in the header of the library page.
    page.goto("/")
    page.fill("#search-q", WORD)
    page.press("#search-q", "Enter")
    page.wait_for_url(re.compile(r"/search\?q=GIRAFFE$"))
    expect(page.locator("#search-summary")).to_contain_text("1 video matches")
    hit = page.locator(f".search-hit[data-video-id='{vid}']")
    expect(hit).to_have_count(1)
    moment = hit.locator("a.moment")
    expect(moment).to_have_count(1)
    expect(moment.locator("mark")).to_have_text(re.compile(r"^giraffe$", re.IGNORECASE))
    start = float(moment.get_attribute("data-start"))
    assert start > 3, f"the line with the word starts at {start} s: not a moment to seek to"
    shown = moment.locator("time").text_content()
    assert shown == f"{int(start) // 60}:{int(start) % 60:02d}", shown

    moment.click()
    page.wait_for_url(re.compile(rf"/videos/{vid}\?t="))
    t = float(parse_qs(urlsplit(page.url).query)["t"][0])
    assert t == pytest.approx(start, abs=0.001)
    # The player went to that moment by itself, and plays on from there. Its time is read
    # in the same look that saw it arrive: read in a later call, it had played on for as
    # long as a loaded machine took between the two.
    first = page.wait_for_function(
        "([s, tol]) => { const p = document.querySelector('#player');"
        " return p && p.readyState >= 1 && p.currentTime >= s - tol"
        " && {time: p.currentTime, error: p.error && p.error.message}; }",
        arg=[start, TOLERANCE], timeout=10_000).json_value()
    assert first["error"] is None and first["time"] < start + 2, first
    # The transcript marks the line being spoken: the one the search found (looked at while
    # the player is still in it: it plays on, into the next line a few seconds later).
    current = page.locator("#transcript .line.current")
    expect(current).to_have_count(1)
    expect(current).to_contain_text(re.compile("giraffe", re.IGNORECASE))
    page.wait_for_function(
        "(t0) => document.querySelector('#player').currentTime > t0 + 0.5",
        arg=first["time"], timeout=10_000)
    state = player_state(page)
    assert not state["paused"], state

    # The same link opened afresh (shared) does the same, without a search before it.
    page.goto(f"/videos/{vid}?t={start:.3f}")
    page.wait_for_function(
        "([s, tol]) => { const p = document.querySelector('#player');"
        " return p && p.readyState >= 1 && Math.abs(p.currentTime - s) < tol + 1; }",
        arg=[start, TOLERANCE], timeout=10_000)

    assert not browser_log.console_errors, browser_log.console_errors
    assert not browser_log.page_errors, browser_log.page_errors
    assert not browser_log.foreign_requests(), browser_log.foreign_requests()
