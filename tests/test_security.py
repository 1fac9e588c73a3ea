"""Access control and web security: API token, admin login, exposure check (also through a real
gunicorn), CSRF on the UI's forms, security headers, the persisted secret key."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from tests import mediagen
from tests.conftest import migrate
from tests.helpers import free_port, progress_of, publish_files, upload_ok
from webapp import config, create_app
from webapp.config import PROJECT_ROOT, Settings
from webapp.db import dispose
from webapp.security import (
    CSP,
    InsecureExposure,
    check_exposure,
    is_loopback,
    persistent_secret_key,
)

TOKEN = "s3cret-token-4f9c1e77"
PASSWORD = "correct horse battery staple"
TEST_SECRET_KEY = "test-secret-key-of-32-characters"  # SECRET_KEY's minimum
HX = {"HX-Request": "true"}
GUNICORN = Path(sys.executable).with_name("gunicorn")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return mediagen.make_video(tmp_path_factory.mktemp("m") / "clip.mp4", duration=1.0)


def basic(user: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_app(settings: Settings, **changes):
    app = create_app(replace(settings, secret_key=TEST_SECRET_KEY, **changes))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def secured(settings):
    """API_TOKEN and ADMIN_PASSWORD both set. Its tests try dozens of wrong credentials
    from one address, which the throttle would stop after 20 (it has tests of its own)."""
    return make_app(settings, api_token=TOKEN, admin_password=PASSWORD,
                    auth_failure_limit=1000)


def soup(resp) -> BeautifulSoup:
    return BeautifulSoup(resp.get_data(as_text=True), "html.parser")


def upload(client, path: Path, headers=None, url="/api/v1/videos", data=None):
    with open(path, "rb") as fh:
        return client.post(url, data={"file": (fh, path.name), **(data or {})},
                           content_type="multipart/form-data", headers=headers or {})


def assert_unauthorized_json(resp, challenge: str = "Bearer") -> dict:
    assert resp.status_code == 401, resp.get_data(as_text=True)[:300]
    assert resp.mimetype == "application/json"
    assert resp.headers["WWW-Authenticate"] == challenge
    body = resp.get_json()
    assert body["code"] == 401 and body["status"] == "Unauthorized" and body["message"]
    return body


# -- API_TOKEN ----------------------------------------------------------------------------

def test_api_needs_the_bearer_token(secured, clip):
    client = secured.test_client()
    vid = upload_ok_with_token(client, clip)
    attempts = [
        ("GET", "/api/v1/videos", {}),
        ("POST", "/api/v1/videos", None),  # an upload
        ("POST", f"/api/v1/videos/{vid}/run_sync", {}),
        ("GET", f"/api/v1/videos/{vid}", {}),
        ("DELETE", f"/api/v1/videos/{vid}", {}),
    ]
    wrong = [{}, bearer("wrong"), bearer(TOKEN + "x"), bearer(TOKEN[:-1]),
             {"Authorization": TOKEN}, {"Authorization": f"Token {TOKEN}"},
             {"Authorization": "Bearer \u00e9\u00e8"}, basic()]  # the admin login is no token
    for method, url, _ in attempts:
        for headers in wrong:
            if url == "/api/v1/videos" and method == "POST":
                resp = upload(client, clip, headers)
            else:
                resp = client.open(url, method=method, headers=headers)
            # A bearer token that is wrong is said to be (RFC 6750); none, or another
            # scheme, is asked for without an error code.
            sent = headers.get("Authorization", "") if headers else ""
            body = assert_unauthorized_json(resp, 'Bearer error="invalid_token"'
                                            if sent.startswith("Bearer ") else "Bearer")
            expected = "is not valid" if headers else "Authorization: Bearer"
            assert expected in body["message"], (method, url, headers, body)
    # Nothing happened: still one video, never started.
    listing = client.get("/api/v1/videos", headers=bearer())
    assert listing.status_code == 200 and [v["id"] for v in listing.get_json()] == [vid]
    assert progress_of_with_token(client, vid)["status"] == "pending"
    # With the token everything works.
    assert upload(client, clip, bearer()).status_code == 201
    started = client.post(f"/api/v1/videos/{vid}/run_sync", headers=bearer())
    assert started.status_code == 202, started.get_json()
    assert client.get(f"/api/v1/videos/{vid}", headers=bearer()).status_code == 200
    # "bearer" is case-insensitive (RFC 7235), the token is not.
    assert client.get("/api/v1/videos", headers={"Authorization": f"bearer {TOKEN}"}
                      ).status_code == 200
    assert_unauthorized_json(client.get("/api/v1/videos", headers=bearer(TOKEN.upper())),
                             'Bearer error="invalid_token"')


def upload_ok_with_token(client, path: Path) -> str:
    resp = upload(client, path, bearer())
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["id"]


def progress_of_with_token(client, vid: str) -> dict:
    resp = client.get(f"/api/v1/videos/{vid}/reprocess", headers=bearer())
    assert resp.status_code == 200
    return resp.get_json()


def test_openapi_docs_and_health_stay_open(secured):
    client = secured.test_client()
    spec = client.get("/api/openapi.json")
    assert spec.status_code == 200
    doc = spec.get_json()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"][
            "securitySchemes"]["bearerAuth"]["description"]}
    assert doc["security"] == [{"bearerAuth": []}]
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.get_data(as_text=True)
    assert client.get("/healthz").status_code == 200
    # Anything else under /api needs the token too (fail closed for future routes).
    assert_unauthorized_json(client.get("/api/v2/videos"))
    assert_unauthorized_json(client.get("/api/v1"))
    for url in ("/static/css/app.css", "/static/vendor/htmx/htmx.min.js", "/favicon.ico",
                "/static/vendor/swagger-ui/swagger-ui-bundle.js"):
        assert client.get(url).status_code == 200, url


def test_the_spec_documents_the_401_every_operation_answers_with_a_token(secured, clip):
    """With API_TOKEN set, the description lists 401 on every /api/v1 operation (its error
    shape and its WWW-Authenticate challenge), so that a client generated from it, and
    a conformance check, knows the answer a missing or wrong token gets."""
    import schemathesis

    client = secured.test_client()
    doc = client.get("/api/openapi.json").get_json()
    operations = [(path, method, op) for path, item in doc["paths"].items()
                  for method, op in item.items() if isinstance(op, dict) and "responses" in op]
    assert len(operations) >= 12
    undocumented = [f"{m.upper()} {p}" for p, m, op in operations if "401" not in op["responses"]]
    assert not undocumented, undocumented
    # The answers really are what is documented.
    schema = schemathesis.openapi.from_dict(doc)
    vid = upload_ok_with_token(client, clip)
    for path, method, _ in operations:
        url = path.replace("{video_id}", vid).replace("{name}", "poster.jpg")
        resp = client.open(url, method=method.upper(), query_string={"q": "x"})
        artifact = path.endswith("/artifacts/{name}")  # the admin login opens it too
        assert_unauthorized_json(resp, 'Bearer, Basic realm="vidpipe"' if artifact else "Bearer")
        params = {k: v for k, v in (("video_id", vid), ("name", "poster.jpg"))
                  if "{" + k + "}" in path}
        schema[path][method.upper()].Case(path_parameters=params).validate_response(resp)
    # So is the 429 of an address that sent too many wrong tokens (the right one included).
    undocumented = [f"{m.upper()} {p}" for p, m, op in operations if "429" not in op["responses"]]
    assert not undocumented, undocumented
    locked = make_app(secured.extensions["vidpipe"].settings, api_token=TOKEN,
                      auth_failure_limit=1).test_client()
    assert locked.get("/api/v1/videos", headers=bearer("wrong-token-0000000000")
                      ).status_code == 401
    for path, method, _ in operations:
        url = path.replace("{video_id}", vid).replace("{name}", "poster.jpg")
        resp = locked.open(url, method=method.upper(), query_string={"q": "x"},
                           headers=bearer())
        assert resp.status_code == 429, (method, path, resp.status_code)
        params = {k: v for k, v in (("video_id", vid), ("name", "poster.jpg"))
                  if "{" + k + "}" in path}
        schema[path][method.upper()].Case(path_parameters=params).validate_response(resp)
    # Without a token nothing is required, and no 401 is promised.


def test_without_a_token_the_api_is_open_and_the_spec_requires_nothing(settings):
    app = make_app(settings, admin_password=PASSWORD)  # only the UI is protected
    client = app.test_client()
    assert client.get("/api/v1/videos").status_code == 200
    doc = client.get("/api/openapi.json").get_json()
    assert "bearerAuth" in doc["components"]["securitySchemes"]  # described, not required
    assert "security" not in doc
    assert not [p for p, item in doc["paths"].items() for op in item.values()
                if isinstance(op, dict) and "401" in op.get("responses", {})]
    assert client.get("/").status_code == 401


def test_artifacts_also_accept_the_admin_login(secured, settings, clip):
    """The UI embeds artifacts (<video>, <img>, downloads) straight from the API."""
    client = secured.test_client()
    vid = upload_ok_with_token(client, clip)
    publish_files(settings, vid, "thumbnails", {
        "poster.jpg": b"\xff\xd8\xff\xe0 not really a jpeg", "storyboard.jpg": b"x",
        "storyboard.vtt": b"WEBVTT\n"})
    url = f"/api/v1/videos/{vid}/artifacts/poster.jpg"
    assert client.get(url, headers=bearer()).status_code == 200
    assert client.get(url, headers=basic()).status_code == 200
    assert client.head(url, headers=basic()).status_code == 200
    both = 'Bearer, Basic realm="vidpipe"'
    assert_unauthorized_json(client.get(url), both)
    assert_unauthorized_json(client.get(url, headers=basic(password="nope")), both)
    assert_unauthorized_json(client.get(url, headers=bearer("wrong")),
                             'Bearer error="invalid_token", Basic realm="vidpipe"')
    # Only reading artifact files: not the listing, not anything else.
    assert_unauthorized_json(client.get(f"/api/v1/videos/{vid}/artifacts", headers=basic()))
    assert_unauthorized_json(client.get(f"/api/v1/videos/{vid}", headers=basic()))
    assert_unauthorized_json(client.delete(f"/api/v1/videos/{vid}", headers=basic()))


# -- ADMIN_PASSWORD -----------------------------------------------------------------------

def test_ui_and_rq_need_the_admin_login(secured, clip):
    client = secured.test_client()
    vid = upload_ok_with_token(client, clip)
    pages = ["/", f"/videos/{vid}", f"/videos/{vid}/panel", f"/videos/{vid}/row",
             "/videos/not-a-video", "/rq/", "/rq/0/data/queues.json", "/rq/0/view/workers"]
    bad_logins = [{}, basic(password="wrong"), basic(user="root"), basic(user="Admin"),
                  basic(password=PASSWORD + " "), bearer(),
                  {"Authorization": "Basic not-base64!"}]
    for url in pages:
        for headers in bad_logins:
            resp = client.get(url, headers=headers)
            assert resp.status_code == 401, (url, headers, resp.status_code)
            assert resp.headers["WWW-Authenticate"] == 'Basic realm="vidpipe"'
            assert resp.mimetype == "text/html" and "admin" in resp.get_data(as_text=True)
        expected = 404 if "not-a-video" in url else 200
        assert client.get(url, headers=basic()).status_code == expected, url
    # Actions too, before any CSRF check: 401, and nothing happened.
    for action in ("run", "reprocess", "force", "cancel", "delete"):
        assert client.post(f"/videos/{vid}/{action}").status_code == 401
    assert client.post("/videos").status_code == 401
    assert progress_of_with_token(client, vid)["status"] == "pending"
    assert client.get(f"/api/v1/videos/{vid}", headers=bearer()).status_code == 200


def test_with_the_login_the_ui_works_end_to_end(secured, clip):
    client = secured.test_client()
    page = soup(client.get("/", headers=basic()))
    token = page.select_one('meta[name="csrf-token"]')["content"]
    headers = {**basic(), "X-CSRFToken": token}
    resp = upload(client, clip, headers, url="/videos")
    assert resp.status_code == 303, resp.get_data(as_text=True)[:300]
    vid = resp.headers["Location"].rsplit("/", 1)[-1]
    assert client.post(f"/videos/{vid}/cancel", headers={**headers, **HX}).status_code == 200
    assert progress_of_with_token(client, vid)["status"] == "cancelled"


# -- throttling of wrong credentials ------------------------------------------------------

WORKER = "worker-token-for-throttle-tests-0123"
LIMIT, WINDOW = 3, 60
INTERNAL_PATH = "/internal/v1/videos/0b6f5d6e-0000-4000-8000-000000000001/source"
# What each secret guards: (path, a wrong guess, the right secret, status with the right one,
# answers in JSON).
GUARDED = {
    "api token": ("/api/v1/videos", bearer("not-the-api-token-000000"), bearer(), 200, True),
    "admin password": ("/", basic(password="not the password"), basic(), 200, False),
    "worker token": (INTERNAL_PATH, bearer("not-the-worker-token-0000"), bearer(WORKER), 404,
                     True),
}


def throttled_app(settings: Settings, **changes):
    """Every secret set; locked out after LIMIT wrong ones within WINDOW seconds."""
    return make_app(settings, **{"api_token": TOKEN, "admin_password": PASSWORD,
                                 "worker_token": WORKER, "auth_failure_limit": LIMIT,
                                 "auth_failure_window": WINDOW, **changes})


def assert_throttled(resp, as_json: bool, window: int = WINDOW) -> int:
    """429 with Retry-After (seconds) and a sentence saying so, in the shape of the 401s."""
    assert resp.status_code == 429, resp.get_data(as_text=True)[:300]
    retry_after = int(resp.headers["Retry-After"])
    assert 0 < retry_after <= window
    if as_json:
        body = resp.get_json()
        assert body["code"] == 429 and body["status"] == "Too Many Requests"
        message = body["message"]
    else:
        assert resp.mimetype == "text/html"
        message = soup(resp).p.get_text()
    assert message.lower().startswith("too many wrong credentials came from your address")
    assert f"for the next {retry_after} seconds, even with the right one" in message
    return retry_after


@pytest.mark.parametrize("kind", GUARDED)
def test_wrong_secrets_are_401_then_429_for_every_secret_even_the_right_one(settings, kind,
                                                                            caplog):
    caplog.set_level("WARNING", logger="webapp.throttle")
    path, wrong, right, right_status, as_json = GUARDED[kind]
    client = throttled_app(settings).test_client()
    assert client.get(path, headers=right).status_code == right_status
    for _ in range(LIMIT):
        assert client.get(path, headers=wrong).status_code == 401
    for _ in range(3):
        assert_throttled(client.get(path, headers=wrong), as_json)
        assert_throttled(client.get(path, headers=right), as_json)
    # The count is the address's, whatever secret it guessed at.
    for other_path, _, other_right, _, other_json in GUARDED.values():
        assert_throttled(client.get(other_path, headers=other_right), other_json)
    # A browser's first request, before it asks for the password, is no guess: 401 as ever.
    assert client.get(path).status_code == 401
    lockouts = [r.getMessage() for r in caplog.records if "locked out" in r.getMessage()]
    assert len(lockouts) == 1, lockouts  # logged once, not once per 429
    assert lockouts[0].startswith("locked out 127.0.0.1 for ")
    assert f"{LIMIT} wrong credentials within {WINDOW} s" in lockouts[0]


def test_requests_without_credentials_are_not_counted(settings):
    client = throttled_app(settings).test_client()
    for _ in range(LIMIT * 3):
        assert client.get("/api/v1/videos").status_code == 401
        assert client.get("/").status_code == 401
    assert client.get("/api/v1/videos", headers=bearer()).status_code == 200
    assert client.get("/", headers=basic()).status_code == 200


def test_a_lockout_ends_with_its_window(settings):
    client = throttled_app(settings, auth_failure_window=1).test_client()
    for _ in range(LIMIT):
        assert client.get("/api/v1/videos", headers=bearer("wrong-token-0000000000")
                          ).status_code == 401
    assert_throttled(client.get("/api/v1/videos", headers=bearer()), True, window=1)
    time.sleep(1.2)
    assert client.get("/api/v1/videos", headers=bearer()).status_code == 200
    # Counted afresh: the next wrong ones are 401 again until the limit.
    for _ in range(LIMIT):
        assert client.get("/", headers=basic(password="wrong password")).status_code == 401
    assert_throttled(client.get("/", headers=basic()), False, window=1)


def test_addresses_are_counted_apart(settings):
    """Behind a trusted proxy each client is its forwarded address; without one, the peer's
    address. An IPv6 client is its /64 (one host or home network)."""
    client = throttled_app(settings, trusted_proxies=1).test_client()

    def get(headers, forwarded=None, peer="127.0.0.1"):
        extra = {"X-Forwarded-For": forwarded} if forwarded else {}
        return client.get("/api/v1/videos", headers={**headers, **extra},
                          environ_base={"REMOTE_ADDR": peer})

    wrong = bearer("wrong-token-0000000000")
    for _ in range(LIMIT):
        assert get(wrong, "198.51.100.7").status_code == 401
    assert_throttled(get(bearer(), "198.51.100.7"), True)
    assert get(bearer(), "198.51.100.8").status_code == 200  # another client of the proxy
    for _ in range(LIMIT):
        assert get(wrong, "2001:db8:1:2::1").status_code == 401
    assert_throttled(get(bearer(), "2001:db8:1:2::ffff"), True)  # the same /64
    assert get(bearer(), "2001:db8:1:3::1").status_code == 200  # another /64

    direct = throttled_app(settings).test_client()  # no proxy: the peer's address counts
    for _ in range(LIMIT):
        assert direct.get("/", headers=basic(password="wrong password"),
                          environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code == 401
    assert_throttled(direct.get("/", headers=basic(), environ_base={"REMOTE_ADDR": "192.0.2.1"}),
                     False)
    assert direct.get("/", headers=basic(), environ_base={"REMOTE_ADDR": "192.0.2.2"},
                      ).status_code == 200
    # A forwarded address is not believed without TRUSTED_PROXIES: 192.0.2.1 is still locked.
    assert_throttled(direct.get("/", headers={**basic(), "X-Forwarded-For": "192.0.2.9"},
                                environ_base={"REMOTE_ADDR": "192.0.2.1"}), False)


def test_the_count_is_shared_by_every_web_process(settings):
    """Two apps on one Redis, as gunicorn's worker processes are: wrong guesses spread over
    both add up, and a lockout reached in one refuses in the other."""
    first, second = (throttled_app(settings).test_client() for _ in range(2))
    wrong = bearer("wrong-token-0000000000")
    assert first.get("/api/v1/videos", headers=wrong).status_code == 401
    assert second.get("/api/v1/videos", headers=wrong).status_code == 401
    assert first.get("/api/v1/videos", headers=wrong).status_code == 401
    assert_throttled(second.get("/api/v1/videos", headers=bearer()), True)
    assert_throttled(first.get("/api/v1/videos", headers=bearer()), True)


def test_the_poll_layer_refuses_the_right_token_from_a_locked_out_address(settings, clip):
    """A poll with the right token is answered before Flask (webapp/fastpoll.py): from a
    locked-out address it must be refused too, or a 304 would tell the right guess from the
    wrong ones (all 429)."""
    client = throttled_app(settings).test_client()
    resp = upload(client, clip, headers=bearer())
    assert resp.status_code == 201
    url = f"/api/v1/videos/{resp.get_json()['id']}/reprocess"
    etag = client.get(url, headers=bearer()).headers["ETag"]
    assert client.get(url, headers={**bearer(), "If-None-Match": etag}).status_code == 304
    for _ in range(LIMIT):
        assert client.get(url, headers=bearer("wrong-token-0000000000")).status_code == 401
    assert_throttled(client.get(url, headers={**bearer(), "If-None-Match": etag}), True)
    assert_throttled(client.get(url, headers=bearer()), True)
    head = client.head(url, headers={**bearer(), "If-None-Match": etag})
    assert head.status_code == 429 and int(head.headers["Retry-After"]) > 0
    other = {"REMOTE_ADDR": "192.0.2.20"}
    assert client.get(url, headers={**bearer(), "If-None-Match": etag},
                      environ_base=other).status_code == 304


def test_with_redis_down_the_right_secret_still_opens(settings, tmp_path, caplog):
    """The throttle fails open: a Redis outage must not lock everyone out."""
    caplog.set_level("WARNING", logger="webapp.throttle")
    from tests.test_redis_outage import RedisServer

    redis_server = RedisServer(tmp_path)
    redis_server.start()
    try:
        client = throttled_app(settings, redis_url=redis_server.url).test_client()
        for _ in range(LIMIT):
            assert client.get("/", headers=basic(password="wrong password")).status_code == 401
        assert_throttled(client.get("/", headers=basic()), False)
        redis_server.stop()
        assert client.get("/", headers=basic()).status_code == 200
        assert client.get("/api/v1/videos", headers=bearer()).status_code == 200
        for _ in range(LIMIT + 2):  # no count, no lockout, no error: still 401
            assert client.get("/api/v1/videos", headers=bearer("wrong-token-0000000000")
                              ).status_code == 401
        assert client.get(INTERNAL_PATH, headers=bearer(WORKER)).status_code == 404
        warnings = [r.getMessage() for r in caplog.records
                    if "not throttled while Redis is unavailable" in r.getMessage()]
        assert len(warnings) == 1, warnings  # once per outage, not once per request
    finally:
        redis_server.stop()


def test_the_throttle_settings_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("AUTH_FAILURE_LIMIT", "5")
    monkeypatch.setenv("AUTH_FAILURE_WINDOW", "30")
    s = Settings.from_env()
    assert (s.auth_failure_limit, s.auth_failure_window) == (5, 30)
    monkeypatch.delenv("AUTH_FAILURE_LIMIT")
    monkeypatch.delenv("AUTH_FAILURE_WINDOW")
    s = Settings.from_env()
    assert (s.auth_failure_limit, s.auth_failure_window) == (20, 300)


def test_a_limit_of_0_throttles_nothing(settings):
    client = throttled_app(settings, auth_failure_limit=0).test_client()
    for _ in range(LIMIT * 3):
        assert client.get("/api/v1/videos", headers=bearer("wrong-token-0000000000")
                          ).status_code == 401
    assert client.get("/api/v1/videos", headers=bearer()).status_code == 200


# -- exposure -----------------------------------------------------------------------------

LOOPBACK = ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]", "::ffff:127.0.0.1", None]
EXPOSED = ["0.0.0.0", "", "::", "[::]", "192.168.1.10", "10.0.0.1", "2001:db8::1",
           "no-such-host.invalid"]
SECRETS = {
    "none": {},
    "token only": {"api_token": TOKEN},
    "password only": {"admin_password": PASSWORD},
    "both": {"api_token": TOKEN, "admin_password": PASSWORD},
    "none, allowed": {"allow_insecure": True},
    "token only, allowed": {"api_token": TOKEN, "allow_insecure": True},
}


@pytest.mark.parametrize("named", [True, False], ids=["ALLOWED_HOSTS", "no ALLOWED_HOSTS"])
@pytest.mark.parametrize("secrets", list(SECRETS))
@pytest.mark.parametrize("host", LOOPBACK + EXPOSED)
def test_exposure_check(host, secrets, named):
    settings = Settings(**SECRETS[secrets], allowed_hosts=("videos.example.com",) if named
                        else ())
    unprotected = secrets not in ("both", "none, allowed", "token only, allowed")
    refused = host in EXPOSED and (unprotected or not named)
    if not refused:
        check_exposure(host, settings)
        return
    with pytest.raises(InsecureExposure) as info:
        check_exposure(host, settings)
    message = str(info.value)
    assert "refusing to listen on" in message
    if named:
        assert "ALLOWED_HOSTS" not in message
    else:  # said at once, also beside the missing secrets
        assert "ALLOWED_HOSTS is not set" in message and "ALLOWED_HOSTS=" in message
    if not unprotected:
        return
    assert "not a loopback address" in message and "ALLOW_INSECURE=1" in message
    missing = {"none": ["API_TOKEN", "ADMIN_PASSWORD"], "token only": ["ADMIN_PASSWORD"],
               "password only": ["API_TOKEN"]}[secrets]
    assert f"{' and '.join(missing)} {'are' if len(missing) == 2 else 'is'} not set" in message


def test_is_loopback_resolves_names():
    assert is_loopback("localhost") and is_loopback("LOCALHOST") and is_loopback("127.8.9.10")
    assert not is_loopback(socket.gethostname()) or all(
        is_loopback(i[4][0]) for i in socket.getaddrinfo(socket.gethostname(), None))
    assert not is_loopback("") and not is_loopback("0.0.0.0") and not is_loopback("::")


def test_settings_read_the_security_variables(monkeypatch):
    for name, value in {"HOST": "0.0.0.0", "API_TOKEN": TOKEN, "ADMIN_PASSWORD": PASSWORD,
                        "SECRET_KEY": "sk", "ALLOW_INSECURE": "1"}.items():
        monkeypatch.setenv(name, value)
    s = Settings.from_env()
    assert (s.host, s.api_token, s.admin_password, s.secret_key, s.allow_insecure) == (
        "0.0.0.0", TOKEN, PASSWORD, "sk", True)
    assert TOKEN not in repr(s) and PASSWORD not in repr(s) and "sk" not in repr(s)
    for off in ("0", "", "no", "false"):
        monkeypatch.setenv("ALLOW_INSECURE", off)
        assert Settings.from_env().allow_insecure is False
    for name in ("HOST", "API_TOKEN", "ADMIN_PASSWORD", "SECRET_KEY", "ALLOW_INSECURE"):
        monkeypatch.delenv(name)
    s = Settings.from_env()
    assert (s.host, s.api_token, s.admin_password, s.secret_key, s.allow_insecure) == (
        "", "", "", "", False)


def test_create_app_checks_a_configured_host(settings):
    named = ("videos.example.com",)
    with pytest.raises(InsecureExposure, match="refusing to listen on 0.0.0.0"):
        create_app(replace(settings, host="0.0.0.0", secret_key="k" * 32, allowed_hosts=named))
    with pytest.raises(InsecureExposure, match="ADMIN_PASSWORD is not set"):
        create_app(replace(settings, host="0.0.0.0", api_token=TOKEN, secret_key="k" * 32,
                           allowed_hosts=named))
    with pytest.raises(InsecureExposure, match="ALLOWED_HOSTS is not set"):
        create_app(replace(settings, host="0.0.0.0", api_token=TOKEN, admin_password=PASSWORD,
                           secret_key="k" * 32))
    for ok in ({"api_token": TOKEN, "admin_password": PASSWORD}, {"allow_insecure": True}, {}):
        host = "127.0.0.1" if not ok else "0.0.0.0"
        create_app(replace(settings, host=host, secret_key="k" * 32, allowed_hosts=named, **ok))


def gunicorn_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HOST", "PORT", "API_TOKEN", "ADMIN_PASSWORD", "ALLOW_INSECURE",
                        "GUNICORN_CMD_ARGS", "ALLOWED_HOSTS", "CORS_ORIGINS",
                        "TRUSTED_PROXIES")}
    url = f"sqlite:///{tmp_path / 'vidpipe.db'}"
    migrate(url)  # the web process starts only on a database at this code's migration
    dispose(url)
    env.update({"DATABASE_URL": url,
                "MEDIA_ROOT": str(tmp_path / "media"), "SECRET_KEY": "k" * 32,
                "WEB_WORKERS": "1", **extra})
    return env


def test_gunicorn_refuses_to_listen_openly_without_the_secrets(tmp_path):
    port = free_port()
    for extra, missing in (({}, "API_TOKEN and ADMIN_PASSWORD are not set"),
                           ({"API_TOKEN": TOKEN}, "ADMIN_PASSWORD is not set"),
                           ({"API_TOKEN": TOKEN, "ADMIN_PASSWORD": PASSWORD},
                            "ALLOWED_HOSTS is not set")):
        env = gunicorn_env(tmp_path, HOST="0.0.0.0", PORT=str(port), **extra)
        proc = subprocess.run([str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                              timeout=30, check=False)
        assert proc.returncode != 0
        output = proc.stdout + proc.stderr
        assert "refusing to listen on 0.0.0.0" in output and missing in output, output
        assert "Listening at" not in output and "Booting worker" not in output, output


def test_gunicorn_starts_with_allow_insecure(tmp_path):
    """HOST=0.0.0.0 with ALLOW_INSECURE=1 and ALLOWED_HOSTS starts (the app's own check passes
    too); the socket itself is bound on 127.0.0.1 (--bind wins over the config file) to
    expose nothing."""
    port = free_port()
    env = gunicorn_env(tmp_path, HOST="0.0.0.0", PORT=str(port), ALLOW_INSECURE="1",
                       ALLOWED_HOSTS="videos.example.com")
    log = tmp_path / "gunicorn.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(GUNICORN), "-c", "gunicorn.conf.py",
                                 "--bind", f"127.0.0.1:{port}", "wsgi:app"],
                                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        status = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/static/favicon.svg")
                status = conn.getresponse().status
                conn.close()
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200, log.read_text()
        assert "ALLOW_INSECURE=1" in log.read_text()  # the app said it is exposed on purpose
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert proc.returncode is not None


# -- CSRF ---------------------------------------------------------------------------------

def page_token(client, url: str = "/") -> str:
    return soup(client.get(url)).select_one('meta[name="csrf-token"]')["content"]


def api_upload(client, clip) -> str:
    return upload_ok(client, clip)["id"]


def test_every_post_form_carries_the_token(client, clip):
    vid = api_upload(client, clip)
    for url in ("/", f"/videos/{vid}", f"/videos/{vid}/panel"):
        page = soup(client.get(url))
        forms = page.select('form[method="post"]')
        assert forms, url
        for form in forms:
            field = form.select_one('input[type="hidden"][name="csrf_token"]')
            assert field and field["value"], (url, form.get("action"))
    page = soup(client.get("/"))
    meta = page.select_one('meta[name="csrf-token"]')["content"]
    assert json.loads(page.body["hx-headers"]) == {"X-CSRFToken": meta}


def test_ui_posts_without_a_valid_token_are_refused_and_change_nothing(app, client, clip):
    vid = api_upload(client, clip)
    page_token(client)  # the session exists: only the token is missing
    other = app.test_client()
    foreign = page_token(other)  # a valid token, of another session
    for headers in ({}, {"X-CSRFToken": "garbage"}, {"X-CSRFToken": foreign}):
        for htmx in (False, True):
            h = {**headers, **(HX if htmx else {})}
            resp = upload(client, clip, h, url="/videos")
            assert resp.status_code == 400
            for action in ("run", "reprocess", "force", "delete"):
                resp = client.post(f"/videos/{vid}/{action}", headers=h)
                assert resp.status_code == 400, (action, headers)
                text = resp.get_data(as_text=True)
                assert "reload the page and try again" in text and "Traceback" not in text
                if htmx:
                    assert resp.headers["HX-Retarget"] == "#message"
                    assert soup(resp).select_one("p#message[role=alert]")
                else:
                    assert soup(resp).html is not None and "400" in soup(resp).title.string
            # The library's selection (delete, reprocess) as well, confirmed or not.
            for action in ("delete", "reprocess"):
                resp = client.post("/videos/selected", headers=h, data={
                    "action": action, "ids": [vid], "confirmed": "1"})
                assert resp.status_code == 400, (action, headers)
    assert [v["id"] for v in client.get("/api/v1/videos").get_json()] == [vid]
    assert progress_of(client, vid)["status"] == "pending"  # never started, not deleted
    # Cancel and force on an active task.
    task = client.post(f"/api/v1/videos/{vid}/run_sync").get_json()["task_id"]
    for action in ("cancel", "force"):
        assert client.post(f"/videos/{vid}/{action}", headers=HX).status_code == 400
    state = progress_of(client, vid)
    assert (state["task_id"], state["status"]) == (task, "queued")


def test_htmx_upload_refusal_is_a_fragment_for_the_upload_message(client, clip):
    page_token(client)
    resp = upload(client, clip, HX, url="/videos")
    assert resp.status_code == 400
    assert resp.headers["HX-Retarget"] == "#upload-message"
    assert resp.headers["HX-Reswap"] == "outerHTML"
    p = soup(resp).select_one("p#upload-message.error[role=alert]")
    assert "The CSRF token is missing." in p.get_text()


def test_ui_posts_with_the_token_work(client, clip):
    # A plain form: the hidden field of the page's own form.
    page = soup(client.get("/"))
    field = page.select_one("#upload-form input[name=csrf_token]")["value"]
    resp = upload(client, clip, url="/videos", data={"csrf_token": field})
    assert resp.status_code == 303
    vid = resp.headers["Location"].rsplit("/", 1)[-1]
    panel = soup(client.get(f"/videos/{vid}"))
    cancel_form = panel.select_one(f'form[action="/videos/{vid}/cancel"]')
    resp = client.post(f"/videos/{vid}/cancel",
                       data={"csrf_token": cancel_form.select_one("input")["value"]})
    assert resp.status_code == 303 and progress_of(client, vid)["status"] == "cancelled"
    # HTMX: the header from <body hx-headers>.
    token = page_token(client, f"/videos/{vid}")
    resp = client.post(f"/videos/{vid}/run", headers={**HX, "X-CSRFToken": token})
    assert resp.status_code == 200 and progress_of(client, vid)["status"] == "queued"
    resp = client.post(f"/videos/{vid}/force", headers={**HX, "X-CSRFToken": token})
    assert resp.status_code == 200
    client.post(f"/videos/{vid}/cancel", headers={**HX, "X-CSRFToken": token})
    resp = client.post(f"/videos/{vid}/delete", headers={**HX, "X-CSRFToken": token})
    assert resp.status_code == 204 and resp.headers["HX-Redirect"] == "/"
    assert client.get(f"/api/v1/videos/{vid}").status_code == 404


def test_htmx_upload_over_the_limit_keeps_its_readable_413(settings, clip):
    """The header token is checked without reading the (too large) body first."""
    app = make_app(settings, max_upload_bytes=1000)
    client = app.test_client()
    token = page_token(client)
    resp = upload(client, clip, {**HX, "X-CSRFToken": token}, url="/videos")
    assert resp.status_code == 413
    assert "larger than the limit" in soup(resp).select_one("#upload-message").get_text()


def test_the_api_needs_no_csrf_token(client, clip):
    page_token(client)  # even with a session cookie
    vid = api_upload(client, clip)
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    assert client.post(f"/api/v1/videos/{vid}/cancel").status_code == 200
    assert client.delete(f"/api/v1/videos/{vid}").status_code == 204


def test_rq_dashboard_actions_work_from_its_pages_but_not_cross_site(app, client, settings,
                                                                      clip, redis_conn):
    """rq-dashboard posts without a CSRF token: exempt, but only from this origin."""
    vid = api_upload(client, clip)
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    queue = settings.queue_name
    jobs = redis_conn.llen(f"rq:queue:{queue}")
    assert jobs > 0
    empty = f"/rq/queue/{queue}/queued/empty"
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": "null"}):
        assert client.post(empty, headers=headers).status_code == 403, headers
    assert client.get(f"/rq/requeue/{queue}", headers={"Sec-Fetch-Site": "cross-site"}
                      ).status_code == 403
    assert redis_conn.llen(f"rq:queue:{queue}") == jobs
    # Its own page's jQuery POST (same origin), or a script without a browser: allowed.
    same = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert client.post(f"/rq/queue/{queue}/compact", headers=same).get_json() == {
        "status": "OK"}
    assert client.get(f"/rq/requeue/{queue}", headers=same).status_code == 200
    assert client.post(empty).status_code == 200
    assert redis_conn.llen(f"rq:queue:{queue}") == 0


# -- headers ------------------------------------------------------------------------------

EXPECTED_CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
                "script-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
                "form-action 'self'")
ALLOWED_SOURCES = {"'self'", "'none'", "'unsafe-inline'", "'unsafe-eval'", "data:"}


def assert_common_headers(resp) -> None:
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "same-origin"


def csp(resp) -> dict[str, list[str]]:
    policy = {}
    for directive in resp.headers["Content-Security-Policy"].split(";"):
        name, *sources = directive.split()
        policy[name] = sources
    return policy


def test_html_pages_have_the_strict_policy_and_nothing_inline(client, clip):
    vid = api_upload(client, clip)
    assert CSP == EXPECTED_CSP
    for url, headers in (("/", {}), (f"/videos/{vid}", {}), (f"/videos/{vid}", HX),
                         (f"/videos/{vid}/panel", HX), (f"/videos/{vid}/row", HX),
                         ("/videos/not-a-video", {})):
        resp = client.get(url, headers=headers)
        assert resp.mimetype == "text/html", url
        assert resp.headers["Content-Security-Policy"] == EXPECTED_CSP, url
        assert_common_headers(resp)
        page = soup(resp)
        assert not page.select("style, [style]"), url
        assert all(s.has_attr("src") for s in page.select("script")), url
        assert not [a for tag in page.find_all(True) for a in tag.attrs
                    if a.startswith("on") or a.startswith("hx-on")], url
    config = soup(client.get("/")).select_one('meta[name="htmx-config"]')["content"]
    assert '"includeIndicatorStyles": false' in config


def test_relaxed_policies_for_swagger_ui_and_rq_dashboard_stay_on_this_host(client):
    for url in ("/api/docs", "/rq/", "/rq/0/view/jobs"):
        resp = client.get(url)
        assert resp.status_code == 200, url
        assert_common_headers(resp)
        policy = csp(resp)
        assert policy["frame-ancestors"] == ["'none'"] and policy["default-src"] == ["'self'"]
        assert "'unsafe-inline'" in policy["script-src"], url
        for name, sources in policy.items():
            assert set(sources) <= ALLOWED_SOURCES, (url, name, sources)
    assert "'unsafe-eval'" not in csp(client.get("/api/docs"))["script-src"]
    assert csp(client.get("/api/docs"))["style-src"] == ["'self'"]


def test_every_response_gets_the_basic_headers(client):
    for url in ("/api/v1/videos", "/api/openapi.json", "/healthz", "/static/css/app.css",
                "/api/v1/videos/nope"):
        assert_common_headers(client.get(url))


# -- secret key ---------------------------------------------------------------------------

def test_secret_key_is_generated_once_and_shared(tmp_path):
    instance = tmp_path / "instance"
    keys: list[str] = []
    threads = [threading.Thread(target=lambda: keys.append(persistent_secret_key(instance)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    path = instance / "secret_key"
    assert len(set(keys)) == 1 and len(keys[0]) >= 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == keys[0]
    assert persistent_secret_key(instance) == keys[0]  # a restart reads the same key
    assert list(instance.iterdir()) == [path]  # no temporary files left behind
    path.write_text("")
    with pytest.raises(RuntimeError, match="is empty"):
        persistent_secret_key(instance)


def test_the_app_uses_secret_key_or_the_persisted_one(settings, tmp_path, monkeypatch):
    app = make_app(settings)
    assert app.secret_key == TEST_SECRET_KEY
    assert app.instance_path == str(PROJECT_ROOT / "instance")  # where the key is persisted
    # ... moved under tmp_path here: the test wrote PROJECT_ROOT/instance/secret_key.
    monkeypatch.setattr(config, "INSTANCE_DIR", tmp_path / "instance")
    app = create_app(replace(settings, secret_key=""))
    assert app.instance_path == str(tmp_path / "instance")
    assert app.secret_key == (tmp_path / "instance" / "secret_key").read_text().strip()
    assert create_app(replace(settings, secret_key="")).secret_key == app.secret_key
