"""Schemathesis against /api/openapi.json: no server error, nothing the description does not say.

Every operation gets Schemathesis' examples, coverage and fuzzing phases (positive and
negative data, bounded and derandomized), on each database backend, against the real app
(database, Redis, a per-test queue that no worker consumes).

Random ids would only ever reach the 404 branches, so the fixture makes two real videos, one
idle with every artifact on disk and one with an active task, and the hooks below let
Hypothesis pick them (and real artifact names, and a real media file to upload) besides what
it generates. That way the 200/201/202/204/409 answers are checked against the schema too.
The second test makes every documented answer happen once, deterministically, and validates
it with the same checks.

The schema is loaded at import (from an app of its own; the description does not depend on
settings) and `schema.parametrize()` makes one test per operation, each calling the `app`
fixture. Schemathesis' lazy `schemathesis.pytest.from_fixture` would load it from the fixture
directly, but it fails under pytest 9.2 (it sets `Function._nodeid`, which pytest removed).
"""

from __future__ import annotations

import io
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests import mediagen
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import publish_files, upload_ok
from webapp import create_app
from webapp.config import Settings
from webapp.services.storage import ARTIFACT_NAMES, STEP_OUTPUTS

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


def _openapi() -> dict:
    """The served description; it does not depend on the database, so any settings do."""
    # (a SECRET_KEY: without one the app wrote PROJECT_ROOT/instance/secret_key, at import)
    app = create_app(Settings(database_url="sqlite://", secret_key=TEST_SECRET_KEY,
                              media_root=Path(tempfile.gettempdir()) / "vidpipe-unused"))
    resp = app.test_client().get("/api/openapi.json")
    assert resp.status_code == 200
    return resp.get_json()


# The schema is loaded at import so that Schemathesis makes one test per operation; the
# requests go to the `app` fixture of each test (see call_and_validate below).
schema = schemathesis.openapi.from_dict(_openapi())


@dataclass
class Known:
    """Real things for the hooks to offer; filled in per test by the `known` fixture."""

    video_ids: list[str] = field(default_factory=list)
    media: bytes = b""


KNOWN = Known()


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """The generated ids and names, or the real videos (and, for the idle one, real names)."""
    if not isinstance(path_parameters, dict) or "video_id" not in path_parameters:
        return st.just(path_parameters)
    real = [{**path_parameters, "video_id": vid} for vid in KNOWN.video_ids]
    if "name" in path_parameters and real:
        real += [{**real[0], "name": name} for name in ARTIFACT_NAMES]
    return st.sampled_from([path_parameters, *real])


@schema.hook
def flatmap_body(context, body):
    if isinstance(body, dict) and "file" in body and KNOWN.media:
        return st.sampled_from([body, {**body, "file": KNOWN.media}])
    return st.just(body)


@pytest.fixture(scope="module")
def media_samples(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("m")
    return {
        "clip": mediagen.make_video(folder / "clip.mp4", duration=1.0),
        "poster": mediagen.make_image(folder / "poster.jpg"),
    }


@pytest.fixture
def known(app, client, settings, media_samples):
    # The description fuzzed is the one this app serves.
    assert client.get("/api/openapi.json").get_json() == schema.raw_schema
    idle = upload_ok(client, media_samples["clip"])["id"]
    files = {name: media_samples["poster" if name.endswith(".jpg") else "clip"].read_bytes()
             for name in ARTIFACT_NAMES}
    files["transcript.json"] = (b'{"language": "en", "duration": 1.0, "text": "Hi.", '
                                b'"segments": [{"start": 0.0, "end": 1.0, "text": "Hi."}]}')
    files["captions.vtt"] = b"WEBVTT\n"
    for step, names in STEP_OUTPUTS.items():
        publish_files(settings, idle, step, {name: files[name] for name in names})
    busy = upload_ok(client, media_samples["clip"])["id"]
    assert client.post(f"/api/v1/videos/{busy}/run_sync").status_code == 202
    KNOWN.video_ids = [idle, busy]
    KNOWN.media = media_samples["clip"].read_bytes()
    yield KNOWN
    KNOWN.video_ids, KNOWN.media = [], b""


@schema.parametrize()
# Every Hypothesis health check is on but one: function_scoped_fixture warns that `app` and
# `known` are made once per test (one operation on one backend), not once per example. That
# is what this test wants: the examples of an operation share one app and the real videos the
# hooks offer (setting them up per example would cost an upload and a trigger each), and no
# check depends on a fresh state: conformance must hold whatever earlier examples did (a
# video deleted by one example is a 404, which is documented and checked like any answer).
@hsettings(max_examples=25, derandomize=True, database=None, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_openapi_description(case, app, known):
    case.call_and_validate(app=app, checks=CHECKS)


VIDEO = "/api/v1/videos/{video_id}"


def conforms(resp, path: str, method: str, status: int, checks=CHECKS):
    """Assert the status, then validate the response with the same checks as the fuzzing."""
    assert resp.status_code == status, (method, path, resp.status_code, resp.data[:300])
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    params = re.fullmatch(pattern, resp.request.path).groupdict()
    schema[path][method].Case(path_parameters=params).validate_response(resp, checks=checks)
    return resp


def test_every_documented_answer_conforms(app, client, known, settings, media_samples):
    """Each operation's success and error answers, made to happen, checked against the schema."""
    idle, busy = known.video_ids
    v = f"/api/v1/videos/{idle}"
    with open(media_samples["clip"], "rb") as fh:
        created = client.post("/api/v1/videos", data={"file": (fh, "new clip.mp4")})
    conforms(created, "/api/v1/videos", "POST", 201)
    not_media = {"file": (io.BytesIO(b"just text\n" * 100), "x.mp4")}
    conforms(client.post("/api/v1/videos", data=not_media), "/api/v1/videos", "POST", 422)
    conforms(client.post("/api/v1/videos", json={"file": "x"}), "/api/v1/videos", "POST", 415)
    cut = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n\0'
    conforms(client.post("/api/v1/videos", data=cut,
                         content_type="multipart/form-data; boundary=b"),
             "/api/v1/videos", "POST", 400)  # cut short before the closing boundary
    small = create_app(Settings.from_env(max_upload_bytes=1000)).test_client()
    with open(media_samples["clip"], "rb") as fh:
        conforms(small.post("/api/v1/videos", data={"file": (fh, "big.mp4")}),
                 "/api/v1/videos", "POST", 413)

    listed = conforms(client.get("/api/v1/videos?page_size=2"), "/api/v1/videos", "GET", 200)
    assert len(listed.get_json()) == 2 and "X-Pagination" in listed.headers
    conforms(client.get("/api/v1/videos?page_size=0"), "/api/v1/videos", "GET", 422)

    conforms(client.get(v), VIDEO, "GET", 200)
    conforms(client.get(f"{v}/artifacts"), f"{VIDEO}/artifacts", "GET", 200)
    art = f"{VIDEO}/artifacts/{{name}}"
    full = conforms(client.get(f"{v}/artifacts/poster.jpg"), art, "GET", 200)
    conforms(client.get(f"{v}/artifacts/captions.vtt"), art, "GET", 200)
    conforms(client.get(f"{v}/artifacts/poster.jpg", headers={"Range": "bytes=0-9"}),
             art, "GET", 206)
    conforms(client.get(f"{v}/artifacts/poster.jpg", headers={"Range": "bytes=99999999-"}),
             art, "GET", 416)
    etag = {"If-None-Match": full.headers["ETag"]}
    conforms(client.get(f"{v}/artifacts/poster.jpg", headers=etag), art, "GET", 304)
    conforms(client.get(f"{v}/artifacts/source.mp4"), art, "GET", 404)

    for mode in ("run_sync", "reprocess"):
        path = f"{VIDEO}/{mode}"
        conforms(client.post(f"{v}/{mode}", data="{nope", content_type="application/json"),
                 path, "POST", 400)
        conforms(client.post(f"{v}/{mode}", data="force=true",
                             content_type="application/x-www-form-urlencoded"), path, "POST", 415)
        conforms(client.post(f"{v}/{mode}?force=maybe"), path, "POST", 422)
        conforms(client.post(f"/api/v1/videos/{busy}/{mode}"), path, "POST", 409)
        conforms(client.post(f"/api/v1/videos/{busy}/{mode}", json={"force": True}),
                 path, "POST", 202)
    down = create_app(Settings.from_env(redis_url="redis://127.0.0.1:1/0")).test_client()
    # A documented 5xx: the one check it must skip is not_a_server_error.
    conforms(down.post(f"{v}/reprocess"), f"{VIDEO}/reprocess", "POST", 503, checks=CHECKS[1:])

    conforms(client.get(f"/api/v1/videos/{busy}/reprocess"), f"{VIDEO}/reprocess", "GET", 200)
    conforms(client.post(f"/api/v1/videos/{busy}/cancel"), f"{VIDEO}/cancel", "POST", 200)
    conforms(client.post(f"/api/v1/videos/{busy}/cancel"), f"{VIDEO}/cancel", "POST", 409)
    done = conforms(client.post(f"{v}/run_sync"), f"{VIDEO}/run_sync", "POST", 202)
    assert done.get_json()["status"] == "completed"  # every artifact exists: nothing to run
    conforms(client.post(f"{v}/reprocess"), f"{VIDEO}/reprocess", "POST", 202)
    conforms(client.delete(v), VIDEO, "DELETE", 409)
    conforms(client.delete(f"/api/v1/videos/{busy}"), VIDEO, "DELETE", 204)
    conforms(client.get(f"/api/v1/videos/{busy}"), VIDEO, "GET", 404)
    conforms(client.get(f"/api/v1/videos/{busy}/reprocess"), f"{VIDEO}/reprocess", "GET", 404)
    conforms(client.get(f"/api/v1/videos/{busy}/artifacts"), f"{VIDEO}/artifacts", "GET", 404)


def test_hypothesis_keeps_its_caches_out_of_the_project_tree():
    """Hypothesis caches what it reads (each module's constants, its Unicode tables) in
    `.hypothesis/` of the working directory: the clone, under `make test`. On a clean clone
    the first test here failed nothing_written_into_the_project_tree ('.hypothesis/constants/…',
    '.hypothesis/unicode_data/…'), and a changed source file did it again on any clone."""
    from hypothesis.configuration import storage_directory

    from webapp.config import PROJECT_ROOT

    where = storage_directory("constants", intent_to_write=False).path.resolve()
    assert not where.is_relative_to(PROJECT_ROOT.resolve()), where
