"""Every page checked with axe-core (bundled by axe-playwright-python, nothing downloaded) in a
real browser, in the light and the dark colour scheme: no serious or critical finding on
the library (empty and full), an upload's outcome, the video page while a run is active,
completed and failed, search results, the selection's confirmation page and the error page.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from tests import browser, mediagen
from tests.browser import api_trigger, api_upload
from tests.conftest import run_worker
from webapp.db import session_factory
from webapp.services import progress

chromium, browser_log, live_server, page = (
    browser.chromium, browser.browser_log, browser.live_server, browser.page)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]
BLOCKING = ("serious", "critical")
AXE = Axe()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("a11y-media")
    return {
        "talk": mediagen.make_speech_video(root / "talk.mp4",
                                           "Hello and welcome. Please call me tomorrow."),
        "clip": mediagen.make_video(root / "clip.mp4", duration=2.0, size="160x120"),
    }


def findings(page: Page) -> list[dict]:
    """axe-core's violations on the page as it is now (every impact)."""
    result = AXE.run(page)
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result.response["violations"]]


def check(page: Page, what: str, report: dict) -> None:
    """axe-core in both colour schemes; the findings are kept in `report` by page."""
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.wait_for_timeout(50)  # restyled
        report[f"{what} ({scheme})"] = findings(page)
    page.emulate_media(color_scheme="light")


def assert_clean(report: dict) -> None:
    for name, found in report.items():
        print(f"{name}: {[(f['id'], f['impact']) for f in found] or 'no finding'}")
    blocking = {name: [f for f in found if f["impact"] in BLOCKING]
                for name, found in report.items()}
    blocking = {name: found for name, found in blocking.items() if found}
    assert not blocking, f"serious or critical axe-core findings: {blocking}"


def fail_a_run(settings, video_id: str, task_id: str) -> None:
    """The task's steps end as a real failure ends them, through the progress service."""
    with session_factory(settings.database_url)() as session:
        attempt = progress.start_subtask(session, task_id, "extract_audio")
        progress.finish_subtask(session, task_id, "extract_audio", "failed",
                                "The audio could not be extracted: the file is damaged.",
                                attempt=attempt, detail="[aac] invalid data")
        progress.finish_subtask(session, task_id, "transcribe", "cancelled",
                                "not run because extract_audio failed")
        for step in ("thumbnails", "transcode"):
            attempt = progress.start_subtask(session, task_id, step)
            progress.complete_subtask(session, task_id, step, attempt)


def test_every_page_has_no_serious_or_critical_finding(page, media, settings, browser_log,
                                                      chromium, live_server):
    report: dict[str, list] = {}
    page.goto("/")
    expect(page.locator("#video-list")).to_contain_text("No videos yet")
    check(page, "library, empty", report)
    # The check sees what it must: faint text and a nameless button, put there on purpose.
    page.evaluate("""() => {
        const p = document.createElement('p');
        p.textContent = 'faint';
        p.style.color = '#eeeeee';
        p.style.background = '#ffffff';
        const b = document.createElement('button');
        document.querySelector('main').append(p, b);
    }""")
    planted = {(f["id"], f["impact"]) for f in findings(page)}
    assert {("color-contrast", "serious"), ("button-name", "critical")} <= planted, planted
    page.reload()

    # An upload's outcome: one file refused, the form ready again.
    notes = Path(settings.media_root).parent / "notes.txt"
    notes.write_text("not a video\n" * 20)
    browser_log.expect_http_error("/videos")
    page.set_input_files("#upload-file", [str(notes)])
    page.click("#upload-submit")
    expect(page.locator("#upload-list li[data-state=failed]")).to_have_count(1)
    check(page, "upload refused", report)

    done = api_upload(page, media["talk"])
    api_trigger(page, done)
    run_worker()
    running = api_upload(page, media["clip"])
    running_task = api_trigger(page, running)
    with session_factory(settings.database_url)() as session:
        attempt = progress.start_subtask(session, running_task, "transcode")
        progress.report_progress(session, running_task, "transcode", attempt, 40.0)
    failed = api_upload(page, media["clip"])
    fail_a_run(settings, failed, api_trigger(page, failed))
    api_upload(page, media["clip"])  # never run

    page.goto("/")
    expect(page.locator("#video-list .video-row")).to_have_count(4)
    check(page, "library, full", report)
    page.goto("/?per_page=2&sort=name")
    check(page, "library, a page of two", report)

    page.goto(f"/videos/{running}")
    expect(page.locator("#progress-panel")).to_have_attribute("data-status", "running")
    check(page, "video, running", report)
    # Without JavaScript nothing polls: a notice above the panel says as of when it is true
    # and links to a fresh copy. axe-core itself needs scripts, so the notice is checked as
    # such a browser renders it: put into the page from its <noscript>.
    no_script = chromium.new_context(base_url=live_server, java_script_enabled=False)
    try:
        bare = no_script.new_page()
        bare.goto(f"/videos/{running}")
        expect(bare.locator("#no-live-progress")).to_be_visible()
        expect(bare.locator("#progress-transcode")).to_have_attribute("value", "40.0")
        with session_factory(settings.database_url)() as session:
            progress.report_progress(session, running_task, "transcode", attempt, 70.0)
        bare.get_by_role("link", name="Refresh").click()
        expect(bare.locator("#progress-transcode")).to_have_attribute("value", "70.0")
    finally:
        no_script.close()
    page.evaluate("""() => { const n = document.querySelector('noscript');
                             n.insertAdjacentHTML('afterend', n.textContent); }""")
    expect(page.locator("#no-live-progress")).to_be_visible()
    check(page, "video, running, without JavaScript", report)
    # The run fails while its page is open, a keyboard user on its Cancel button: a screen
    # reader hears that, and why; the focus stays in the panel, Cancel being disabled.
    page.focus("#btn-cancel")
    with session_factory(settings.database_url)() as session:
        progress.finish_subtask(session, running_task, "transcode", "failed",
                                "The preview could not be made.", attempt=attempt)
        for step in ("extract_audio", "transcribe", "thumbnails"):
            progress.finish_subtask(session, running_task, step, "cancelled", "not run")
    expect(page.locator("#progress-announcer")).to_have_text(re.compile(
        r"^Processing failed, \d+ percent\. Failed: transcode; not run: [a-z ,]*extract audio"))
    expect(page.locator("#btn-cancel")).to_be_disabled()
    expect(page.locator("#progress-title")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#btn-run")).to_be_focused()
    page.goto(f"/videos/{done}")
    expect(page.locator("#progress-panel")).to_have_attribute("data-status", "completed")
    expect(page.locator("#transcript .line").first).to_be_visible()
    check(page, "video, completed", report)
    # Search results: the words found are marked, and a matching line is a link (hovered or
    # focused it changes colour too).
    page.goto("/search?q=welcome")
    expect(page.locator("#search-results mark").first).to_be_visible()
    check(page, "search results", report)
    page.locator("#search-results .moment").first.focus()
    check(page, "search results, a line focused", report)
    page.goto(f"/videos/{failed}")
    expect(page.locator("#progress-panel")).to_have_attribute("data-status", "failed")
    check(page, "video, failed", report)

    # The selection's confirmation page (what a browser without scripts gets: the form
    # posts as it is, past the page's script, which would ask itself).
    page.goto("/")
    page.check(f"#select-{done}")
    page.evaluate("""() => {
        const form = document.querySelector('#bulk-form');
        const action = Object.assign(document.createElement('input'),
                                     {type: 'hidden', name: 'action', value: 'delete'});
        form.appendChild(action);
        form.submit();  // no submit event: as without the script
    }""")
    expect(page.locator("#confirm-yes")).to_have_text("Delete 1 video")
    check(page, "confirmation", report)

    missing = f"/videos/{uuid.uuid4()}"
    browser_log.expect_http_error(missing)
    page.goto(missing)
    expect(page.locator("h1")).to_contain_text("404")
    check(page, "error page", report)
    assert_clean(report)
