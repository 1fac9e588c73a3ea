"""Videos API: upload, list, show, delete, artifacts, errors, OpenAPI and health."""

from __future__ import annotations

import io
import json
import os
import re
import time
from datetime import timedelta
from urllib.parse import quote, unquote

import pytest
from sqlalchemy import event
from werkzeug.http import http_date, parse_date

from tests import mediagen
from tests.helpers import (
    assert_json_error,
    progress_of,
    publish_files,
    transcript_files,
    upload,
    upload_ok,
)
from webapp import create_app
from webapp.config import Settings
from webapp.db import get_engine
from webapp.models import ProcessingTask, Video
from webapp.services import progress


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return mediagen.make_video(tmp_path_factory.mktemp("m") / "clip.mp4", duration=2.0)


@pytest.fixture(scope="module")
def speech_m4a(tmp_path_factory):
    return mediagen.make_audio_only(tmp_path_factory.mktemp("m") / "hello.m4a", "hello world")


def media_files(settings) -> list[str]:
    root = settings.media_root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_upload_probes_and_stores_the_file(client, settings, clip, db_session):
    resp = upload(client, clip, "My clip.mp4")
    assert resp.status_code == 201
    body = resp.get_json()
    assert resp.headers["Location"].endswith(f"/api/v1/videos/{body['id']}")
    assert body["original_filename"] == "My clip.mp4"
    assert body["size_bytes"] == clip.stat().st_size
    assert body["duration"] == pytest.approx(2.0, abs=0.1)
    assert (body["width"], body["height"]) == (320, 240)
    assert body["has_audio"] and body["has_video"]
    assert body["processing"] == {"task_id": None, "status": "pending", "progress": 0.0}
    assert body["progress_url"] == f"/api/v1/videos/{body['id']}/reprocess"
    assert media_files(settings) == [f"videos/{body['id']}/source.mp4"]
    assert db_session.get(Video, body["id"]) is not None


def test_audio_only_upload_is_accepted(client, speech_m4a):
    body = upload_ok(client, speech_m4a)
    assert body["has_audio"] and not body["has_video"]
    assert body["width"] is None


@pytest.mark.parametrize(
    ("content", "name", "why"),
    [
        (b"this is not a video\n" * 50, "notes.mp4", "not a playable"),
        (b"", "empty.mp4", "empty"),
        (bytes(range(256)) * 40, "noise.mkv", "not a playable"),
    ],
)
def test_non_media_upload_is_422_and_leaves_nothing(client, settings, db_session, tmp_path,
                                                   content, name, why):
    path = tmp_path / name
    path.write_bytes(content)
    body = assert_json_error(upload(client, path), 422)
    assert why in body["message"]
    # The field refused, as in every 422 (README: validation errors add `errors`).
    assert body["errors"] == {"files": {"file": [body["message"]]}}
    assert db_session.query(Video).count() == 0
    assert media_files(settings) == []


# Whole files of every kind, among them tracks of very different lengths: none is "cut".
WHOLE_KINDS = {
    "faststart.mp4": lambda d: mediagen.make_video(d / "faststart.mp4", 6.0, "160x120",
                                                   faststart=True),
    "plain.mp4": lambda d: mediagen.make_video(d / "plain.mp4", 6.0, "160x120"),
    "short-audio.mp4": lambda d: mediagen.make_video(d / "short-audio.mp4", 12.0, "160x120",
                                                     faststart=True, audio_duration=1.0),
    "short-picture.mp4": lambda d: mediagen.make_video(d / "short-picture.mp4", 1.0,
                                                       "160x120", audio_duration=12.0),
    "clip.mov": lambda d: mediagen.make_media(d / "clip.mov", 6.0),
    "clip.mkv": lambda d: mediagen.make_media(d / "clip.mkv", 6.0),
    "short-audio.mkv": lambda d: mediagen.make_media(d / "short-audio.mkv", 12.0, 1.0),
    "clip.webm": lambda d: mediagen.make_media(d / "clip.webm", 6.0),
    "tone.wav": lambda d: mediagen.make_media(d / "tone.wav", 6.0),
    "tone.mp3": lambda d: mediagen.make_media(d / "tone.mp3", 6.0),
    "tone.flac": lambda d: mediagen.make_media(d / "tone.flac", 6.0),
}


@pytest.fixture(scope="module")
def whole_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    return {name: make(folder) for name, make in WHOLE_KINDS.items()}


# What people call each kind (ffprobe says "mov,mp4,m4a,3gp,3g2,mj2" for the first five).
FORMAT_LABELS = {"faststart.mp4": "MP4", "plain.mp4": "MP4", "short-audio.mp4": "MP4",
                 "short-picture.mp4": "MP4", "clip.mov": "QuickTime", "clip.mkv": "Matroska",
                 "short-audio.mkv": "Matroska", "clip.webm": "WebM", "tone.wav": "WAV",
                 "tone.mp3": "MP3", "tone.flac": "FLAC"}


def test_whole_uploads_of_every_kind_are_accepted(client, settings, whole_files):
    for name, path in whole_files.items():
        body = upload_ok(client, path, name)
        assert body["duration"] == pytest.approx(12.0 if "short" in name else 6.0, abs=0.2)
        assert body["format_label"] == FORMAT_LABELS[name], (name, body["format_name"])
    assert len(media_files(settings)) == len(whole_files)  # just the sources, nothing staged
    # Named without its extension, a WebM file is still WebM (its codecs are WebM's), and
    # an MP4 file MP4; the page shows the same name, with ffprobe's raw one as its title.
    webm = upload_ok(client, whole_files["clip.webm"], "recording")
    assert (webm["format_name"], webm["format_label"]) == ("matroska,webm", "WebM")
    mp4 = upload_ok(client, whole_files["plain.mp4"], "clip.bin")
    assert (mp4["format_name"], mp4["format_label"]) == ("mov,mp4,m4a,3gp,3g2,mj2", "MP4")
    page = client.get(f"/videos/{mp4['id']}").get_data(as_text=True)
    assert '<dd id="format" title="mov,mp4,m4a,3gp,3g2,mj2">MP4</dd>' in page


def test_image_upload_is_rejected(client, tmp_path, settings):
    png = tmp_path / "still.png"
    os.system(f"ffmpeg -loglevel error -f lavfi -i color=red:s=64x64 -frames:v 1 {png}")
    assert_json_error(upload(client, png), 422)
    assert media_files(settings) == []


def test_upload_without_file_field_is_422(client):
    resp = client.post("/api/v1/videos", data={"other": "x"}, content_type="multipart/form-data")
    body = assert_json_error(resp, 422)
    assert "file" in json.dumps(body["errors"])


def test_an_upload_of_several_files_or_a_field_twice_is_422_and_stores_nothing(
        client, settings, db_session, clip):
    """Two files in `file` (curl -F file=@a -F file=@b, a form with `multiple`) gave a 201
    for the first and dropped the second without a word; a `language` sent twice kept the
    first. Each is a 422 naming the field, and nothing is stored."""
    cases = [
        ({"file": [(io.BytesIO(clip.read_bytes()), "a.mp4"),
                   (io.BytesIO(clip.read_bytes()), "b.mp4")]},
         "form field `file`: sent 2 times: send it once (one file a request)"),
        ({"file": (io.BytesIO(clip.read_bytes()), "a.mp4"), "language": ["de", "fr"]},
         "form field `language`: sent 2 times: send it once (one file a request)"),
    ]
    for data, message in cases:
        resp = client.post("/api/v1/videos", data=data, content_type="multipart/form-data")
        body = assert_json_error(resp, 422)
        assert body["message"] == message, body
        assert body["errors"]["files"], body
    assert db_session.query(Video).count() == 0
    assert media_files(settings) == []


def test_an_upload_whose_file_is_text_says_so(client, settings, db_session):
    """curl -F file=talk.mp4, the @ forgotten, sends the name as a text field: the 422 said
    "form field `file` is missing" of a field that was sent. It says what was wrong."""
    resp = client.post("/api/v1/videos", data={"file": "talk.mp4"},
                       content_type="multipart/form-data")
    assert assert_json_error(resp, 422)["message"] == (
        "form field `file`: is text, not a file: send the file's content as a file part"
        " (curl: -F file=@talk.mp4)")
    assert db_session.query(Video).count() == 0
    assert media_files(settings) == []


def test_upload_options_it_does_not_read_are_422_and_store_nothing(client, settings,
                                                                   db_session, clip):
    """The triggers take language and translate in the query; the upload reads them only as
    form fields, and ignored them (and any misspelt field) in silence: a 201 for a video
    that would be transcribed in whatever language was detected, without English captions.
    Like a trigger's unknown option, each is a 422 naming it, before anything is stored."""
    cases = [
        ({"query_string": "language=de&translate=true"},
         "the upload reads no query parameter (`language`, `translate`): send `language` "
         "and `translate` as form fields beside the file"),
        ({"data": {"languge": "de"}}, "form field `languge` is not an option this request takes"),
        ({"data": {"translate": "true", "extra": (io.BytesIO(b"x"), "x.txt")}},
         "form field `extra` is not an option this request takes"),
    ]
    for kwargs, message in cases:
        data = {"file": (io.BytesIO(clip.read_bytes()), "clip.mp4"), **kwargs.pop("data", {})}
        resp = client.post("/api/v1/videos", data=data, content_type="multipart/form-data",
                           **kwargs)
        assert assert_json_error(resp, 422)["message"] == message, kwargs
    # Parts without a name (a Content-Disposition werkzeug cannot read) are no options:
    # named None among the unknown fields, they made the 422's JSON unsortable, a 500.
    for part in (b'form-data; name="\r"', b"form-data", b'form-data; filename="a.mp4"'):
        body = (b"--b\r\nContent-Disposition: " + part + b"\r\n\r\nnull\r\n--b--\r\n")
        resp = client.post("/api/v1/videos", data=body,
                           content_type="multipart/form-data; boundary=b")
        assert assert_json_error(resp, 422)["message"] == "form field `file` is missing", part
    assert db_session.query(Video).count() == 0
    assert media_files(settings) == []
    # The options as form fields are read, as before.
    resp = client.post("/api/v1/videos", content_type="multipart/form-data", data={
        "file": (io.BytesIO(clip.read_bytes()), "clip.mp4"), "language": "de",
        "translate": "true"})
    assert resp.status_code == 201, resp.get_json()
    assert (resp.get_json()["requested_language"], resp.get_json()["translate"]) == ("de", True)
    upload_schema = client.get("/api/openapi.json").get_json()["components"]["schemas"]["Upload"]
    assert upload_schema["additionalProperties"] is False


def test_upload_over_the_limit_is_413(settings, clip):
    small = Settings.from_env(max_upload_bytes=1000)
    client = create_app(small).test_client()
    body = assert_json_error(upload(client, clip), 413)
    # the limit said once: "1,000 bytes (1,000 bytes)" was the same number twice
    assert body["message"] == "the request body is larger than the limit of 1,000 bytes"
    assert media_files(settings) == []


def test_list_is_paginated_newest_first(client, clip):
    ids = [upload_ok(client, clip, f"v{i}.mp4")["id"] for i in range(3)]
    resp = client.get("/api/v1/videos?page=1&page_size=2")
    assert resp.status_code == 200
    assert [v["id"] for v in resp.get_json()] == ids[::-1][:2]
    pagination = json.loads(resp.headers["X-Pagination"])
    assert pagination["total"] == 3 and pagination["total_pages"] == 2
    page2 = client.get("/api/v1/videos?page=2&page_size=2").get_json()
    assert [v["id"] for v in page2] == [ids[0]]
    assert_json_error(client.get("/api/v1/videos?page=0"), 422)


@pytest.mark.parametrize("value", ["1_0", "\uff11", "\u0661", " 1", "1 ", "+1"])
def test_a_page_number_is_ascii_digits(client, value):
    """Python's int() reads `1_0` as 10 and `１` (fullwidth) or `١` (Arabic-Indic) as 1:
    such a page or page size is no integer to any other client or to the OpenAPI, and a
    typo must not page silently elsewhere. 422 naming it, as `page=abc` is."""
    for url in ("/api/v1/videos", "/api/v1/search?q=weather"):
        for name in ("page", "page_size"):
            sep = "&" if "?" in url else "?"
            body = assert_json_error(client.get(f"{url}{sep}{name}={quote(value)}"), 422)
            assert body["errors"] == {"query": {name: ["Not a valid integer."]}}, (url, name)
            assert body["message"] == f"query parameter `{name}`: not a valid integer"
    assert client.get("/api/v1/videos?page=01&page_size=-0").status_code == 422  # size 0
    assert client.get("/api/v1/videos?page=01&page_size=007").status_code == 200


def test_every_page_says_which_page_it_is_and_the_totals(client, clip):
    """A client pages until a page comes back empty: that page (past the last one, or the
    first of an empty library) still says which page it is and the totals in X-Pagination;
    flask-smorest's header left `page` out there."""
    def pagination(url: str) -> dict:
        resp = client.get(url)
        assert resp.status_code == 200, resp.get_json()
        return json.loads(resp.headers["X-Pagination"])

    empty = {"total": 0, "total_pages": 0, "page": 1}
    assert pagination("/api/v1/videos") == empty
    assert pagination("/api/v1/search?q=weather") == empty
    assert pagination("/api/v1/videos?page=3") == {**empty, "page": 3}
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        upload_ok(client, clip, name)
    assert pagination("/api/v1/videos?page_size=2&page=2") == {
        "total": 3, "total_pages": 2, "first_page": 1, "last_page": 2, "page": 2,
        "previous_page": 1}
    assert pagination("/api/v1/videos?page_size=2&page=3") == {
        "total": 3, "total_pages": 2, "first_page": 1, "last_page": 2, "page": 3}
    resp = client.get("/api/v1/videos?page_size=2&page=3")
    assert resp.get_json() == []
    components = client.get("/api/openapi.json").get_json()["components"]
    assert components["headers"]["PAGINATION"]["required"] is True
    ref = components["headers"]["PAGINATION"]["content"]["application/json"]["schema"]["$ref"]
    schema = components["schemas"][ref.rsplit("/", 1)[1]]
    assert set(schema.get("required", [])) == {"total", "total_pages", "page"}, schema


def test_video_json_is_one_moment_of_its_progress(client, settings, clip, db_session):
    """Right after a trigger a worker starts a step while GET /videos/{id} reads: the
    video's processing summary is still one moment's, the same as the progress endpoint
    says (it once said "queued" with the total of a running step, or the other way round)."""
    vid = upload_ok(client, clip)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/run_sync").get_json()["task_id"]
    engine = get_engine(settings.database_url)
    seen = {"task_read": False, "fired": False, "busy": False}

    def start_a_step() -> None:
        seen["busy"] = True
        try:
            attempt = progress.start_subtask(db_session, task_id, "transcode")
            progress.report_progress(db_session, task_id, "transcode", attempt, 50.0)
        finally:
            seen["busy"] = False

    def after(_conn, _cursor, statement, *_args) -> None:
        if not seen["busy"] and "processing_tasks" in statement:
            seen["task_read"] = True

    def before(_conn, _cursor, _statement, *_args) -> None:
        # The worker's write lands between the request's read of the task and whatever the
        # request reads next.
        if seen["task_read"] and not seen["fired"] and not seen["busy"]:
            seen["fired"] = True
            start_a_step()

    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "before_cursor_execute", before)
    try:
        summary = client.get(f"/api/v1/videos/{vid}").get_json()["processing"]
    finally:
        event.remove(engine, "after_cursor_execute", after)
        event.remove(engine, "before_cursor_execute", before)
    before_step = {"task_id": task_id, "status": "queued", "progress": 0.0}
    after_step = {"task_id": task_id, "status": "running", "progress": 15.0}  # 30 × 50 %
    assert summary in (before_step, after_step), summary
    if not seen["fired"]:  # read in one statement: the step starts after the request
        start_a_step()
    now = progress_of(client, vid)
    assert {k: now[k] for k in after_step} == after_step
    assert client.get(f"/api/v1/videos/{vid}").get_json()["processing"] == after_step
    listed = client.get("/api/v1/videos").get_json()
    assert [v["processing"] for v in listed] == [after_step]


def test_list_filters_by_status_and_sorts(client, clip):
    ids = {name: upload_ok(client, clip, name)["id"] for name in ("b.mp4", "A.mp4", "c.mp4")}
    assert client.post(f"/api/v1/videos/{ids['b.mp4']}/run_sync").status_code == 202
    assert client.post(f"/api/v1/videos/{ids['c.mp4']}/run_sync").status_code == 202
    assert client.post(f"/api/v1/videos/{ids['c.mp4']}/cancel").status_code == 200

    def listed(query: str) -> list[str]:
        resp = client.get(f"/api/v1/videos?{query}")
        assert resp.status_code == 200, resp.get_json()
        return [v["original_filename"] for v in resp.get_json()]

    assert listed("") == ["c.mp4", "A.mp4", "b.mp4"]
    assert listed("sort=oldest") == ["b.mp4", "A.mp4", "c.mp4"]
    assert listed("sort=name") == ["A.mp4", "b.mp4", "c.mp4"]  # case does not matter
    assert listed("status=active") == ["b.mp4"]
    assert listed("status=cancelled") == ["c.mp4"]
    assert listed("status=pending") == ["A.mp4"]
    assert listed("status=failed") == []
    resp = client.get("/api/v1/videos?status=cancelled&page_size=1")
    assert json.loads(resp.headers["X-Pagination"])["total"] == 1
    for bad in ("status=done", "sort=size"):
        assert_json_error(client.get(f"/api/v1/videos?{bad}"), 422)


@pytest.mark.parametrize(
    "video_id",
    ["00000000-0000-4000-8000-000000000000", "abc", "1", "..%2F..%2Fetc", "ABC-" * 20],
)
def test_unknown_ids_of_any_shape_are_json_404(client, video_id):
    for path in ("", "/reprocess", "/artifacts", "/artifacts/poster.jpg"):
        assert_json_error(client.get(f"/api/v1/videos/{video_id}{path}"), 404)
    for path in ("/run_sync", "/reprocess", "/cancel"):
        assert_json_error(client.post(f"/api/v1/videos/{video_id}{path}"), 404)
    assert_json_error(client.delete(f"/api/v1/videos/{video_id}"), 404)


def test_unknown_artifact_and_traversal_are_404(client, clip):
    vid = upload_ok(client, clip)["id"]
    for name in ("poster.jpg", "source.mp4", "..%2Fsource.mp4", "../source.mp4", "x.txt"):
        assert client.get(f"/api/v1/videos/{vid}/artifacts/{name}").status_code == 404
    assert client.get(f"/api/v1/videos/{vid}/artifacts").get_json() == []


def test_delete_removes_row_tasks_and_files(client, settings, clip, db_session, redis_conn):
    vid = upload_ok(client, clip)["id"]
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    body = assert_json_error(client.delete(f"/api/v1/videos/{vid}"), 409)
    task_id = body["task_id"]
    assert client.post(f"/api/v1/videos/{vid}/cancel").status_code == 200
    assert client.delete(f"/api/v1/videos/{vid}").status_code == 204
    db_session.expire_all()
    assert db_session.get(Video, vid) is None
    assert db_session.get(ProcessingTask, task_id) is None
    assert media_files(settings) == []
    assert_json_error(client.get(f"/api/v1/videos/{vid}"), 404)


def test_wrong_method_is_json_405(client):
    """Both name what was asked and what is there, in the API's words (lowercase, as
    every other message): werkzeug's "The method is not allowed for the requested URL."
    named neither the method nor the ones the path answers."""
    resp = client.put("/api/v1/videos")
    assert assert_json_error(resp, 405)["message"] == (
        f"PUT is not allowed at /api/v1/videos; it answers {resp.headers['Allow']}")
    body = assert_json_error(client.get("/api/v1/nothing-here"), 404)
    assert body["message"] == ("there is nothing at /api/v1/nothing-here; the API's paths "
                               "are listed in /api/openapi.json")
    page = client.get("/nothing-here")  # a page says it too, without the API's list
    assert page.status_code == 404
    assert "there is nothing at /nothing-here<" in page.get_data(as_text=True)


def test_options_is_204_with_the_methods_in_allow(client, clip):
    """OPTIONS (a client asking what a route takes, a CORS preflight) was Flask's automatic
    200 with an empty text/html body, which a JSON client fails to parse, and its Allow in
    a set's order. Now 204, no body and no content type, Allow sorted; a 405 lists the same."""
    vid = upload_ok(client, clip)["id"]
    routes = {"/api/v1/videos": "GET, HEAD, OPTIONS, POST",
              f"/api/v1/videos/{vid}": "DELETE, GET, HEAD, OPTIONS",
              f"/api/v1/videos/{vid}/run_sync": "OPTIONS, POST",
              f"/api/v1/videos/{vid}/reprocess": "GET, HEAD, OPTIONS, POST",
              f"/api/v1/videos/{vid}/cancel": "OPTIONS, POST",
              f"/api/v1/videos/{vid}/artifacts": "GET, HEAD, OPTIONS",
              f"/api/v1/videos/{vid}/artifacts/poster.jpg": "GET, HEAD, OPTIONS",
              f"/api/v1/videos/{vid}/transcript.txt": "GET, HEAD, OPTIONS",
              "/api/v1/search": "GET, HEAD, OPTIONS",
              "/api/openapi.json": "GET, HEAD, OPTIONS",
              "/": "GET, HEAD, OPTIONS"}
    for path, allow in routes.items():
        resp = client.options(path)
        assert resp.status_code == 204, (path, resp.status_code)
        assert resp.data == b"" and "Content-Type" not in resp.headers, path
        assert resp.headers["Allow"] == allow, path
    resp = client.put(f"/api/v1/videos/{vid}")
    assert assert_json_error(resp, 405)["message"].endswith("it answers DELETE, GET, HEAD, "
                                                            "OPTIONS")
    assert resp.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS"
    assert client.get(f"/api/v1/videos/{vid}").status_code == 200  # OPTIONS changed nothing


def test_slashes_in_a_row_are_404_naming_the_path_not_a_redirect(client, clip):
    """werkzeug merged them with a 308 (an HTML body, an absolute Location): a client that
    follows it sends its upload, up to 2 GiB, a second time."""
    resp = client.post("/api/v1//videos", data={"file": (clip.open("rb"), "a.mp4")})
    assert resp.status_code == 404 and "Location" not in resp.headers
    assert resp.get_json()["message"] == ("there is nothing at /api/v1//videos; the path has "
                                          "slashes in a row: /api/v1/videos")
    vid = upload_ok(client, clip)["id"]
    resp = client.get(f"/api/v1/videos//{vid}/artifacts")
    assert resp.status_code == 404
    assert resp.get_json()["message"].endswith(f"slashes in a row: /api/v1/videos/{vid}/"
                                               "artifacts")


def test_a_path_with_a_trailing_slash_is_404_naming_the_path_without(client, clip):
    """The routes end without a slash; werkzeug's 404 for one with it said "If you entered
    the URL manually please check your spelling", which hides the one character to drop."""
    vid = upload_ok(client, clip)["id"]
    for method, path in (("get", "/api/v1/videos/"), ("post", "/api/v1/videos/"),
                         ("get", f"/api/v1/videos/{vid}/"),
                         ("post", f"/api/v1/videos/{vid}/run_sync/"),
                         ("get", f"/api/v1/videos/{vid}/reprocess//"),
                         ("delete", f"/api/v1/videos/{vid}/artifacts/")):  # GET only there
        body = assert_json_error(getattr(client, method)(path), 404)
        assert body["message"] == (f"there is nothing at {path}; the path has no slash at "
                                   f"its end: {path.rstrip('/')}"), (method, path)
    body = assert_json_error(client.get("/api/v1/nothing-here/"), 404)
    # nothing there without the slash either
    assert body["message"].startswith("there is nothing at /api/v1/nothing-here/; the API")
    page = client.get(f"/videos/{vid}/")  # the UI's pages say it too
    assert page.status_code == 404
    assert f"no slash at its end: /videos/{vid}<" in page.get_data(as_text=True)
    assert client.get(f"/api/v1/videos/{vid}").status_code == 200


def test_error_answers_keep_the_headers_http_requires(client, settings, clip):
    """405 must say which methods are allowed (Allow, RFC 9110 15.5.6) and 416 how long the
    file is (Content-Range: bytes */length, 15.5.17), on the API and on the UI's pages."""
    resp = client.put("/api/v1/videos")
    assert_json_error(resp, 405)
    assert set(resp.headers.get("Allow", "").replace(" ", "").split(",")) >= {"GET", "POST"}
    page = client.put("/healthz")
    assert page.status_code == 405 and "GET" in page.headers.get("Allow", "")
    vid = upload_ok(client, clip)["id"]
    publish_files(settings, vid, "thumbnails", {"poster.jpg": b"x" * 100,
                                                "storyboard.jpg": b"y", "storyboard.vtt": b"W"})
    resp = client.get(f"/api/v1/videos/{vid}/artifacts/poster.jpg",
                      headers={"Range": "bytes=500-"})
    body = assert_json_error(resp, 416)
    assert body["message"] == "the range 'bytes=500-' selects no byte of this file of 100 bytes"
    assert resp.headers.get("Content-Range") == "bytes */100"
    assert resp.content_type == "application/json"


def test_artifact_ranges_the_rfc_says_to_serve_are_served(client, settings, clip):
    """RFC 9110, 14.1.2 and 14.2: a suffix longer than the file selects the whole file; a
    Range of a unit the server does not know MUST be ignored; several ranges may be ignored
    (this server sends no multipart answers). None of them is a 416."""
    vid = upload_ok(client, clip)["id"]
    data = bytes(range(100))
    publish_files(settings, vid, "thumbnails", {"poster.jpg": data, "storyboard.jpg": b"y",
                                                "storyboard.vtt": b"W"})
    url = f"/api/v1/videos/{vid}/artifacts/poster.jpg"
    resp = client.get(url, headers={"Range": "bytes=-500"})
    assert (resp.status_code, resp.headers.get("Content-Range"), resp.data) == (
        206, "bytes 0-99/100", data)
    # Several ranges, also out of order or overlapping (werkzeug's parser called those
    # unsatisfiable: a 416 for ranges inside the file), and any Range of another unit, even
    # one werkzeug cannot read.
    for header in ("items=0-1", "bytes=0-1,5-6", "bytes=5-6,0-1", "bytes=0-50, 20-",
                   "items=a", "items"):
        resp = client.get(url, headers={"Range": header})
        assert (resp.status_code, resp.data) == (200, data), header
    # An empty element of the list is no range (RFC 9110 5.6.1): one range is left.
    for header in ("bytes=2-3,", "bytes=, 2-3"):
        resp = client.get(url, headers={"Range": header})
        assert (resp.status_code, resp.headers.get("Content-Range"), resp.data) == (
            206, "bytes 2-3/100", data[2:4]), header
    # What the RFC does say is unsatisfiable still is, and ordinary ranges still work.
    for header in ("bytes=100-", "bytes=5-2", "bytes=-0", "bytes=", "bytes=a-b"):
        assert client.get(url, headers={"Range": header}).status_code == 416, header
    resp = client.get(url, headers={"Range": "bytes=-10"})
    assert (resp.status_code, resp.data) == (206, data[-10:])


def test_if_range_serves_the_range_only_for_the_files_own_validator(client, settings, clip):
    """RFC 9110 13.1.5: a Range with If-Range is served only when the validator is the
    file's own by strong comparison (its ETag, or its Last-Modified exactly), else the whole
    file. werkzeug also served it for a later date and for the file's tag made weak: a
    download resumed with them could join the start of one file to the rest of another."""
    vid = upload_ok(client, clip)["id"]
    data = bytes(range(100))
    publish_files(settings, vid, "thumbnails", {"poster.jpg": data, "storyboard.jpg": b"y",
                                                "storyboard.vtt": b"W"})
    url = f"/api/v1/videos/{vid}/artifacts/poster.jpg"
    full = client.get(url)
    etag, modified = full.headers["ETag"], full.headers["Last-Modified"]
    later = http_date(parse_date(modified) + timedelta(hours=1))
    earlier = http_date(parse_date(modified) - timedelta(hours=1))
    for if_range, status in ((etag, 206), (modified, 206), (later, 200), (earlier, 200),
                             (f"W/{etag}", 200), ('"another"', 200), ("garbage", 200)):
        resp = client.get(url, headers={"Range": "bytes=10-19", "If-Range": if_range})
        expected = data[10:20] if status == 206 else data
        assert (resp.status_code, resp.data) == (status, expected), if_range


def test_a_failed_if_match_on_an_artifact_is_a_json_412_even_with_a_range(
        client, settings, clip):
    """An If-Match that no longer holds (a resumed download of a file a newer run
    replaced): 412 in the API's error shape, not the file as the 412's body, and not a 206
    of the new file either (RFC 9110 13.2.2: preconditions before Range)."""
    vid = upload_ok(client, clip)["id"]
    publish_files(settings, vid, "thumbnails", {"poster.jpg": b"p" * 5000,
                                                "storyboard.jpg": b"y", "storyboard.vtt": b"W"})
    url = f"/api/v1/videos/{vid}/artifacts/poster.jpg"
    etag = client.get(url).headers["ETag"]
    for headers in ({"If-Match": '"an-older-copy"'},
                    {"If-Match": '"an-older-copy"', "Range": "bytes=100-"}):
        resp = client.get(url, headers=headers)
        body = assert_json_error(resp, 412)
        assert b"ppp" not in resp.data and "changed" in body["message"], headers
    resp = client.get(url, headers={"If-Match": etag, "Range": "bytes=100-"})
    assert (resp.status_code, len(resp.data)) == (206, 4900)
    responses = client.get("/api/openapi.json").get_json()["paths"][
        "/api/v1/videos/{video_id}/artifacts/{name}"]["get"]["responses"]
    assert "412" in responses


def test_a_current_copy_is_304_even_with_a_range(client, settings, clip):
    """RFC 9110 13.2.2: If-None-Match (without it, If-Modified-Since) is evaluated before
    Range, so a client whose copy is current gets 304; werkzeug served the range first, a
    206 of the file the client has. A copy that is not current still gets its range."""
    vid = upload_ok(client, clip)["id"]
    publish_files(settings, vid, "thumbnails", {"poster.jpg": b"p" * 5000,
                                                "storyboard.jpg": b"y", "storyboard.vtt": b"W"})
    url = f"/api/v1/videos/{vid}/artifacts/poster.jpg"
    first = client.get(url)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    for current in ({"If-None-Match": etag}, {"If-None-Match": f'W/{etag}, "x"'},
                    {"If-None-Match": "*"}, {"If-Modified-Since": modified},
                    {"If-None-Match": etag, "If-Range": etag}):
        resp = client.get(url, headers={**current, "Range": "bytes=100-199"})
        assert (resp.status_code, resp.data) == (304, b""), current
        assert resp.headers["ETag"] == etag, current
    for stale in ({"If-None-Match": '"x"'}, {"If-Modified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"},
                  {"If-None-Match": '"x"', "If-Modified-Since": modified}):
        resp = client.get(url, headers={**stale, "Range": "bytes=100-199"})
        assert (resp.status_code, len(resp.data)) == (206, 100), stale


def test_an_if_match_that_holds_on_an_artifact_serves_it(client, settings, clip):
    """RFC 9110 13.1.1: `If-Match: *` holds for any file there is, and a list holds when it
    names the file's tag (compared strongly: its weak form does not); werkzeug answered
    `*` with a 412. A holding If-Match is then done with: If-None-Match naming the tag
    too is a 304, where werkzeug sent the whole file."""
    vid = upload_ok(client, clip)["id"]
    publish_files(settings, vid, "thumbnails", {"poster.jpg": b"p" * 5000,
                                                "storyboard.jpg": b"y", "storyboard.vtt": b"W"})
    url = f"/api/v1/videos/{vid}/artifacts/poster.jpg"
    etag = client.get(url).headers["ETag"]
    old = "Sun, 06 Nov 1994 08:49:37 GMT"
    for if_match in ("*", f'"other", {etag}'):
        resp = client.get(url, headers={"If-Match": if_match})
        assert (resp.status_code, len(resp.data)) == (200, 5000), (if_match, resp.data[:200])
        resp = client.get(url, headers={"If-Match": if_match, "Range": "bytes=100-"})
        assert (resp.status_code, len(resp.data)) == (206, 4900), if_match
        # If-Match decides alone: an If-Unmodified-Since beside it is not looked at.
        resp = client.get(url, headers={"If-Match": if_match, "If-Unmodified-Since": old})
        assert resp.status_code == 200, if_match
        resp = client.get(url, headers={"If-Match": if_match, "If-None-Match": etag})
        assert (resp.status_code, resp.data) == (304, b""), if_match
    assert_json_error(client.get(url, headers={"If-Match": f"W/{etag}"}), 412)
    assert_json_error(client.get(f"/api/v1/videos/{vid}/artifacts/nope.jpg",
                                 headers={"If-Match": "*"}), 404)


def test_if_unmodified_since_on_an_artifact_is_honoured(client, settings, clip):
    """RFC 9110 13.1.4 on a download that states its Last-Modified: a resumed download
    whose date no longer holds (a newer run replaced the file) is a JSON 412, before Range;
    the file is served while the date holds. Beside If-Match, or not one valid HTTP-date,
    the header is ignored."""
    vid = upload_ok(client, clip)["id"]
    thumbnails = {"storyboard.jpg": b"y", "storyboard.vtt": b"W"}
    publish_files(settings, vid, "thumbnails", {"poster.jpg": b"p" * 5000, **thumbnails})
    [old] = (settings.media_root / "videos" / vid).rglob("poster.jpg")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))  # made by an earlier run
    url = f"/api/v1/videos/{vid}/artifacts/poster.jpg"
    first = client.get(url)
    stamp, etag = first.headers["Last-Modified"], first.headers["ETag"]
    resp = client.get(url, headers={"If-Unmodified-Since": stamp, "Range": "bytes=100-"})
    assert (resp.status_code, resp.data) == (206, b"p" * 4900)

    publish_files(settings, vid, "thumbnails", {"poster.jpg": b"q" * 6000, **thumbnails})
    for headers in ({"If-Unmodified-Since": stamp},
                    {"If-Unmodified-Since": stamp, "Range": "bytes=100-"},
                    {"If-Unmodified-Since": stamp, "If-None-Match": etag}):
        resp = client.get(url, headers=headers)
        body = assert_json_error(resp, 412)
        assert b"qqq" not in resp.data and "changed since" in body["message"], headers
        assert stamp in body["message"], body
    # Ignored: with If-Match (which decides alone), and when it is no valid HTTP-date.
    new_etag = client.get(url).headers["ETag"]
    resp = client.get(url, headers={"If-Match": new_etag, "If-Unmodified-Since": stamp})
    assert (resp.status_code, resp.data) == (200, b"q" * 6000)
    for junk in ("yesterday", f"{stamp}, {stamp}", "0"):
        resp = client.get(url, headers={"If-Unmodified-Since": junk})
        assert (resp.status_code, resp.data) == (200, b"q" * 6000), junk
    later = client.get(url).headers["Last-Modified"]
    resp = client.get(url, headers={"If-Unmodified-Since": later})
    assert (resp.status_code, resp.data) == (200, b"q" * 6000)


def test_writes_refuse_if_match_tags_and_change_nothing(client, clip, settings):
    """A video (and the list) states no ETag or Last-Modified (README, "Conditional
    requests"): If-Match naming tags can match none, so every write is a 412 that does
    nothing, saying so in lowercase as every other message does (it began "A video");
    If-Match: * holds, If-Unmodified-Since is ignored, an unknown video stays 404."""
    vid = upload_ok(client, clip)["id"]
    headers = client.get(f"/api/v1/videos/{vid}").headers
    assert "Last-Modified" not in headers and "ETag" not in headers
    tagged = {"If-Match": '"x"'}
    for method, path in (("post", "cancel"), ("post", "run_sync"), ("post", "reprocess"),
                         ("delete", "")):
        url = f"/api/v1/videos/{vid}/{path}".rstrip("/")
        body = assert_json_error(getattr(client, method)(url, headers=tagged), 412)
        # Lowercase, as the API's other messages start ("video <id> not found", ...).
        assert body["message"].startswith("a video has no entity tag (ETag), so the If-Match"), body
    assert client.get(f"/api/v1/videos/{vid}").status_code == 200  # not deleted
    assert progress_of(client, vid)["task_id"] is None  # no run started
    with clip.open("rb") as fh:
        resp = client.post("/api/v1/videos", headers=tagged,
                           data={"file": (fh, "again.mp4")}, content_type="multipart/form-data")
    assert assert_json_error(resp, 412)["message"].startswith("the list of videos has no entity")
    assert [v["id"] for v in client.get("/api/v1/videos").get_json()] == [vid]
    staging = settings.media_root / "staging"
    assert not staging.exists() or not any(staging.iterdir())
    unknown = "0b6f5d6e-0000-4000-8000-000000000001"
    assert client.delete(f"/api/v1/videos/{unknown}", headers=tagged).status_code == 404
    assert client.post(f"/api/v1/videos/{unknown}/run_sync", headers=tagged).status_code == 404
    # If-Match: * holds (the video exists); If-Unmodified-Since has no date to compare with.
    anything = {"If-Match": "*", "If-Unmodified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"}
    assert client.post(f"/api/v1/videos/{vid}/run_sync", headers=anything).status_code == 202
    assert client.post(f"/api/v1/videos/{vid}/cancel", headers=anything).status_code == 200
    assert client.delete(f"/api/v1/videos/{vid}", headers=anything).status_code == 204


def test_unexpected_error_is_json_500_without_traceback(app, client, monkeypatch):
    from webapp.services import ingest

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(ingest, "list_videos", broken)
    app.config["TESTING"] = False
    body = assert_json_error(client.get("/api/v1/videos"), 500)
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/api/openapi.json").get_json()
    paths = spec["paths"]
    expected = {
        "/api/v1/videos": {"get", "post"},
        "/api/v1/videos/{video_id}": {"get", "delete"},
        "/api/v1/videos/{video_id}/run_sync": {"post"},
        "/api/v1/videos/{video_id}/reprocess": {"get", "post"},
        "/api/v1/videos/{video_id}/cancel": {"post"},
        "/api/v1/videos/{video_id}/artifacts": {"get"},
        "/api/v1/videos/{video_id}/artifacts/{name}": {"get"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) >= methods, path
    assert set(paths["/api/v1/videos/{video_id}/run_sync"]["post"]["responses"]) >= {
        "202", "404", "409", "422", "503"}
    schemas = spec["components"]["schemas"]
    assert {"AsyncTask", "TaskProgress", "SubTaskProgress", "Video", "Error"} <= set(schemas)
    detail = schemas["SubTaskProgress"]["properties"]["error_detail"]
    assert detail.get("nullable") or "null" in detail.get("type", [])
    assert "raw output" in detail["description"] and "bug report" in detail["description"]


def test_every_operation_has_its_own_stable_operation_id(client):
    """Client generators (openapi-generator, openapi-python-client) name their methods after
    operationId; without one they make names of the path and method, which change with it."""
    spec = client.get("/api/openapi.json").get_json()
    ids = {(method, path): op.get("operationId") for path, item in spec["paths"].items()
           for method, op in item.items() if method in ("get", "post", "put", "delete")}
    assert None not in ids.values(), ids
    assert len(set(ids.values())) == len(ids)
    assert ids[("post", "/api/v1/videos")] == "uploadVideo"
    assert ids[("get", "/api/v1/videos/{video_id}/reprocess")] == "getProgress"
    assert ids[("post", "/api/v1/videos/{video_id}/reprocess")] == "reprocess"


def test_openapi_documents_the_location_header_of_201_and_202(client, clip):
    """DESIGN: 202 answers carry Location, the progress URL (and a 201 the new video's URL);
    a client generated from the description must be able to find it there."""
    paths = client.get("/api/openapi.json").get_json()["paths"]
    documented = {
        ("/api/v1/videos", "post", "201"),
        ("/api/v1/videos/{video_id}/run_sync", "post", "202"),
        ("/api/v1/videos/{video_id}/reprocess", "post", "202"),
    }
    for path, method, status in documented:
        headers = paths[path][method]["responses"][status].get("headers", {})
        assert headers.get("Location", {}).get("required") is True, (path, status, headers)
    created = upload_ok(client, clip)
    started = client.post(f"/api/v1/videos/{created['id']}/reprocess")
    assert started.headers["Location"] == started.get_json()["progress_url"]


def test_bodiless_answers_name_no_content_type(client, settings, clip):
    """A 204 or 304 has no content, so no type of content either (RFC 9110 15.3.5): a
    DELETE's 204 said application/json over its empty body, the pages' HX-Redirect text/html."""
    vid = upload_ok(client, clip)["id"]
    publish_files(settings, vid, "thumbnails", {"poster.jpg": b"p" * 100})
    url = f"/api/v1/videos/{vid}/artifacts/poster.jpg"
    progress_url = f"/api/v1/videos/{vid}/reprocess"
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text)[1]
    answers = [
        client.get(url, headers={"If-None-Match": client.get(url).headers["ETag"]}),
        client.get(progress_url,
                   headers={"If-None-Match": client.get(progress_url).headers["ETag"]}),
        client.delete(f"/api/v1/videos/{vid}"),
        client.post(f"/videos/{upload_ok(client, clip)['id']}/delete",
                    headers={"HX-Request": "true", "X-CSRFToken": token}),
    ]
    assert [a.status_code for a in answers] == [304, 304, 204, 204]
    for answer in answers:
        assert answer.data == b"" and "Content-Type" not in answer.headers, answer.headers


def test_openapi_documents_the_headers_of_downloads(client, settings, clip):
    """A client generated from the description resumes and revalidates downloads with the
    validators and ranges it is told of: they were sent but not documented (no headers on
    the artifact's 200, 206, 304 and 416, nor on transcript.txt's 200). Each documented
    header is sent."""
    paths = client.get("/api/openapi.json").get_json()["paths"]
    responses = paths["/api/v1/videos/{video_id}/artifacts/{name}"]["get"]["responses"]
    vid = upload_ok(client, clip)["id"]
    publish_files(settings, vid, "thumbnails", {"poster.jpg": b"p" * 100,
                                                "storyboard.jpg": b"y", "storyboard.vtt": b"W"})
    url = f"/api/v1/videos/{vid}/artifacts/poster.jpg"
    etag = client.get(url).headers["ETag"]
    answers = {"200": client.get(url), "206": client.get(url, headers={"Range": "bytes=0-9"}),
               "304": client.get(url, headers={"If-None-Match": etag}),
               "416": client.get(url, headers={"Range": "bytes=100-"})}
    expected = {"200": {"ETag", "Last-Modified", "Accept-Ranges", "Cache-Control",
                        "Content-Disposition"},
                "206": {"ETag", "Last-Modified", "Accept-Ranges", "Cache-Control",
                        "Content-Disposition", "Content-Range"},
                "304": {"ETag", "Cache-Control"}, "416": {"Content-Range"}}
    for status, names in expected.items():
        documented = responses[status].get("headers", {})
        assert set(documented) == names, (status, documented)
        resp = answers[status]
        assert resp.status_code == int(status)
        assert all(resp.headers.get(name) for name in names), (status, resp.headers)
    text = paths["/api/v1/videos/{video_id}/transcript.txt"]["get"]["responses"]
    assert set(text["200"].get("headers", {})) == {"Content-Disposition", "Cache-Control", "ETag"}
    assert set(text["304"].get("headers", {})) == {"ETag"}


def test_openapi_documents_the_request_headers_each_operation_honours(client):
    """The conditional and range headers a client sends (README, "Conditional requests")
    were documented on the progress poll alone (If-None-Match): a client generated from the
    description had no Range or If-None-Match for a download, nor If-Match for a write."""
    paths = client.get("/api/openapi.json").get_json()["paths"]
    video = "/api/v1/videos/{video_id}"
    expected = {
        ("post", "/api/v1/videos"): {"If-Match"},
        ("delete", video): {"If-Match"},
        ("post", f"{video}/run_sync"): {"If-Match"},
        ("post", f"{video}/reprocess"): {"If-Match"},
        ("post", f"{video}/cancel"): {"If-Match"},
        ("get", f"{video}/reprocess"): {"If-None-Match"},
        ("get", f"{video}/transcript.txt"): {"If-None-Match", "If-Match"},
        ("get", f"{video}/artifacts/{{name}}"): {"Range", "If-Range", "If-None-Match",
                                                 "If-Modified-Since", "If-Match",
                                                 "If-Unmodified-Since"},
    }
    for path, item in paths.items():
        for method, op in item.items():
            if method == "parameters":
                continue
            headers = [p for p in op.get("parameters", []) if p["in"] == "header"]
            assert {p["name"] for p in headers} == expected.get((method, path), set()), (
                method, path)
            assert all(not p["required"] and p["description"] for p in headers), headers
    for mode in ("run_sync", "reprocess"):  # the query's options are still there beside them
        parameters = paths[f"{video}/{mode}"]["post"]["parameters"]
        assert {p["name"] for p in parameters if p["in"] == "query"} == {
            "force", "language", "translate"}, mode


def test_transcript_text_is_revalidated_by_its_etag(client, settings, clip):
    """A client keeping the downloaded transcript asks again with its ETag: a 304 while the
    transcript is the same, the new text (and another ETag) once a run replaced it."""
    vid = upload_ok(client, clip)["id"]
    url = f"/api/v1/videos/{vid}/transcript.txt"
    publish_files(settings, vid, "transcribe", transcript_files([(0.0, 1.0, "hello there")]),
                  segments=[(0.0, 1.0, "hello there")])
    first = client.get(url)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and etag.startswith('"'), first.headers  # strong
    same = client.get(url, headers={"If-None-Match": etag})
    assert (same.status_code, same.data, same.headers.get("ETag")) == (304, b"", etag)
    publish_files(settings, vid, "transcribe", transcript_files([(0.0, 1.0, "goodbye now")]),
                  segments=[(0.0, 1.0, "goodbye now")])
    newer = client.get(url, headers={"If-None-Match": etag})
    assert (newer.status_code, newer.get_data(as_text=True)) == (200, "goodbye now\n")
    assert newer.headers["ETag"] != etag


def test_transcript_text_if_match_is_a_documented_json_412(client, settings, clip):
    """If-Match on transcript.txt (a client making sure the text it resumes or compares is
    still the one it has): werkzeug answered one that no longer holds with a 412 carrying
    the whole transcript as its body, text/plain, where every error under /api is JSON and
    the description listed no 412; and `If-Match: *`, which any transcript there is
    matches, with that 412 too. Now a JSON 412 as for an artifact, and `*` or the text's own
    ETag serve the text (an If-None-Match naming it still gets its 304)."""
    from tests.test_schemathesis import conforms

    vid = upload_ok(client, clip)["id"]
    url = f"/api/v1/videos/{vid}/transcript.txt"
    publish_files(settings, vid, "transcribe", transcript_files([(0.0, 1.0, "hello there")]),
                  segments=[(0.0, 1.0, "hello there")])
    etag = client.get(url).headers["ETag"]
    path = "/api/v1/videos/{video_id}/transcript.txt"
    for sent in ('"an-older-copy"', f"W/{etag}"):  # strong comparison: a weak tag never holds
        stale = conforms(client.get(url, headers={"If-Match": sent}), path, "GET", 412)
        assert "changed" in assert_json_error(stale, 412)["message"]
    for sent in ("*", etag, f'"other", {etag}'):
        held = conforms(client.get(url, headers={"If-Match": sent}), path, "GET", 200)
        assert held.get_data(as_text=True) == "hello there\n"
    both = client.get(url, headers={"If-Match": etag, "If-None-Match": etag})
    assert (both.status_code, both.data) == (304, b"")
    gone = client.get(f"/api/v1/videos/{upload_ok(client, clip)['id']}/transcript.txt",
                      headers={"If-Match": "*"})
    assert_json_error(gone, 404)  # no transcript: nothing for `*` to match


def test_transcript_text_of_a_video_named_beyond_latin_1_is_served(client, settings, clip):
    """transcript.txt is named after the video. A name beyond Latin-1 (Chinese, an emoji)
    went into Content-Disposition as it was, which a header cannot carry: gunicorn answered
    a bare 500 (the test client does not check). Beyond ASCII it is now filename* (RFC 6266),
    beside an ASCII filename."""
    names = {
        "日本語 🎬.mp4": "attachment; filename=transcript.txt; "
                        "filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E%20%F0%9F%8E%AC.txt",
        "café.mp4": "attachment; filename=cafe.txt; filename*=UTF-8''caf%C3%A9.txt",
        "my talk.mp4": 'attachment; filename="my talk.txt"',
    }
    for name, disposition in names.items():
        with open(clip, "rb") as fh:
            vid = client.post("/api/v1/videos", data={"file": (fh, name)}).get_json()["id"]
        publish_files(settings, vid, "transcribe",
                      transcript_files([(0.0, 1.0, "hello there")]),
                      segments=[(0.0, 1.0, "hello there")])
        resp = client.get(f"/api/v1/videos/{vid}/transcript.txt")
        assert (resp.status_code, resp.get_data(as_text=True)) == (200, "hello there\n")
        header = resp.headers["Content-Disposition"]
        assert header == disposition and header.isascii(), name


def test_transcript_text_of_a_long_name_fits_a_file_system(client, settings, clip):
    """A video may be named with 255 characters; in Chinese that is 765 bytes of UTF-8, and
    `<name>.txt` a file name no usual file system takes (255 bytes at most): the download's
    name is cut to whole characters that fit."""
    name = "广州" * 125 + "市.mp4"  # 255 characters, the most a name keeps
    with open(clip, "rb") as fh:
        vid = client.post("/api/v1/videos", data={"file": (fh, name)}).get_json()["id"]
    assert client.get(f"/api/v1/videos/{vid}").get_json()["original_filename"] == name
    publish_files(settings, vid, "transcribe", transcript_files([(0.0, 1.0, "hello there")]),
                  segments=[(0.0, 1.0, "hello there")])
    header = client.get(f"/api/v1/videos/{vid}/transcript.txt").headers["Content-Disposition"]
    encoded = header.split("filename*=UTF-8''", 1)[1]
    download = unquote(encoded)
    assert download.endswith(".txt") and len(download.encode()) <= 255, download
    assert download == name[:len(download) - 4] + ".txt"  # whole characters, from the start
    assert len(download.encode()) > 250  # cut no more than a character needs


def test_artifacts_are_named_after_the_video(client, settings, clip):
    """An artifact's Content-Disposition names it `<the video's name>.<artifact>`: saved
    from a browser, every video's outputs were preview.mp4, captions.vtt, ..."""
    names = {
        "my talk.mp4": 'inline; filename="my talk.captions.vtt"',
        "日本語 🎬.mov": "inline; filename=captions.vtt; filename*=UTF-8''"
                        "%E6%97%A5%E6%9C%AC%E8%AA%9E%20%F0%9F%8E%AC.captions.vtt",
        ".mp4": "inline; filename=captions.vtt",  # nothing to name it after
        # no leading dot (a hidden file) nor the space after it: it was " x.captions.vtt"
        ". x .mp4": 'inline; filename=x.captions.vtt',
    }
    for name, disposition in names.items():
        with open(clip, "rb") as fh:
            vid = client.post("/api/v1/videos", data={"file": (fh, name)}).get_json()["id"]
        publish_files(settings, vid, "transcribe", transcript_files([(0.0, 1.0, "hi")]),
                      segments=[(0.0, 1.0, "hi")])
        resp = client.get(f"/api/v1/videos/{vid}/artifacts/captions.vtt")
        assert resp.status_code == 200
        assert resp.headers["Content-Disposition"] == disposition, name


def test_docs_page_uses_only_vendored_assets(client):
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in html
    assert "//cdn" not in html and "unpkg" not in html and "jsdelivr" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        assert client.get(f"/static/vendor/swagger-ui/{asset}").status_code == 200


def test_healthz_reports_database_and_redis(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json()["checks"] == {"database": "ok", "redis": "ok", "media": "ok"}
    assert resp.get_json()["workers"] == 0  # none on this test's queue: still healthy


def test_healthz_names_redis_when_it_is_down(settings):
    app = create_app(Settings.from_env(redis_url="redis://127.0.0.1:1/0"))
    resp = app.test_client().get("/healthz")
    assert resp.status_code == 503
    assert resp.get_json()["checks"]["redis"].startswith("down")
    assert resp.get_json()["checks"]["database"] == "ok"
    assert resp.get_json()["workers"] is None  # unknown
