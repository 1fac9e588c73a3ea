"""Cross-site attacks, tried for real: writes from pages of other origins, DNS rebinding (a
Host that is not ours), and both checks behind a TLS proxy (TRUSTED_PROXIES, ProxyFix).

The Flask test client covers the breadth (every write, every way a browser marks a foreign
request, with and without API_TOKEN, CORS_ORIGINS); a real gunicorn started with the
project's config covers what sits in front of Flask (the Host check, ProxyFix, gunicorn's
own forwarded-header handling, the progress-poll layer). tests/test_cross_site_browser.py
attacks from a real Chromium.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from tests import mediagen
from tests.helpers import multipart
from tests.test_concurrency import web_server
from tests.test_polling import flask_requests
from tests.test_security import PASSWORD, TOKEN, basic, bearer, make_app
from webapp.config import Settings
from webapp.hosts import normalize_host
from webapp.origins import configured_origins

OWN = "http://localhost"  # the test client's origin (Host: localhost)
# Every way a browser says a request comes from another page than this service's own.
FOREIGN = {
    "another site": {"Origin": "http://evil.example"},
    "another port": {"Origin": "http://localhost:3000"},
    "another scheme": {"Origin": "https://localhost"},
    "opaque origin": {"Origin": "null"},
    "cross-site": {"Sec-Fetch-Site": "cross-site"},
    "same-site": {"Sec-Fetch-Site": "same-site"},
    "referer only": {"Referer": "http://evil.example/page.html"},
    "own origin, cross-site": {"Origin": OWN, "Sec-Fetch-Site": "cross-site"},
}
HX = {"HX-Request": "true"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return mediagen.make_video(tmp_path_factory.mktemp("m") / "clip.mp4", duration=1.0)


def files_of(settings: Settings) -> list[str]:
    root = settings.media_root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def state_of(client, settings: Settings, headers: dict | None = None) -> dict:
    """What a user could see changed: the videos, each one's task and status, the files."""
    videos = client.get("/api/v1/videos?page_size=100", headers=headers or {}).get_json()
    tasks = {}
    for video in videos:
        body = client.get(f"/api/v1/videos/{video['id']}/reprocess",
                          headers=headers or {}).get_json()
        tasks[video["id"]] = (body["task_id"], body["status"])
    return {"tasks": tasks, "files": files_of(settings)}


def upload_body(clip: Path) -> tuple[bytes, dict]:
    return multipart(clip.read_bytes(), clip.name)


def csrf_token(client, headers: dict | None = None) -> str:
    page = BeautifulSoup(client.get("/", headers=headers or {}).get_data(as_text=True),
                         "html.parser")
    return page.select_one('meta[name="csrf-token"]')["content"]


def assert_refused(resp, what) -> None:
    assert resp.status_code == 403, (what, resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.mimetype == "application/json", what
    body = resp.get_json()
    assert body["code"] == 403 and body["status"] == "Forbidden", what
    assert "cross-origin request refused" in body["message"], what
    assert "Access-Control-Allow-Origin" not in resp.headers, what


def setup_videos(client, clip: Path, auth: dict) -> tuple[str, str]:
    """An idle video and one whose task is queued (no worker runs)."""
    ids = []
    for _ in range(2):
        body, ctype = upload_body(clip)
        resp = client.post("/api/v1/videos", data=body, headers={**auth, **ctype})
        assert resp.status_code == 201, resp.get_json()
        ids.append(resp.get_json()["id"])
    idle, busy = ids
    assert client.post(f"/api/v1/videos/{busy}/run_sync", headers=auth).status_code == 202
    return idle, busy


def writes(idle: str, busy: str, queue: str) -> list[tuple[str, str, str]]:
    """(method, path, body kind) of every state-changing request: API, UI and /rq."""
    return [
        ("POST", "/api/v1/videos", "upload"),
        ("POST", f"/api/v1/videos/{idle}/run_sync", ""),
        ("POST", f"/api/v1/videos/{idle}/reprocess", ""),
        ("POST", f"/api/v1/videos/{busy}/reprocess?force=true", ""),
        ("POST", f"/api/v1/videos/{busy}/cancel", ""),
        ("DELETE", f"/api/v1/videos/{idle}", ""),
        ("POST", "/videos", "upload"),
        ("POST", f"/videos/{idle}/run", ""),
        ("POST", f"/videos/{busy}/force", ""),
        ("POST", f"/videos/{busy}/cancel", ""),
        ("POST", f"/videos/{idle}/delete", ""),
        ("POST", f"/rq/queue/{queue}/queued/empty", ""),
        ("POST", f"/rq/queue/{queue}/compact", ""),
        ("GET", f"/rq/requeue/{queue}", ""),  # a GET that changes something
    ]


# -- the Origin check (test client) ------------------------------------------------------

@pytest.mark.parametrize("secured", [False, True], ids=["open", "API_TOKEN+ADMIN_PASSWORD"])
def test_cross_origin_writes_are_refused_and_change_nothing(settings, clip, redis_conn,
                                                            secured):
    """Each write, each foreign marking: 403 JSON, also with valid credentials and a valid
    CSRF token (as if they had leaked), and nothing changed."""
    secrets = {"api_token": TOKEN, "admin_password": PASSWORD} if secured else {}
    app = make_app(settings, **secrets)
    client = app.test_client()
    api_auth = bearer() if secured else {}
    ui_auth = basic() if secured else {}
    idle, busy = setup_videos(client, clip, api_auth)
    token = csrf_token(client, ui_auth)
    before = state_of(client, settings, api_auth)
    queued = redis_conn.llen(f"rq:queue:{settings.queue_name}")
    assert queued > 0
    for method, path, kind in writes(idle, busy, settings.queue_name):
        auth = api_auth if path.startswith("/api/") else ui_auth
        for name, foreign in FOREIGN.items():
            headers = {**auth, **foreign, "X-CSRFToken": token}
            data = None
            if kind == "upload":
                data, ctype = upload_body(clip)
                headers.update(ctype)
            resp = client.open(path, method=method, data=data, headers=headers)
            assert_refused(resp, (method, path, name))
    assert state_of(client, settings, api_auth) == before
    assert redis_conn.llen(f"rq:queue:{settings.queue_name}") == queued


def test_the_spec_documents_the_403_of_every_write(client, clip):
    """Every state-changing operation of the API answers 403 to a request a browser marks as
    another origin's (a client that forwards a page's Origin or Referer gets it too), but the
    description listed it with none: a generated client had no such answer, and the
    schemathesis checks called it undocumented. Listed with each write, and only there
    (reads answer such requests)."""
    from tests.test_schemathesis import conforms

    spec = client.get("/api/openapi.json").get_json()
    found = [(path, method, op) for path, item in spec["paths"].items()
             for method, op in item.items() if method != "parameters"]
    assert len(found) == 12
    for path, method, op in found:
        assert ("403" in op["responses"]) == (method not in ("get", "head")), (method, path)
    idle, busy = setup_videos(client, clip, {})
    video = "/api/v1/videos/{video_id}"
    for method, path, template in (
            ("POST", "/api/v1/videos", "/api/v1/videos"),
            ("POST", f"/api/v1/videos/{idle}/run_sync", f"{video}/run_sync"),
            ("POST", f"/api/v1/videos/{idle}/reprocess", f"{video}/reprocess"),
            ("POST", f"/api/v1/videos/{busy}/cancel", f"{video}/cancel"),
            ("DELETE", f"/api/v1/videos/{idle}", video)):
        data, headers = upload_body(clip) if method == "POST" and path.endswith("videos") \
            else (None, {})
        for foreign in FOREIGN.values():
            resp = client.open(path, method=method, data=data, headers={**headers, **foreign})
            assert_refused(conforms(resp, template, method, 403), (method, path))


def test_same_origin_and_non_browser_writes_work(client, settings, clip):
    """curl (no Origin), the UI's own pages, and a browser's own navigation pass."""
    idle, busy = setup_videos(client, clip, {})
    body, ctype = upload_body(clip)
    own = {"Origin": OWN, "Sec-Fetch-Site": "same-origin"}
    assert client.post("/api/v1/videos", data=body, headers=ctype).status_code == 201
    body, ctype = upload_body(clip)
    assert client.post("/api/v1/videos", data=body, headers={**own, **ctype}).status_code == 201
    assert client.post(f"/api/v1/videos/{busy}/cancel", headers=own).status_code == 200
    token = csrf_token(client)
    ui = {"X-CSRFToken": token, **HX}
    for headers in ({"Origin": OWN}, {"Referer": f"{OWN}/videos/{idle}"},
                    {"Sec-Fetch-Site": "same-origin", "Origin": OWN},
                    {"Sec-Fetch-Site": "none"}, {}):
        resp = client.post(f"/videos/{idle}/run", headers={**ui, **headers})
        assert resp.status_code == 200, (headers, resp.get_data(as_text=True)[:300])
        assert client.post(f"/videos/{idle}/cancel", headers={**ui, **headers}
                           ).status_code == 200
    resp = client.post(f"/videos/{idle}/delete", headers={**ui, **own})
    assert resp.status_code == 204
    assert client.delete(f"/api/v1/videos/{busy}", headers=own).status_code == 204
    assert client.get(f"/api/v1/videos/{idle}").status_code == 404


def test_cross_origin_reads_answer_but_grant_no_cors(client, clip):
    """A foreign page may send GETs (a browser sends them anyway), but with no CORS header
    its script cannot read the answer."""
    for path in ("/api/v1/videos", "/", "/api/openapi.json"):
        resp = client.get(path, headers=FOREIGN["another site"])
        assert resp.status_code == 200, path
        assert "Access-Control-Allow-Origin" not in resp.headers, path
    preflight = client.options("/api/v1/videos", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "DELETE"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


# -- CORS_ORIGINS ------------------------------------------------------------------------

ALLOWED = "http://localhost:3000"


def test_cors_pages_may_ask_for_ranges_and_read_what_comes_back(settings, clip):
    """A page of an allowed origin resumes or seeks in an artifact like any client: its
    preflight for Range and the conditional headers is allowed, and it may read the answer's
    Content-Range, Accept-Ranges and Content-Disposition (and a 429's Retry-After)."""
    app = make_app(settings, api_token=TOKEN, cors_origins=(ALLOWED,))
    client = app.test_client()
    resp = client.options("/api/v1/videos/x/artifacts/preview.mp4", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, range, if-range, if-match, "
                                          "if-modified-since, if-unmodified-since"})
    assert resp.status_code == 204
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"range", "if-range", "if-match", "if-modified-since",
            "if-unmodified-since"} <= allowed, allowed
    cors = {**bearer(), "Origin": ALLOWED}
    body, ctype = upload_body(clip)
    vid = client.post("/api/v1/videos", data=body, headers={**cors, **ctype}).get_json()["id"]
    resp = client.get(f"/api/v1/videos/{vid}", headers=cors)  # every answer lists the same
    assert resp.status_code == 200
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Content-Range", "Accept-Ranges", "Content-Disposition", "Retry-After"} <= exposed


def test_cors_origins_may_use_the_api_and_nothing_else(settings, clip):
    app = make_app(settings, api_token=TOKEN, cors_origins=(
        ALLOWED, "HTTPS://App.Example.com:443/"))
    client = app.test_client()
    assert app.extensions["vidpipe_origins"] == (ALLOWED, "https://app.example.com")
    # Preflights are answered (not 401: a preflight carries no credentials).
    for origin, method in ((ALLOWED, "POST"), ("https://app.example.com", "DELETE")):
        resp = client.options("/api/v1/videos", headers={
            "Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert resp.status_code == 204, resp.get_data(as_text=True)[:300]
        assert resp.headers["Access-Control-Allow-Origin"] == origin
        assert method in resp.headers["Access-Control-Allow-Methods"]
        assert {"authorization", "content-type"} <= {
            h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
        assert "Access-Control-Allow-Credentials" not in resp.headers
    # The real requests: answered with the CORS headers, the useful ones exposed.
    cors = {**bearer(), "Origin": ALLOWED, "Sec-Fetch-Site": "same-site"}
    body, ctype = upload_body(clip)
    resp = client.post("/api/v1/videos", data=body, headers={**cors, **ctype})
    assert resp.status_code == 201 and resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    vid = resp.get_json()["id"]
    resp = client.post(f"/api/v1/videos/{vid}/run_sync", headers=cors)
    assert resp.status_code == 202
    assert "Location" in resp.headers["Access-Control-Expose-Headers"]
    # Polls: each origin gets its own CORS answer, also from the poll layer's copies.
    url = f"/api/v1/videos/{vid}/reprocess"
    for origin in (ALLOWED, "https://app.example.com", ALLOWED):
        resp = client.get(url, headers={**bearer(), "Origin": origin})
        assert resp.status_code == 200 and resp.headers["Access-Control-Allow-Origin"] == origin
        assert "ETag" in resp.headers["Access-Control-Expose-Headers"]
        again = client.get(url, headers={**bearer(), "Origin": origin,
                                         "If-None-Match": resp.headers["ETag"]})
        assert again.status_code == 304
        assert again.headers["Access-Control-Allow-Origin"] == origin
    evil = client.get(url, headers={**bearer(), "Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in evil.headers
    # Other origins still get 403; the UI and /rq are not opened by CORS_ORIGINS.
    body, ctype = upload_body(clip)
    assert_refused(client.post("/api/v1/videos", data=body, headers={
        **bearer(), **ctype, "Origin": "http://localhost:3001"}), "other port")
    assert_refused(client.post(f"/videos/{vid}/cancel", headers={"Origin": ALLOWED}), "ui")
    assert_refused(client.post(f"/rq/queue/{settings.queue_name}/compact",
                               headers={"Origin": ALLOWED}), "rq")
    resp = client.post(f"/api/v1/videos/{vid}/cancel", headers=cors)
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    assert client.delete(f"/api/v1/videos/{vid}", headers=cors).status_code == 204


@pytest.mark.parametrize("entry", ["*", "null", "localhost:3000", "http://x.example/path",
                                   "ftp://x.example", "http://", "http://user@x.example"])
def test_cors_origins_must_be_origins(entry):
    with pytest.raises(ValueError, match="CORS_ORIGINS: .* is not an origin"):
        configured_origins((entry,))


# -- trusted hosts (test client) ---------------------------------------------------------

REBOUND = ["evil.example", "evil.example:5000", "localhost.evil.example",
           "127.0.0.1.evil.example:80", "127.0.0.2", "[::2]:5000", "0.0.0.0"]


def test_foreign_hosts_are_refused_before_anything_runs(app, client, clip):
    body, ctype = upload_body(clip)
    vid = client.post("/api/v1/videos", data=body, headers=ctype).get_json()["id"]
    poll = f"/api/v1/videos/{vid}/reprocess"
    etag = client.get(poll).headers["ETag"]
    gets = ["/api/v1/videos", f"/api/v1/videos/{vid}", poll, "/", f"/videos/{vid}", "/rq/",
            "/static/css/app.css", "/favicon.ico", "/healthz", "/api/openapi.json"]
    for host in REBOUND:
        with flask_requests(app) as seen:
            for path in gets:
                for extra in ({}, {"If-None-Match": etag}):
                    resp = client.get(path, headers={"Host": host, **extra})
                    assert resp.status_code == 400, (host, path, resp.status_code)
                    assert resp.get_json()["code"] == 400
                    assert "ALLOWED_HOSTS" in resp.get_json()["message"]
            body, ctype = upload_body(clip)
            resp = client.post("/api/v1/videos", data=body, headers={"Host": host, **ctype})
            assert resp.status_code == 400
            assert client.delete(f"/api/v1/videos/{vid}", headers={"Host": host}
                                 ).status_code == 400
        assert seen == [], f"a request for {host} reached Flask"
    assert [v["id"] for v in client.get("/api/v1/videos").get_json()] == [vid]
    for host in ("localhost", "LOCALHOST:8080", "127.0.0.1:1", "[::1]", "[::1]:5000",
                 "127.0.0.1"):
        assert client.get("/api/v1/videos", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_add_names_at_any_port(settings):
    app = make_app(settings, allowed_hosts=(
        "Videos.Example.com", ".corp.example", "192.0.2.10", "2001:DB8::1", "bücher.example"))
    client = app.test_client()
    good = ["videos.example.com", "videos.example.com:8443", "corp.example",
            "a.b.corp.example:1", "192.0.2.10", "[2001:db8::1]:5000", "localhost",
            "xn--bcher-kva.example"]
    bad = ["evil.videos.example.com", "corp.example.evil", "xcorp.example", "192.0.2.11",
           "[2001:db8::2]", "videos.example.com.evil.example"]
    for host in good:
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in bad:
        assert client.get("/healthz", headers={"Host": host}).status_code == 400, host


@pytest.mark.parametrize("entry", ["https://videos.example.com", "videos.example.com:443",
                                   "a/b", ""])
def test_allowed_hosts_are_names(entry):
    with pytest.raises(ValueError, match="ALLOWED_HOSTS"):
        normalize_host(entry)


def test_settings_read_the_cross_site_variables(monkeypatch):
    monkeypatch.setenv("ALLOWED_HOSTS", " videos.example.com, 192.0.2.10\n.corp.example ")
    monkeypatch.setenv("CORS_ORIGINS", "http://localhost:3000,https://app.example.com")
    monkeypatch.setenv("TRUSTED_PROXIES", "2")
    s = Settings.from_env()
    assert s.allowed_hosts == ("videos.example.com", "192.0.2.10", ".corp.example")
    assert s.cors_origins == ("http://localhost:3000", "https://app.example.com")
    assert s.trusted_proxies == 2
    for name in ("ALLOWED_HOSTS", "CORS_ORIGINS", "TRUSTED_PROXIES"):
        monkeypatch.delenv(name)
    s = Settings.from_env()
    assert (s.allowed_hosts, s.cors_origins, s.trusted_proxies) == ((), (), 0)
    monkeypatch.setenv("TRUSTED_PROXIES", "-1")
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        Settings.from_env()


# -- over real HTTP, against gunicorn -----------------------------------------------------

def call(port: int, method: str, path: str, headers: dict | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def http_state(port: int, settings: Settings) -> dict:
    status, _, raw = call(port, "GET", "/api/v1/videos?page_size=100")
    assert status == 200
    tasks = {}
    for video in json.loads(raw):
        _, _, body = call(port, "GET", f"/api/v1/videos/{video['id']}/reprocess")
        body = json.loads(body)
        tasks[video["id"]] = (body["task_id"], body["status"])
    return {"tasks": tasks, "files": files_of(settings)}


def http_upload(port: int, clip: Path, headers: dict | None = None) -> tuple[int, dict]:
    body, ctype = upload_body(clip)
    status, _, raw = call(port, "POST", "/api/v1/videos", {**ctype, **(headers or {})}, body)
    return status, json.loads(raw)


def ui_session(port: int, headers: dict | None = None) -> dict[str, str]:
    """A browser's session of the UI: its cookie and the page's CSRF token, as headers."""
    status, answer, raw = call(port, "GET", "/", headers)
    assert status == 200, raw[:300]
    cookie = answer["Set-Cookie"].split(";", 1)[0]
    page = BeautifulSoup(raw.decode(), "html.parser")
    return {"Cookie": cookie, "X-CSRFToken": page.select_one('meta[name="csrf-token"]')[
        "content"], **HX}


def test_over_real_http_foreign_hosts_and_origins_change_nothing(settings, tmp_path, clip):
    """gunicorn as `make run` starts it: a rebound Host is 400 everywhere (the poll layer,
    /rq and static files included); cross-origin writes are 403; same-origin UI forms work;
    forwarded headers are ignored without TRUSTED_PROXIES."""
    with web_server(tmp_path, SECRET_KEY="k" * 32, WEB_WORKERS="1") as (port, _):
        own = f"http://127.0.0.1:{port}"
        ids = [http_upload(port, clip)[1]["id"] for _ in range(2)]
        idle, busy = ids
        assert call(port, "POST", f"/api/v1/videos/{busy}/run_sync")[0] == 202
        poll = f"/api/v1/videos/{busy}/reprocess"
        etag = call(port, "GET", poll)[1]["ETag"]
        assert call(port, "GET", poll, {"If-None-Match": etag})[0] == 304  # the poll layer
        session = ui_session(port)
        before = http_state(port, settings)

        # DNS rebinding: the same port, under a name that is not ours.
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
            for path in ("/api/v1/videos", poll, "/", f"/videos/{busy}",
                         f"/videos/{busy}/panel", "/rq/", "/rq/0/data/queues.json",
                         "/static/css/app.css", "/static/vendor/htmx/htmx.min.js", "/healthz"):
                for extra in ({}, {"If-None-Match": etag}):
                    status, headers, raw = call(port, "GET", path, {"Host": host, **extra})
                    assert status == 400, (host, path, extra, status)
                    assert headers["Content-Type"] == "application/json"
                    assert "ALLOWED_HOSTS" in json.loads(raw)["message"]
            assert http_upload(port, clip, {"Host": host})[0] == 400
            for method, path in (("POST", f"/api/v1/videos/{busy}/cancel"),
                                 ("DELETE", f"/api/v1/videos/{idle}"),
                                 ("POST", f"/videos/{busy}/cancel"),
                                 ("POST", f"/rq/queue/{settings.queue_name}/queued/empty")):
                assert call(port, method, path, {**session, "Host": host})[0] == 400, path

        # Pages of other origins (with the user's own session cookie and token, as a form
        # on their page would send them, or had they leaked).
        for name, foreign in FOREIGN.items():
            foreign = {k: v.replace(OWN, own) for k, v in foreign.items()}
            status, answer = http_upload(port, clip, foreign)
            assert status == 403 and answer["code"] == 403, (name, answer)
            for method, path in (("POST", f"/api/v1/videos/{idle}/reprocess"),
                                 ("POST", f"/api/v1/videos/{busy}/reprocess?force=true"),
                                 ("POST", f"/api/v1/videos/{busy}/cancel"),
                                 ("DELETE", f"/api/v1/videos/{idle}"),
                                 ("POST", f"/videos/{busy}/cancel"),
                                 ("POST", f"/videos/{idle}/delete")):
                status, _, raw = call(port, method, path, {**session, **foreign})
                assert status == 403, (name, method, path, status, raw[:200])
                assert "cross-origin request refused" in json.loads(raw)["message"]
        # Forwarded headers mean nothing without TRUSTED_PROXIES: the Host is what counts,
        # and the scheme stays http.
        assert call(port, "GET", "/healthz", {"X-Forwarded-Host": "evil.example"})[0] == 200
        assert call(port, "GET", "/healthz", {"Host": "evil.example",
                                              "X-Forwarded-Host": "localhost"})[0] == 400
        status, _, _ = call(port, "POST", f"/videos/{busy}/cancel", {
            **session, "X-Forwarded-Proto": "https", "Origin": f"https://127.0.0.1:{port}"})
        assert status == 403
        assert http_state(port, settings) == before

        # The UI's own pages (same origin): the form actions work.
        for action in ("cancel", "run"):
            status, _, raw = call(port, "POST", f"/videos/{busy}/{action}",
                                  {**session, "Origin": own, "Sec-Fetch-Site": "same-origin"})
            assert status == 200, (action, raw[:300])
        assert http_state(port, settings)["tasks"][busy] != before["tasks"][busy]
        status, _, _ = call(port, "POST", f"/videos/{idle}/delete",
                            {**session, "Origin": own, "Sec-Fetch-Site": "same-origin"})
        assert status == 204
        assert idle not in http_state(port, settings)["tasks"]


def test_behind_a_tls_proxy_the_forwarded_origin_is_compared(settings, tmp_path, clip):
    """TRUSTED_PROXIES=1: scheme and host are what the proxy forwards (as nginx sends them
    with the README's configuration); both checks compare those."""
    public = "https://videos.example.com"
    with web_server(tmp_path, SECRET_KEY="k" * 32, WEB_WORKERS="1", TRUSTED_PROXIES="1",
                    ALLOWED_HOSTS="videos.example.com") as (port, _):
        proxy = {"Host": f"127.0.0.1:{port}", "X-Forwarded-For": "203.0.113.7",
                 "X-Forwarded-Proto": "https", "X-Forwarded-Host": "videos.example.com"}
        status, answer = http_upload(port, clip, {**proxy, "Origin": public,
                                                  "Sec-Fetch-Site": "same-origin"})
        assert status == 201, answer
        vid = answer["id"]
        session = ui_session(port, proxy)
        status, _, raw = call(port, "POST", f"/videos/{vid}/run",
                              {**proxy, **session, "Origin": public})
        assert status == 200, raw[:300]
        before = http_state(port, settings)
        # The same request from http:// (a downgrade), from the proxy's own address, or from
        # another site: refused.
        for origin in ("http://videos.example.com", f"http://127.0.0.1:{port}",
                       "https://evil.example"):
            status, _, _ = call(port, "POST", f"/videos/{vid}/cancel",
                                {**proxy, **session, "Origin": origin})
            assert status == 403, origin
            assert call(port, "DELETE", f"/api/v1/videos/{vid}",
                        {**proxy, "Origin": origin})[0] == 403
        # A rebound name behind the proxy: the forwarded host is checked, not the Host the
        # proxy sends.
        for host in ("evil.example", "videos.example.com.evil.example"):
            assert call(port, "GET", "/api/v1/videos",
                        {**proxy, "X-Forwarded-Host": host})[0] == 400
            assert call(port, "GET", f"/api/v1/videos/{vid}/reprocess",
                        {**proxy, "X-Forwarded-Host": host})[0] == 400
        assert http_state(port, settings) == before
        # Through the proxy, the UI works end to end.
        status, _, _ = call(port, "POST", f"/videos/{vid}/cancel",
                            {**proxy, **session, "Origin": public})
        assert status == 200
        assert http_state(port, settings)["tasks"][vid][1] == "cancelled"
