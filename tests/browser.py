"""Browser test harness: the app on a live port, a real worker, Debian's Chromium via Playwright.

A test module makes the fixtures its own by assigning them to module names. Everything is
served from 127.0.0.1; Chromium is told to resolve every other host to nothing, and
`BrowserLog` records every request so tests can prove no page reached anywhere else.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright
from werkzeug.serving import make_server

from tests.helpers import wait_for
from webapp.config import STEPS

LOCAL_HOST = "127.0.0.1"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    f"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE {LOCAL_HOST}",
]
VIEWPORT = {"width": 1280, "height": 900}
NETWORK_SCHEMES = ("http", "https", "ws", "wss", "ftp")
# The browser itself cancels requests when a page is left or a <video> seeks; not a defect.
BENIGN_FAILURES = ("net::ERR_ABORTED",)
FINAL_STATUSES = ("completed", "failed", "cancelled")


@dataclass
class SeenRequest:
    at: float  # time.monotonic()
    method: str
    url: str
    resource_type: str


@dataclass
class BrowserLog:
    """What every page of a browser session did: console errors, page errors, requests."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    requests: list[SeenRequest] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)  # URLs of documents loaded
    # Paths where a test provokes an HTTP error on purpose (e.g. a 409): Chromium logs
    # "Failed to load resource: ... 409" for them, which is the test's doing, not the page's.
    expected_http_errors: set[str] = field(default_factory=set)

    def attach(self, page: Page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.page_errors.append(f"{page.url}: {exc}"))
        page.on("requestfailed", self._on_failed)
        page.on("request", self._on_request)

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url") or "?"
        if (msg.text.startswith("Failed to load resource: the server responded with a status")
                and urlsplit(url).path in self.expected_http_errors):
            return
        self.console_errors.append(f"{msg.text} (at {url})")

    def expect_http_error(self, path: str) -> None:
        """The test is about to provoke an HTTP error at `path`: do not count it."""
        self.expected_http_errors.add(path)

    def _on_failed(self, req: Request) -> None:
        self.failed_requests.append(f"{req.method} {req.url}: {req.failure}")

    def _on_request(self, req: Request) -> None:
        self.requests.append(SeenRequest(time.monotonic(), req.method, req.url,
                                         req.resource_type))
        if req.resource_type == "document":
            self.pages.append(req.url)

    # -- questions tests ask -------------------------------------------------------------
    def foreign_requests(self) -> list[str]:
        """Requests to any host but 127.0.0.1 (data: and blob: URLs never leave the page)."""
        foreign = []
        for r in self.requests:
            parts = urlsplit(r.url)
            local = parts.scheme in ("data", "blob", "about") or (
                parts.scheme in NETWORK_SCHEMES and parts.hostname == LOCAL_HOST)
            if not local:
                foreign.append(r.url)
        return foreign

    def real_failures(self) -> list[str]:
        return [f for f in self.failed_requests if not f.endswith(BENIGN_FAILURES)]

    def requests_to(self, path: str, since: float = 0.0) -> list[SeenRequest]:
        """Requests whose path (without query) is `path`, made at or after `since`."""
        return [r for r in self.requests
                if r.at >= since and urlsplit(r.url).path == path]


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser_log() -> BrowserLog:
    return BrowserLog()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless Chromium (Debian's package, never Playwright's download) per module."""
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: run scripts/system-deps.sh chromium (as root)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def live_server(app) -> Iterator[str]:
    """The app (JSON API and UI) on a free port of 127.0.0.1; yields its base URL."""
    server = make_server(LOCAL_HOST, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield f"http://{LOCAL_HOST}:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def page(chromium, browser_log, live_server) -> Iterator[Page]:
    """A fresh browser context and page on the live server, recorded into browser_log."""
    context = chromium.new_context(base_url=live_server, viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    browser_log.attach(pg)
    yield pg
    context.close()


# -- helpers -------------------------------------------------------------------------------

def api_upload(page: Page, path: Path, mime: str = "video/mp4") -> str:
    """Upload through the JSON API (not the form); returns the video id."""
    resp = page.request.post("/api/v1/videos", multipart={
        "file": {"name": path.name, "mimeType": mime, "buffer": path.read_bytes()}})
    assert resp.status == 201, resp.text()
    return resp.json()["id"]


def api_trigger(page: Page, video_id: str, mode: str = "run_sync") -> str:
    resp = page.request.post(f"/api/v1/videos/{video_id}/{mode}")
    assert resp.status == 202, resp.text()
    return resp.json()["task_id"]


def api_progress(page: Page, video_id: str) -> dict:
    resp = page.request.get(f"/api/v1/videos/{video_id}/reprocess")
    assert resp.status == 200, resp.text()
    return resp.json()


def wait_until(predicate: Callable[[], object], timeout: float = 60, interval: float = 0.1,
               what: str = "condition"):
    return wait_for(predicate, timeout=timeout, interval=interval, what=what)


def requests_so_far(page: Page, log: BrowserLog, path: str,
                    since: float = 0.0) -> list[SeenRequest]:
    """log.requests_to(path, since) with every request the page has made until now in it.

    Playwright hands its events (requests, dialogs, console messages) to their handlers only
    while one of its own calls runs: a check that sleeps between looks at the log (always,
    wait_until) saw the same list for its whole window, and a poll made meanwhile was never
    seen. A round trip to the page first delivers what came before its answer.
    """
    page.evaluate("() => 0")
    return log.requests_to(path, since)


_PANEL_JS = """() => {
  const panel = document.querySelector('#progress-panel');
  const bar = document.querySelector('#overall-progress');
  const pct = document.querySelector('#overall-percent');
  const eta = document.querySelector('#eta');
  return {
    status: panel ? panel.getAttribute('data-status') : null,
    trigger: panel ? panel.getAttribute('hx-trigger') : null,
    get: panel ? panel.getAttribute('hx-get') : null,
    value: bar ? bar.getAttribute('value') : null,
    max: bar ? bar.getAttribute('max') : null,
    percent: pct ? pct.textContent.trim() : null,
    eta: eta ? eta.textContent.trim() : null,
  };
}"""


def panel_state(page: Page) -> dict:
    """What the progress panel shows right now (attributes as strings)."""
    return page.evaluate(_PANEL_JS)


def sample_panel(page: Page, until: tuple[str, ...] = FINAL_STATUSES, timeout: float = 120,
                 interval: float = 0.1) -> list[dict]:
    """Read the panel every `interval` s until its data-status is one of `until`."""
    samples = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = panel_state(page)
        state["at"] = time.monotonic()
        samples.append(state)
        if state["status"] in until:
            return samples
        time.sleep(interval)
    raise AssertionError(f"panel never reached {until} in {timeout} s; last {samples[-1:]}")


def step_states(page: Page) -> dict[str, dict]:
    """Every step's bar value and status text as the panel shows them."""
    return page.evaluate("""(steps) => Object.fromEntries(steps.map(s => {
        const bar = document.querySelector('#progress-' + s);
        const txt = document.querySelector('#status-' + s);
        return [s, {value: bar ? bar.getAttribute('value') : null,
                    status: txt ? txt.textContent.trim() : null}];
    }))""", list(STEPS))


def enabled(page: Page, selector: str) -> bool | None:
    """True/False for a button's state, None when it is not on the page."""
    return page.evaluate("""(sel) => {
        const el = document.querySelector(sel);
        return el ? !el.disabled && !el.hasAttribute('disabled') : null;
    }""", selector)


def button_states(page: Page) -> dict[str, bool | None]:
    return {b: enabled(page, f"#btn-{b}") for b in ("run", "reprocess", "force", "cancel",
                                                    "delete")}


def player_state(page: Page) -> dict:
    return page.evaluate("""() => {
        const p = document.querySelector('#player');
        if (!p) return null;
        return {tag: p.tagName.toLowerCase(), time: p.currentTime, paused: p.paused,
                readyState: p.readyState, error: p.error && p.error.message,
                duration: p.duration, src: p.currentSrc};
    }""")


def screenshot_dir(tmp_path: Path) -> Path:
    """docs/screenshots when VIDPIPE_SCREENSHOTS=1 (to refresh the README's pictures)."""
    if os.environ.get("VIDPIPE_SCREENSHOTS") == "1":
        from webapp.config import PROJECT_ROOT

        target = PROJECT_ROOT / "docs" / "screenshots"
    else:
        target = tmp_path / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    return target
