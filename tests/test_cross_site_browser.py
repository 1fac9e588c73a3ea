"""Cross-site attacks from a real browser (Debian's Chromium via Playwright, tests/browser.py):
a page on another port of this host that posts to the service the way any web page can, and
a page whose name was rebound to 127.0.0.1 (DNS rebinding).

What the server received is recorded in front of everything, so the tests show that the
browser really sent each attack and what answered it. Runs once, on SQLite.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import browser, mediagen
from tests.browser import CHROMIUM_ARGS, LOCAL_HOST

chromium, live_server = browser.chromium, browser.live_server
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]
REBOUND = "rebound.test"

# What any page may make a browser send to another origin without asking it first
# (no-cors "simple" requests), plus a DELETE (which needs a preflight) and a read.
ATTACK_JS = """async ({target, idle, busy, clip}) => {
  const results = {};
  const send = async (name, url, init) => {
    try {
      const r = await fetch(url, init);
      results[name] = r.type === 'opaque' ? 'opaque' : r.status + ' ' + await r.text();
    } catch (e) { results[name] = 'error: ' + e.message; }
  };
  const bytes = Uint8Array.from(atob(clip), c => c.charCodeAt(0));
  const form = new FormData();
  form.append('file', new Blob([bytes], {type: 'video/mp4'}), 'planted.mp4');
  const simple = {method: 'POST', mode: 'no-cors', credentials: 'include'};
  await send('upload', target + '/api/v1/videos', {...simple, body: form});
  await send('force', target + '/api/v1/videos/' + busy + '/reprocess?force=true', simple);
  await send('cancel', target + '/api/v1/videos/' + busy + '/cancel', simple);
  await send('run', target + '/api/v1/videos/' + idle + '/run_sync', simple);
  await send('delete', target + '/api/v1/videos/' + idle, {method: 'DELETE'});
  await send('read', target + '/api/v1/videos', {});
  await send('rq', target + '/rq/0/data/queues.json', {});
  return results;
}"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return mediagen.make_video(tmp_path_factory.mktemp("m") / "clip.mp4", duration=1.0)


@pytest.fixture
def received(app) -> Iterator[list[dict]]:
    """Every request the app received (in front of the Host check): method, path, Host,
    Origin, Sec-Fetch-Site and the status it got."""
    seen: list[dict] = []
    inner = app.wsgi_app

    def recording(environ, start_response):
        def start(status, headers, exc_info=None):
            seen.append({"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                         "host": environ.get("HTTP_HOST"), "origin": environ.get("HTTP_ORIGIN"),
                         "site": environ.get("HTTP_SEC_FETCH_SITE"),
                         "status": int(status.split()[0])})
            return start_response(status, headers, exc_info)
        return inner(environ, start)

    app.wsgi_app = recording
    yield seen
    app.wsgi_app = inner


@pytest.fixture
def attacker() -> Iterator[str]:
    """Another web server on 127.0.0.1 (another port): the attacker's page, a blank one."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = b"<!doctype html><title>cute cats</title><p>nothing to see"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((LOCAL_HOST, 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOCAL_HOST}:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def make_videos(app, clip: Path) -> tuple[str, str]:
    """An idle video and one whose task is queued, made through the API (no worker runs)."""
    client = app.test_client()
    ids = []
    for _ in range(2):
        with open(clip, "rb") as fh:
            resp = client.post("/api/v1/videos", data={"file": (fh, clip.name)},
                               content_type="multipart/form-data")
        assert resp.status_code == 201, resp.get_json()
        ids.append(resp.get_json()["id"])
    assert client.post(f"/api/v1/videos/{ids[1]}/run_sync").status_code == 202
    return ids[0], ids[1]


def state(app) -> dict[str, tuple[str | None, str]]:
    """Every video's latest task and its status."""
    client = app.test_client()
    answer = {}
    for video in client.get("/api/v1/videos").get_json():
        body = client.get(f"/api/v1/videos/{video['id']}/reprocess").get_json()
        answer[video["id"]] = (body["task_id"], body["status"])
    return answer


def attack(page, target: str, idle: str, busy: str, clip: Path) -> dict[str, str]:
    return page.evaluate(ATTACK_JS, {"target": target, "idle": idle, "busy": busy,
                                     "clip": base64.b64encode(clip.read_bytes()).decode()})


def test_a_page_on_another_port_changes_nothing(app, chromium, live_server, attacker,
                                                received, clip):
    """localhost:3000 -> :5000, the issue's case: the browser sends the simple requests
    (with the user's cookies: another port is the same site), every one is refused with 403
    by the service itself, and the page can read nothing."""
    idle, busy = make_videos(app, clip)
    before = state(app)
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(live_server + "/")  # the user has the UI open: its session cookie exists
        page.goto(attacker + "/")
        results = attack(page, live_server, idle, busy, clip)
    finally:
        context.close()
    assert state(app) == before, results
    for name in ("upload", "force", "cancel", "run"):
        assert results[name] == "opaque", (name, results)  # sent; the answer is unreadable
    assert results["read"].startswith("error") and results["rq"].startswith("error"), results
    assert results["delete"].startswith("error"), results  # the preflight got no CORS answer
    sent = {(r["method"], r["path"]): r for r in received if r["origin"] == attacker}
    for method, path in (("POST", "/api/v1/videos"),
                         ("POST", f"/api/v1/videos/{busy}/reprocess"),
                         ("POST", f"/api/v1/videos/{busy}/cancel"),
                         ("POST", f"/api/v1/videos/{idle}/run_sync")):
        request = sent[(method, path)]
        assert request["status"] == 403 and request["site"] == "same-site", request
    assert ("DELETE", f"/api/v1/videos/{idle}") not in sent  # the browser never sent it
    assert sent[("OPTIONS", f"/api/v1/videos/{idle}")]["status"] == 204


def test_a_page_under_a_rebound_name_reads_and_changes_nothing(app, chromium, live_server,
                                                               received, clip):
    """DNS rebinding: the attacker's page was served under rebound.test:<port>, then the
    name was pointed at 127.0.0.1, so to the browser the service is that page's own origin
    (every request allowed, every answer readable). Each request says `Host: rebound.test`
    and gets 400."""
    idle, busy = make_videos(app, clip)
    before = state(app)
    port = live_server.rsplit(":", 1)[1]
    origin = f"http://{REBOUND}:{port}"
    args = [a for a in CHROMIUM_ARGS if not a.startswith("--host-resolver-rules")] + [
        f"--host-resolver-rules=MAP {REBOUND} {LOCAL_HOST}, MAP * ~NOTFOUND, "
        f"EXCLUDE {LOCAL_HOST}",
        # Chromium alone blocks a page it got from a route (an unknown, "public" address)
        # from reaching loopback (Private Network Access); Firefox and Safari do not, so the
        # service must stand without it.
        "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
        "PrivateNetworkAccessRespectPreflightResults,PrivateNetworkAccessSendPreflights",
    ]
    rebinding = chromium.browser_type.launch(executable_path=browser.CHROMIUM, args=args)
    try:
        page = rebinding.new_page()
        # The attacker's document, as their own server sent it before the rebinding.
        page.route(f"{origin}/cats", lambda route: route.fulfill(
            content_type="text/html", body="<!doctype html><title>cute cats</title>"))
        page.goto(f"{origin}/cats")
        results = attack(page, origin, idle, busy, clip)
        response = page.goto(f"{origin}/")
        shown = (response.status, page.text_content("body"))
    finally:
        rebinding.close()
    assert state(app) == before, results
    for name in ("upload", "force", "cancel", "run", "delete", "read", "rq"):
        status, _, text = results[name].partition(" ")
        assert status == "400", (name, results[name])
        assert "ALLOWED_HOSTS" in json.loads(text)["message"]
        assert idle not in text and busy not in text
    assert shown[0] == 400 and "ALLOWED_HOSTS" in shown[1]
    hosts = {r["host"] for r in received if r["host"] and REBOUND in r["host"]}
    assert hosts == {f"{REBOUND}:{port}"}
    assert all(r["status"] == 400 for r in received if r["host"] in hosts)
