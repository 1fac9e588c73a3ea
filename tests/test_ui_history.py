"""The pages in a real browser through its history: Back and Forward after an action show
the state as it is, not the copy the browser kept. Runs on SQLite."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests import browser, mediagen
from tests.browser import api_trigger, api_upload

chromium, browser_log, live_server, page = (
    browser.chromium, browser.browser_log, browser.live_server, browser.page)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return mediagen.make_video(tmp_path_factory.mktemp("history") / "clip.mp4", duration=1.0,
                               size="160x120")


def test_back_to_a_page_shows_it_as_it_is_now(page, clip):
    """Back (or Forward) to a video's page showed the copy the browser kept from the first
    visit: "Not processed yet: Run starts it." beside a run started since, its panel not
    polling; the library showed rows as they were. Pages are not stored (no-store): the
    browser asks for them again."""
    vid = api_upload(page, clip)
    page.goto("/")
    page.click(f'.video-row[data-video-id="{vid}"] a.name')
    expect(page.locator("#progress-panel")).to_have_attribute("data-status", "pending")
    api_trigger(page, vid)  # from elsewhere (the API, another tab): no worker, it waits
    page.click("header.site a.brand")
    row = page.locator(f'.video-row[data-video-id="{vid}"]')
    expect(row).to_have_attribute("data-status", "queued")
    page.go_back()
    expect(page.locator("#progress-panel")).to_have_attribute("data-status", "queued")
    expect(page.locator("#progress-panel")).to_have_attribute("hx-trigger", "every 1s")
    expect(page.locator("#not-run")).to_have_count(0)
    page.request.post(f"/api/v1/videos/{vid}/cancel")
    page.go_forward()
    expect(row).to_have_attribute("data-status", "cancelled")
