"""The pages in a real browser while the job queue (Redis) really goes away and comes back:
a private redis-server (tests/test_redis_outage.py's) is killed and started again under an
open page. Runs on SQLite (the outage is Redis's)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from tests import browser, mediagen
from tests.browser import api_trigger, api_upload
from tests.test_redis_outage import outage_app, redis_server

chromium, browser_log, live_server, page = (
    browser.chromium, browser.browser_log, browser.live_server, browser.page)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]
__all__ = ["outage_app", "redis_server"]  # fixtures of this module too
SAID = "The job queue (Redis) is not answering"
WATCH_PATH = "/queue-banner"


@pytest.fixture
def app(outage_app):
    """The live server's app, on the private Redis that the test stops."""
    return outage_app


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return mediagen.make_video(tmp_path_factory.mktemp("outage") / "clip.mp4", duration=1.0,
                               size="160x120")


def next_watch(page: Page):
    """The page's next question to GET /queue-banner, as answered."""
    with page.expect_response(lambda r: urlsplit(r.url).path == WATCH_PATH,
                              timeout=20_000) as answer:
        pass
    return answer.value


@pytest.mark.parametrize("where", ["library", "video"])
def test_an_open_page_learns_of_an_outage_and_of_its_end(page, redis_server, clip, where):
    """The library (and a video page whose panel does not poll: no run active) loaded while
    Redis answered said nothing through an outage: only a banner shown at loading asked
    again. Every page asks now, every 10 s, and hears "nothing new" (204, nothing swapped,
    nothing rendered) until there is."""
    url = "/" if where == "library" else f"/videos/{api_upload(page, clip)}"
    page.goto(url)
    expect(page.locator("#queue-banner")).to_have_count(0)
    page.evaluate("() => { const s = document.querySelector('#queue-status');"
                  " if (s) s.dataset.since = 'loaded'; }")
    assert next_watch(page).status == 204  # Redis answers: nothing new

    redis_server.stop()
    banner = page.locator("#queue-banner")
    expect(banner).to_contain_text(SAID, timeout=20_000)
    expect(banner).to_contain_text("new runs cannot start until it is back")
    expect(banner).to_have_count(1)
    # Said in the live region that was on the page before: a screen reader hears it.
    status = page.locator("#queue-status")
    expect(status).to_have_attribute("role", "status")
    expect(status).to_have_attribute("data-since", "loaded")
    assert status.locator("#queue-banner").count() == 1
    assert next_watch(page).status == 204  # still down: nothing new, nothing swapped

    redis_server.start()
    expect(banner).to_have_count(0, timeout=15_000)
    expect(status).to_have_attribute("data-since", "loaded")
    assert next_watch(page).status == 204


def test_a_runs_page_says_an_outage_to_a_screen_reader_as_it_starts_and_ends(
        page, redis_server, clip):
    """The panel of an active run says an outage (and that no worker runs) in banners that
    come and go with its polls, every second a new panel: a screen reader heard none of it,
    only the run's status and quarters, said by the page's announcer. It says them too."""
    vid = api_upload(page, clip)
    api_trigger(page, vid)  # no worker: the run waits, and its panel polls
    page.goto(f"/videos/{vid}")
    expect(page.locator("#progress-panel #worker-banner")).to_have_count(1)
    announcer = page.locator("#progress-announcer[aria-live=polite]")
    expect(announcer).to_have_text("")  # the page as opened: nothing new to say
    redis_server.stop()
    expect(announcer).to_have_text(re.compile(
        r"^The job queue \(Redis\) is not answering: this run's steps that are already "
        r"running go on; the others wait until it is back\."), timeout=10_000)
    redis_server.start()
    expect(announcer).to_have_text(re.compile(
        r"^The job queue \(Redis\) answers again\. No worker is running: queued tasks will "
        r"wait until one starts"), timeout=10_000)
