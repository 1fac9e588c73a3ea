"""The pages in a real browser on a bad network: HTMX requests that get no answer (the
connection down, or a server that hangs past the timeout) or an answer that is not the
app's (a proxy's 502 page). The page says so, swaps nothing foreign in, and recovers by
itself once the server answers. Runs on SQLite (the network is the browser's)."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from tests import browser, mediagen
from tests.browser import api_trigger, api_upload, requests_so_far, wait_until

chromium, browser_log, live_server, page = (
    browser.chromium, browser.browser_log, browser.live_server, browser.page)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]
RUN = "**/videos/*/run"
NO_ANSWER = ("The server did not answer: reload the page to see whether it was done, "
             "then try again.")
PROXY_PAGE = ("<!doctype html><html><head><title>502 Bad Gateway</title></head><body>"
              "<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return mediagen.make_video(tmp_path_factory.mktemp("network") / "clip.mp4", duration=1.0,
                               size="160x120")


def message(page: Page):
    return page.locator("#message[role=alert]")


def panel_intact(page: Page, status: str) -> None:
    """The panel as the app made it: nothing foreign swapped in, one site header."""
    expect(page.locator("#progress-panel")).to_have_attribute("data-status", status)
    assert page.locator("header.site").count() == 1
    assert page.locator("h1").all_text_contents() == ["clip.mp4"]


def test_an_action_without_an_answer_says_so_and_the_next_press_works(page, clip):
    """Run pressed while the connection was down did nothing that could be seen: no word,
    the page as it was. It says the server did not answer; pressed again once the
    connection is back, Run starts the run and the message goes."""
    vid = api_upload(page, clip)
    page.goto(f"/videos/{vid}")
    page.route(RUN, lambda route: route.abort("internetdisconnected"))
    page.click("#btn-run")
    expect(message(page)).to_have_text(NO_ANSWER)
    panel_intact(page, "pending")
    page.unroute(RUN)
    page.click("#btn-run")
    expect(page.locator("#progress-panel")).to_have_attribute("data-status", "queued")
    expect(message(page)).to_have_text("")


def test_an_action_that_hangs_past_the_timeout_says_so(page, clip):
    """A server that never answers (a lost connection that no one closes) left the page
    waiting for ever, saying nothing, the button pressed looking as if nothing happened:
    HTMX has no timeout of its own. The page's is 20 s (made 4 s here: the button is looked
    at while the request is under way, after a click and a round trip or two that a loaded
    machine stretches past a second)."""
    vid = api_upload(page, clip)
    page.goto(f"/videos/{vid}")
    assert page.evaluate("() => htmx.config.timeout") == 20_000
    page.evaluate("() => { htmx.config.timeout = 4000; }")
    page.route(RUN, lambda route: None)  # taken, never answered
    page.click("#btn-run")
    # Meanwhile the button says it is at work, to the eye and to a screen reader.
    run = page.locator("#btn-run")
    expect(run).to_have_attribute("aria-busy", "true")
    assert run.evaluate("b => getComputedStyle(b).cursor") == "progress"
    expect(message(page)).to_have_text(NO_ANSWER, timeout=10_000)
    expect(run).not_to_have_attribute("aria-busy", "true")
    panel_intact(page, "pending")


def test_a_proxys_error_page_is_not_swapped_into_the_panel(page, clip, browser_log):
    """A proxy's 502 page (nginx's, in front of a web process that is restarting) went into
    the panel's place: a second "502 Bad Gateway" heading inside the page, the panel and
    its buttons gone until a reload. The panel stays; the message says what came back."""
    vid = api_upload(page, clip)
    page.goto(f"/videos/{vid}")
    browser_log.expect_http_error(f"/videos/{vid}/run")
    page.route(RUN, lambda route: route.fulfill(status=502, body=PROXY_PAGE,
                                                content_type="text/html"))
    page.click("#btn-run")
    expect(message(page)).to_have_text(
        "The server answered with an error (502 Bad Gateway): reload the page to see whether "
        "it was done, then try again.")
    panel_intact(page, "pending")


def test_polls_without_an_answer_say_the_page_may_be_out_of_date_until_they_get_one(
        page, clip, browser_log):
    """A run's page whose polls failed (the connection down) went on showing the last
    progress it had, its countdown running out to "taking longer than estimated", with no
    word that it had lost the server. It says so, with when it last heard from it, and
    stops saying it at the first answer."""
    vid = api_upload(page, clip)
    api_trigger(page, vid)  # no worker here: the task stays queued, and its panel polls
    page.goto(f"/videos/{vid}")
    expect(page.locator("#progress-panel")).to_have_attribute("hx-trigger", "every 1s")
    status = page.locator("#connection-status[role=status]")
    expect(status).to_have_text("")
    page.route("**/videos/*/panel*", lambda route: route.abort("internetdisconnected"))
    said = re.compile(r"^The server did not answer, so this page may be out of date: it last "
                      r"heard from it at \d\d?:\d\d:\d\d\b.*\. It keeps asking\.$")
    expect(status).to_have_text(said, timeout=30_000)
    # More failed polls, waited for (a fixed pause on a loaded machine may hold none): still
    # said once. Two more asked means one more at least has failed and been handled, as HTMX
    # asks again only once its last request of the panel is over.
    since = time.monotonic()
    wait_until(lambda: len(requests_so_far(page, browser_log, f"/videos/{vid}/panel",
                                           since)) >= 2,
               timeout=15, what="two more polls without an answer")
    expect(status.locator("p")).to_have_count(1)
    page.unroute("**/videos/*/panel*")
    expect(status).to_have_text("", timeout=30_000)
    panel_intact(page, "queued")
