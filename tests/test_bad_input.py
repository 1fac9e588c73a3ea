"""Hostile and broken input: every case is really sent, and must end in a clear 4xx (nothing
kept) or in a run that fails with a readable reason — never a 500, a short "completed"
output, or a file written outside MEDIA_ROOT.

Already covered elsewhere, not repeated here: zero-byte / text / noise / image uploads and an
upload over the limit *with* Content-Length (test_api_videos), force=maybe and malformed JSON
on run_sync (test_api_processing), a source that goes bad after upload (test_pipeline).
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import http.client
import io
import json
import re
import shutil
import socket
import struct
import tempfile
import threading
import unicodedata
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from bs4 import BeautifulSoup
from werkzeug.serving import make_server

from tests import mediagen
from tests.conftest import run_worker, start_worker, stop_worker
from tests.helpers import (
    assert_json_error,
    progress_of,
    publish_files,
    small_disk,
    upload,
    upload_ok,
    wait_for,
)
from webapp import create_app
from webapp.config import Settings
from webapp.db import dispose
from webapp.models import ProcessingTask, Video
from webapp.services.storage import ARTIFACT_NAMES


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return mediagen.make_video(tmp_path_factory.mktemp("m") / "clip.mp4", duration=1.0)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """An upload cut off at 55 %: moov is first (+faststart), so it still probes as 10 s."""
    folder = tmp_path_factory.mktemp("m")
    whole = mediagen.make_video(folder / "whole.mp4", duration=10.0, size="160x120",
                                faststart=True)
    return mediagen.make_truncated(whole, folder / "interrupted.mp4", fraction=0.55)


def media_files(settings) -> list[str]:
    root = settings.media_root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def files_outside_media(settings) -> set[str]:
    """Every file in the session's temporary tree except MEDIA_ROOT and the SQLite database.

    MEDIA_ROOT is <tmp>/<test>/media, so `../../x` from a video folder would land in here.
    """
    base = settings.media_root.parent.parent
    return {str(p) for p in base.rglob("*")
            if p.is_file() and settings.media_root not in p.parents
            and not p.name.startswith("vidpipe.db")}


def no_rows(db_session) -> None:
    db_session.expire_all()
    assert db_session.query(Video).count() == 0
    assert db_session.query(ProcessingTask).count() == 0


def multipart(disposition: bytes, content: bytes) -> tuple[bytes, str]:
    """A multipart body with exactly these Content-Disposition parameters (no re-encoding)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; ' + disposition + b"\r\n"
            + b"Content-Type: application/octet-stream\r\n\r\n"
            + content + f"\r\n--{boundary}--\r\n".encode())
    return body, f"multipart/form-data; boundary={boundary}"


# --- broken media ---------------------------------------------------------------------------


def test_interrupted_upload_is_refused_saying_where_it_ends(client, settings, db_session,
                                                           interrupted):
    """Its index still claims 10 s, but only about 5.5 s of data arrived."""
    before = files_outside_media(settings)
    body = assert_json_error(upload(client, interrupted, "holiday.mp4"), 422)
    match = re.fullmatch(r"the file ends at (\d+\.\d) s of 10\.0 s; upload it again",
                         body["message"])
    assert match, body
    assert 4.0 < float(match.group(1)) < 7.0, body
    no_rows(db_session)
    assert media_files(settings) == []  # nothing in staging/ or videos/
    assert files_outside_media(settings) == before


# Cut at half: containers whose header states the length whatever arrived after it.
CUT_KINDS = {
    "front.mp4": lambda d: mediagen.make_video(d / "front.mp4", 12.0, "160x120",
                                               faststart=True),
    "clip.mkv": lambda d: mediagen.make_media(d / "clip.mkv"),
    "clip.webm": lambda d: mediagen.make_media(d / "clip.webm"),
    "tone.wav": lambda d: mediagen.make_media(d / "tone.wav"),
    "tone.mp3": lambda d: mediagen.make_media(d / "tone.mp3"),
}


@pytest.fixture(scope="module")
def cut_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cut")
    return {name: mediagen.make_truncated(make(folder), folder / f"cut-{name}", 0.5)
            for name, make in CUT_KINDS.items()}


def test_cut_files_of_every_kind_are_refused_in_one_sentence(client, settings, db_session,
                                                             cut_files):
    for name, path in cut_files.items():
        body = assert_json_error(upload(client, path, name), 422)
        match = re.fullmatch(r"the file ends at (\d+\.\d) s of 12\.0 s; upload it again",
                             body["message"])
        assert match, (name, body)
        assert 3.0 < float(match.group(1)) < 9.0, (name, body)
        no_rows(db_session)
        assert media_files(settings) == [], name


@pytest.mark.e2e
def test_file_that_turns_bad_after_upload_fails_each_step_in_one_sentence(
        client, settings, interrupted):
    """What the upload check cannot see (the stored file damaged later) still fails cleanly:
    one sentence per failed step, ffmpeg's own words kept apart, no output left."""
    whole = interrupted.with_name("whole.mp4")
    before = files_outside_media(settings)
    vid = upload_ok(client, whole, "holiday.mp4")["id"]
    source = settings.media_root / "videos" / vid / "source.mp4"
    source.write_bytes(interrupted.read_bytes())
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    log = run_worker().stderr
    # An expected media failure is one log line per step, not a traceback.
    assert "Traceback" not in log, log[-3000:]
    assert re.search(r"WARNING .*failed: The [a-z ]+ could not be", log), log[-3000:]

    state = progress_of(client, vid)
    assert state["status"] == "failed" and state["progress"] < 100
    statuses = {s["name"]: s["status"] for s in state["subtasks"]}
    assert "completed" not in statuses.values(), statuses
    failed = [s for s in state["subtasks"] if s["status"] == "failed"]
    assert failed
    for step in failed:
        error = step["error"] or ""
        assert re.fullmatch(r"The [a-z ]+ could not be [a-z]+: [^\n]+\.", error), step
        assert not re.search(r"Traceback|ffmpeg failed|\[h264|\[aac|\[mov", error), step
        assert str(settings.media_root) not in error, step
        assert re.search(r"cut short|damaged", error), step
    # ffmpeg's own words are kept apart, for a bug report
    assert any(s["error_detail"] for s in failed), failed
    assert not [s for s in failed if s["error_detail"] and s["error_detail"] in s["error"]]
    # Nothing short left behind: no listed artifact and no file (not even a .part) on disk.
    assert client.get(f"/api/v1/videos/{vid}/artifacts").get_json() == []
    assert media_files(settings) == [f"videos/{vid}/source.mp4"]
    assert files_outside_media(settings) == before


DAMAGE_NOTE = re.compile(r"The source is damaged in places: (1 damaged frame was|\d+ damaged"
                         r" frames were) skipped or concealed, as players do\.")


@pytest.mark.e2e
def test_damaged_but_readable_files_give_every_output_and_mostly_garbage_fails(
        client, settings, tmp_path):
    """What players play is processed (docs/RELIABILITY.md, "Damaged sources"): an MP4
    with 4 KB of garbage in the middle gives every output, the damaged steps saying so in
    a note; MPEG-TS segments joined by `cat` give every output without one; a file that
    is mostly garbage still fails each step in one sentence and leaves nothing. One worker
    run for the three (test_file_that_turns_bad_after_upload_... covers a cut file)."""
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=3.0)
    damaged = mediagen.make_damaged(clip, tmp_path / "damaged.mp4", garbage=4096)
    joined = mediagen.make_joined_ts(tmp_path / "joined.ts")
    garbage = mediagen.make_damaged(clip, tmp_path / "garbage.mp4",
                                    garbage=int(clip.stat().st_size * 0.7), at=0.15)
    vids = {name: upload_ok(client, path, f"{name}{path.suffix}")["id"]
            for name, path in (("damaged", damaged), ("joined", joined),
                               ("garbage", garbage))}
    for vid in vids.values():
        assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    log = run_worker().stderr
    assert "Traceback" not in log, log[-3000:]

    for name in ("damaged", "joined"):
        state = progress_of(client, vids[name])
        assert state["status"] == "completed", (name, state)
        listed = client.get(f"/api/v1/videos/{vids[name]}/artifacts").get_json()
        assert sorted(a["name"] for a in listed) == sorted(ARTIFACT_NAMES), name
        # (a tone: the captions are empty, the transcript says so)
        assert all(a["size_bytes"] > 0 for a in listed
                   if not a["name"].startswith("captions")), (name, listed)
        notes = {s["name"]: s["error"] for s in state["subtasks"]}
        if name == "joined":  # nothing is lost at a join: nothing to say
            assert set(notes.values()) == {None}, notes
        else:  # the sound is hit (its frames are small and many): the audio step says so
            assert DAMAGE_NOTE.fullmatch(notes["extract_audio"] or ""), notes
            assert all(note is None or DAMAGE_NOTE.fullmatch(note) for note in notes.values())
        page = client.get(f"/videos/{vids[name]}").get_data(as_text=True)
        if name == "damaged":
            assert "The source is damaged in places" in page

    state = progress_of(client, vids["garbage"])
    assert state["status"] == "failed"
    failed = [s for s in state["subtasks"] if s["status"] == "failed"]
    assert {s["name"] for s in failed} >= {"extract_audio", "transcode"}, state["subtasks"]
    for step in failed:
        assert re.fullmatch(r"The [a-z ]+ could not be [a-z]+: the (audio|video|media) data"
                            r" is damaged \(\d+ frames could not be decoded\)\.",
                            step["error"] or ""), step
        assert step["error_detail"], step
    listed = client.get(f"/api/v1/videos/{vids['garbage']}/artifacts").get_json()
    assert not {a["name"] for a in listed} & {"audio.wav", "preview.mp4", "transcript.json"}


def _empty_wav() -> bytes:
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    return b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", 0)


NO_INDEX = ("the file is incomplete: its MP4 index (moov atom) is missing or cut off;"
            " upload it again")
BROKEN = [
    ("nothing-inside.wav", lambda folder: _empty_wav(), "no data"),
    ("header-only.mp4",
     lambda folder: mediagen.make_video(folder / "v.mp4", faststart=True).read_bytes()[:64],
     NO_INDEX),
    ("moov-at-end-cut.mp4",  # an interrupted upload of an ordinary MP4 has no index at all
     lambda folder: mediagen.make_truncated(mediagen.make_video(folder / "v.mp4"),
                                            folder / "cut.mp4", 0.4).read_bytes(),
     NO_INDEX),
    ("page.mp4", lambda folder: b"<!doctype html><title>x</title><p>not a video</p>" * 20,
     "not a playable audio or video file: invalid data found when processing input"),
    ("zeros.mov", lambda folder: bytes(256 * 1024), "not a playable"),
    ("still.mp4", lambda folder: mediagen.make_image(folder / "i.png").read_bytes(),
     "not a playable"),
    # Whole MP4s with nothing to play are not "incomplete": they say what they hold.
    ("one-frame.mp4", lambda folder: mediagen.make_single_frame(folder / "f.mp4").read_bytes(),
     "not a playable audio or video file: it holds a still picture and no sound"),
    ("subtitles.mp4", lambda folder: mediagen.make_subtitles_only(folder / "s.mp4").read_bytes(),
     "not a playable audio or video file: it has no audio or video stream"),
    ("stopped-at-once.m4a",
     lambda folder: mediagen.make_empty_recording(folder / "e.m4a").read_bytes(),
     "not a playable audio or video file: it has no audio or video stream"),
]


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory) -> list[tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("broken")
    files = []
    for name, make, why in BROKEN:
        path = folder / name
        path.write_bytes(make(folder))
        files.append((path, why))
    return files


def test_broken_media_is_422_with_a_readable_reason_and_leaves_nothing(
        client, settings, db_session, broken_files):
    for path, why in broken_files:
        body = assert_json_error(upload(client, path), 422)
        assert why in body["message"], (path.name, body)
        assert body["message"].count(":") <= 1 and "\n" not in body["message"], body
        # The reason names neither the staged file's random name nor server paths.
        assert not re.search(r"[0-9a-f]{32}", body["message"]), body
        assert str(settings.media_root) not in body["message"]
        no_rows(db_session)
        assert media_files(settings) == [], path.name


# --- oversized and unbounded uploads --------------------------------------------------------


class CountingStream(io.BytesIO):
    """A request body that remembers how far the app read into it."""

    @property
    def read_bytes(self) -> int:
        return self.tell()


LIMIT = 256 * 1024


@pytest.fixture
def limited_app(settings):
    return create_app(Settings.from_env(max_upload_bytes=LIMIT))


def test_chunked_upload_over_the_limit_is_413_before_it_is_stored(limited_app, settings,
                                                                   db_session):
    """No Content-Length (chunked), as a real server passes it: the limit stops the reading."""
    body, content_type = multipart(b'filename="big.mp4"', b"\0" * (8 * LIMIT))
    stream = CountingStream(body)
    resp = limited_app.test_client().post(
        "/api/v1/videos", input_stream=stream, content_type=content_type,
        # What werkzeug's server and gunicorn put in the environ for a chunked body.
        environ_overrides={"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True,
                           "CONTENT_LENGTH": ""},
    )
    assert resp.request.content_length is None
    assert f"{LIMIT:,} bytes" in assert_json_error(resp, 413)["message"]
    assert stream.read_bytes < 2 * LIMIT  # it stopped at the limit, not at the end
    no_rows(db_session)
    assert media_files(settings) == []


def test_unbounded_upload_the_server_cannot_end_is_411(limited_app, settings, db_session, clip):
    body, content_type = multipart(b'filename="clip.mp4"', clip.read_bytes())
    resp = limited_app.test_client().post(
        "/api/v1/videos", input_stream=io.BytesIO(body), content_type=content_type,
        environ_overrides={"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": ""},
    )
    assert "Content-Length" in assert_json_error(resp, 411)["message"]
    no_rows(db_session)
    assert media_files(settings) == []


@pytest.fixture
def live_server(limited_app):
    """The app behind werkzeug's own HTTP server, on a free loopback port."""
    server = make_server("127.0.0.1", 0, limited_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join(10)


def post_chunked(port: int, body: bytes, content_type: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        chunks = (body[i:i + 64 * 1024] for i in range(0, len(body), 64 * 1024))
        conn.request("POST", "/api/v1/videos", body=chunks, encode_chunked=True,
                     headers={"Content-Type": content_type})
        resp = conn.getresponse()
        assert resp.getheader("Content-Type") == "application/json"
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_real_chunked_uploads_over_http(live_server, settings, db_session, clip):
    """Over a socket: Transfer-Encoding: chunked and no Content-Length at all."""
    # 4x the limit: big enough to be refused, small enough for the socket buffers, so the
    # client has sent it all before the server answers and closes.
    big, content_type = multipart(b'filename="big.mp4"', b"\0" * (4 * LIMIT))
    status, body = post_chunked(live_server, big, content_type)
    assert (status, body["code"]) == (413, 413), body
    assert f"{LIMIT:,} bytes" in body["message"]
    no_rows(db_session)
    assert media_files(settings) == []

    empty, content_type = multipart(b'filename="empty.mp4"', b"")
    status, body = post_chunked(live_server, empty, content_type)
    assert (status, body["message"]) == (422, "the uploaded file is empty")
    assert media_files(settings) == []

    # The same path takes a small file: the 413 above is the limit, not chunking.
    small, content_type = multipart(b'filename="clip.mp4"', clip.read_bytes())
    status, body = post_chunked(live_server, small, content_type)
    assert status == 201, body
    assert media_files(settings) == [f"videos/{body['id']}/source.mp4"]


def test_a_windows_path_sent_raw_as_old_browsers_do_keeps_its_last_component(
        live_server, settings, db_session, clip):
    """Internet Explorer and legacy Edge send the whole path, backslashes unescaped; it was
    stored as "C:Usersmetalk.mp4" (werkzeug reads a backslash as an escape). Over a socket,
    with a Content-Length as those browsers send it. An escaped path, a UNC path and an
    escaped quote are read as RFC 9110 says."""
    cases = [(rb'filename="C:\Users\me\talk.mp4"', "talk.mp4"),
             (rb'filename="\\nas\share\My talk.mp4"', "My talk.mp4"),
             (rb'filename="C:\\Users\\me\\escaped.mp4"', "escaped.mp4"),
             (rb'filename="say \"hi\".mp4"', 'say "hi".mp4')]
    for disposition, expected in cases:
        body, content_type = multipart(disposition, clip.read_bytes())
        conn = http.client.HTTPConnection("127.0.0.1", live_server, timeout=30)
        try:
            conn.request("POST", "/api/v1/videos", body=body,
                         headers={"Content-Type": content_type})
            resp = conn.getresponse()
            status, video = resp.status, json.loads(resp.read())
        finally:
            conn.close()
        assert (status, video["original_filename"]) == (201, expected), disposition
        db_session.expire_all()
        assert db_session.get(Video, video["id"]).original_filename == expected


def test_form_bombs_are_413_and_leave_nothing(client, settings, db_session):
    many_parts = {f"field{i}": "x" for i in range(1500)}
    big_field = {"note": "x" * (2 * 1024 * 1024)}
    for extra in (many_parts, big_field):
        data = {**extra, "file": (io.BytesIO(b"\0" * 1000), "a.mp4")}
        body = assert_json_error(client.post("/api/v1/videos", data=data), 413)
        assert "form" in body["message"], body
    no_rows(db_session)
    assert media_files(settings) == []


def test_upload_that_is_not_multipart_is_415(client, settings, db_session):
    for kwargs in [
        {"json": {"file": "clip.mp4"}},
        {"data": "file=clip.mp4", "content_type": "application/x-www-form-urlencoded"},
        {"data": b"\x00\x00\x00\x18ftypmp42", "content_type": "video/mp4"},
        {"data": "", "content_type": ""},
    ]:
        resp = client.post("/api/v1/videos", **kwargs)
        assert "multipart/form-data" in assert_json_error(resp, 415)["message"]
    no_rows(db_session)
    assert media_files(settings) == []


MALFORMED_MULTIPART = [
    (b"file=not-a-file", "multipart/form-data"),  # no boundary
    (b"garbage without any boundary", "multipart/form-data; boundary=xyz"),
    (b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\njust text\r\n--b--\r\n',
     "multipart/form-data; boundary=b"),  # a text field, not a file
    (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
     b"\x00\x01 cut before the closing boundary", "multipart/form-data; boundary=b"),
]


def test_malformed_multipart_is_4xx_and_leaves_nothing(client, settings, db_session):
    for body, content_type in MALFORMED_MULTIPART:
        resp = client.post("/api/v1/videos", data=body, content_type=content_type)
        assert 400 <= resp.status_code < 500, (body[:60], resp.status_code, resp.data[:300])
        assert_json_error(resp, resp.status_code)
    no_rows(db_session)
    assert media_files(settings) == []


# --- file names ------------------------------------------------------------------------------

# (sent name, exact cleaned name expected back); {m} is replaced by a per-test marker so that a
# file written anywhere under that name would be found.
NAMES = [
    ("../../../../{m}.mp4", "{m}.mp4"),
    ("..\\..\\..\\{m}.mp4", "{m}.mp4"),
    ("/tmp/{m}.mp4", "{m}.mp4"),
    ("C:\\Users\\x\\{m}.mp4", "{m}.mp4"),
    ("videos/../../{m}", "{m}"),
    ("Fête de l’été — ビデオ 🎬 {m}.mp4", "Fête de l’été — ビデオ 🎬 {m}.mp4"),
    ("e\u0301cole {m}.MOV", "\u00e9cole {m}.MOV"),  # stored NFC
    ("invoice\u202e4pm.{m}.exe", "invoice4pm.{m}.exe"),  # right-to-left override
    ("\u2066{m}\u2069\u200f\u200b.mp4", "{m}.mp4"),  # bidi isolates, RLM, zero-width space
    ("nul\x00byte {m}.mp4", "nulbyte {m}.mp4"),
    ("line\r\nX-Injected: 1 {m}.mp4", "lineX-Injected: 1 {m}.mp4"),
    ("para\u2028graph\u2029 {m}.mp4", "paragraph {m}.mp4"),
    ("\x1b[31mred\x7f {m}.mp4", "[31mred {m}.mp4"),
    ("<img src=x onerror=alert(1)> {m}.mp4", "<img src=x onerror=alert(1)> {m}.mp4"),
    ("{m}" + "x" * 1000 + ".mp4", "{m}" + "x" * (255 - 4 - 32) + ".mp4"),
    ("...", "upload"),
    ("..", "upload"),
    ("   ", "upload"),
    (". . .", "upload"),
]


@pytest.mark.parametrize("transport", ["rfc5987", "raw"])
def test_hostile_filenames_are_only_cleaned_metadata(client, settings, db_session, clip,
                                                     transport):
    before = files_outside_media(settings)
    for template, expected_template in NAMES:
        marker = uuid.uuid4().hex
        sent, expected = template.format(m=marker), expected_template.format(m=marker)
        check_one_filename(client, settings, db_session, clip, transport, sent, expected)
        assert not list(Path(tempfile.gettempdir()).glob(f"*{marker}*")), sent
    assert files_outside_media(settings) == before


def check_one_filename(client, settings, db_session, clip, transport, sent, expected):
    if transport == "rfc5987":  # filename*=UTF-8''…: every code point arrives as sent
        disposition = b"filename*=UTF-8''" + quote(sent, safe="").encode()
    else:  # the raw bytes in a quoted filename="…", as a careless or hostile client sends it
        disposition = b'filename="' + sent.encode() + b'"'
    body, content_type = multipart(disposition, clip.read_bytes())
    resp = client.post("/api/v1/videos", data=body, content_type=content_type)
    if resp.status_code != 201:
        # Only a raw CR/LF can break the part's headers; then the file is simply missing.
        assert transport == "raw" and "\r" in sent, (sent, resp.data[:300])
        assert_json_error(resp, 422)
        return
    video = resp.get_json()
    shown = video["original_filename"]
    if transport == "rfc5987":
        assert shown == expected, sent
    # Whatever the transport: a bare, printable, bounded name, or the placeholder.
    assert "/" not in shown and "\\" not in shown and shown.strip(". "), (sent, shown)
    assert not [c for c in shown if unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"}], shown
    assert 0 < len(shown) <= 255 and shown == unicodedata.normalize("NFC", shown), shown
    # Stored under a generated name; the original name is only in the row and the JSON.
    folder = settings.media_root / "videos" / video["id"]
    stored = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert len(stored) == 1 and re.fullmatch(r"source(\.[a-z0-9]{1,8})?", stored[0]), stored
    assert db_session.get(Video, video["id"]).original_filename == shown
    again = client.get(f"/api/v1/videos/{video['id']}")
    assert again.get_json()["original_filename"] == shown
    raw = again.get_data().rstrip(b"\n")
    assert not re.search(rb"[\x00-\x1f]", raw), raw  # JSON escapes whatever is left
    if "<img" in shown:  # and the HTML page shows it as text, not markup
        page = client.get(f"/videos/{video['id']}").get_data(as_text=True)
        assert "<img src=x" not in page and "&lt;img src=x" in page
    assert client.delete(f"/api/v1/videos/{video['id']}").status_code == 204
    assert media_files(settings) == []


# --- ids and artifact names in URLs ----------------------------------------------------------

HOSTILE_IDS = [
    "%2e%2e%2f",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%252e%252e%252f%252e%252e%252fetc%252fpasswd",  # double-encoded
    "..\\..\\..\\etc\\passwd",
    "..%5c..%5c..%5cetc%5cpasswd",
    "%2Fetc%2Fpasswd",
    "/etc/passwd",
    "%00",
    "{id}%00",
    "{id}%00.json",
    "{id}%2f..%2f{id}",
    "..%2f{id}",
    "{id}%20",
    "%20{id}",
    "{upper}",
    "%C0%AE%C0%AE%2F",  # overlong UTF-8 dots
    "%ff%fe",
    "a" * 4000,
    "{id}" * 100,
]


@pytest.fixture
def stored(client, settings, clip) -> dict:
    """A real video with a real poster, and a secret file next to MEDIA_ROOT's folders."""
    video = upload_ok(client, clip)
    folder = settings.media_root / "videos" / video["id"]
    poster = folder / "poster.jpg"
    mediagen.make_image(poster)
    task_id = publish_files(settings, video["id"], "thumbnails", {
        "poster.jpg": poster.read_bytes(), "storyboard.jpg": b"x", "storyboard.vtt": b"WEBVTT\n"})
    poster.unlink()
    secret = settings.media_root / "secret.txt"
    secret.write_text("do not serve")
    return {"id": video["id"], "folder": folder, "secret": secret, "task_id": task_id}


def test_traversal_and_odd_ids_are_404_on_every_route(client, stored):
    vid = stored["id"]
    for raw in HOSTILE_IDS:
        ident = raw.format(id=vid, upper=vid.upper())
        base = f"/api/v1/videos/{ident}"
        for method, path in [("GET", ""), ("GET", "/reprocess"), ("GET", "/artifacts"),
                             ("GET", "/artifacts/poster.jpg"), ("POST", "/run_sync"),
                             ("POST", "/reprocess"), ("POST", "/cancel"), ("DELETE", "")]:
            resp = client.open(base + path, method=method)
            assert resp.status_code == 404 and resp.is_json, (method, base + path,
                                                              resp.status_code)
            assert_json_error(resp, 404)
        for path in ("", "/panel", "/row"):
            resp = client.get(f"/videos/{ident}{path}")
            assert resp.status_code == 404, (f"/videos/{ident}{path}", resp.status_code)
            assert resp.mimetype == "text/html"
    # Nothing was deleted or started by any of it.
    # No hostile request started a run: the latest task is still the one that made the poster.
    latest = client.get(f"/api/v1/videos/{vid}").get_json()["processing"]["task_id"]
    assert latest == stored["task_id"]
    assert (stored["folder"] / "source.mp4").is_file() and stored["secret"].is_file()


HOSTILE_NAMES = [
    "source.mp4", "..%2fsource.mp4", "%2e%2e%2fsource.mp4", "%252e%252e%252fsource.mp4",
    "..\\source.mp4", "..%5csource.mp4", "..%2f..%2fsecret.txt", "%2Ftmp%2Fsecret.txt",
    "%2fetc%2fpasswd", ".", "..", "%2e", "%2e%2e", "artifacts", "%00", "poster.jpg%00",
    "poster.jpg%00.txt", "POSTER.JPG", "poster.jpg%20", "%20poster.jpg", "poster.jpg.",
    "%2e%2fposter.jpg", "poster.jpg%2f", "poster.jpg;.txt", "\uff50oster.jpg",
    "poster%2ejpg%2e%2e", "p" * 4000,
]


def test_artifact_names_of_every_shape_are_404(client, stored):
    vid = stored["id"]
    assert client.get(f"/api/v1/videos/{vid}/artifacts/poster.jpg").status_code == 200
    for name in HOSTILE_NAMES:
        url = f"/api/v1/videos/{vid}/artifacts/{name}"
        resp = client.get(url)
        assert resp.status_code == 404 and resp.is_json, (url, resp.status_code)
        assert_json_error(resp, 404)
        assert b"do not serve" not in resp.data


# --- parameters -----------------------------------------------------------------------------


@pytest.fixture
def video_id(client, clip) -> str:
    return upload_ok(client, clip)["id"]


BAD_TRIGGERS = [
    ({"query_string": "force=maybe"}, 422),
    ({"query_string": "force="}, 422),
    ({"query_string": "force=%00"}, 422),
    ({"json": {"force": "maybe"}}, 422),
    ({"json": {"force": None}}, 422),
    # JSON has booleans: marshmallow's other spellings were read as flags in a body
    # ({"force": 1} forced a run, {"force": "no"} did not), the OpenAPI saying boolean.
    ({"json": {"force": 1}}, 422),
    ({"json": {"force": 1.0}}, 422),
    ({"json": {"force": "yes"}}, 422),
    ({"json": {"force": "true"}}, 422),
    ({"json": {"force": "on"}}, 422),
    ({"json": {"force": 0}}, 422),
    ({"json": {"translate": 1}}, 422),
    ({"json": {"translate": "false"}}, 422),
    ({"json": {"force": True, "priority": 9}}, 422),
    ({"json": [{"force": True}]}, 422),
    ({"json": "force"}, 422),
    ({"json": 1}, 422),
    ({"data": "null", "content_type": "application/json"}, 422),
    ({"data": "{not json", "content_type": "application/json"}, 400),
    ({"data": b'{"force": "\xff"}', "content_type": "application/json"}, 400),
    # Nested deeper than Python's JSON parser can recurse: was a RecursionError, a 500.
    ({"data": "[" * 20000 + "]" * 20000, "content_type": "application/json"}, 400),
    ({"data": "[" + "0," * 40000 + "0]", "content_type": "application/json"}, 413),
    # Bodies the JSON parser would silently ignore: was a 202 *without* force.
    ({"data": "force=true", "content_type": "application/x-www-form-urlencoded"}, 415),
    ({"data": '{"force": true}', "content_type": "text/plain"}, 415),
    ({"data": {"force": "true"}, "content_type": "multipart/form-data"}, 415),
]


@pytest.mark.parametrize("mode", ["run_sync", "reprocess"])
def test_bad_trigger_parameters_are_4xx_and_start_nothing(client, db_session, video_id, mode):
    for kwargs, status in BAD_TRIGGERS:
        resp = client.post(f"/api/v1/videos/{video_id}/{mode}", **kwargs)
        assert resp.status_code == status, (kwargs, resp.status_code, resp.data[:300])
        assert_json_error(resp, status)
    db_session.expire_all()
    assert db_session.query(ProcessingTask).count() == 0


def test_a_chunked_options_body_over_64_kib_is_413(client, db_session, video_id):
    """Without Content-Length (chunked, as gunicorn passes it), werkzeug stopped reading at
    the 64 KiB limit without a word: the view saw the first 64 KiB, cut inside the JSON, and
    answered 400 "not valid JSON" where the same body with a Content-Length was a 413. A
    chunked body within the limit, even one of exactly 64 KiB, is still read whole."""
    chunked = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True,
               "CONTENT_LENGTH": ""}
    url = f"/api/v1/videos/{video_id}/run_sync"
    big = json.dumps({"language": "x" * 70_000}).encode()
    resp = client.post(url, input_stream=io.BytesIO(big), content_type="application/json",
                       environ_overrides=chunked)
    assert resp.request.content_length is None
    assert "65,536 bytes" in assert_json_error(resp, 413)["message"]
    db_session.expire_all()
    assert db_session.query(ProcessingTask).count() == 0
    padded = b'{"force": true' + b" " * (64 * 1024 - 15) + b"}"
    assert len(padded) == 64 * 1024
    resp = client.post(url, input_stream=io.BytesIO(padded), content_type="application/json",
                       environ_overrides=chunked)
    assert resp.status_code == 202, resp.get_json()


def test_compressed_bodies_are_415_saying_so(client, settings, db_session, video_id, clip):
    """Nothing decodes a Content-Encoding: read as they were, a gzipped options body was a
    400 "not valid JSON (Bytes decoding error ...)" and a gzipped upload a 400 "the upload is
    incomplete ... send it again", which sending it again does not change. RFC 9110 12.5.3:
    415, with the codings accepted (Accept-Encoding). Nothing is started or stored."""
    options = gzip.compress(b'{"force": true}')
    upload_body, content_type = multipart(b'filename="clip.mp4"', clip.read_bytes())
    for url, data, ctype in ((f"/api/v1/videos/{video_id}/run_sync", options,
                              "application/json"),
                             (f"/api/v1/videos/{video_id}/reprocess", options,
                              "application/json"),
                             ("/api/v1/videos", gzip.compress(upload_body), content_type)):
        resp = client.post(url, data=data, content_type=ctype,
                           headers={"Content-Encoding": "gzip"})
        body = assert_json_error(resp, 415)
        assert body["message"] == ("the body is compressed (Content-Encoding: gzip), which this "
                                   "server does not decode; send it uncompressed"), url
        assert resp.headers.get("Accept-Encoding") == "identity"
    db_session.expire_all()
    assert db_session.query(ProcessingTask).count() == 0
    assert db_session.query(Video).count() == 1  # the fixture's
    # identity is no compression at all.
    resp = client.post(f"/api/v1/videos/{video_id}/run_sync", json={"force": True},
                       headers={"Content-Encoding": "identity"})
    assert resp.status_code == 202, resp.get_json()


def test_json_bodies_not_in_utf8_say_to_send_utf8(client, db_session, video_id):
    """RFC 8259: JSON between systems MUST be UTF-8. UTF-16 and UTF-32 (PowerShell 5's
    Out-File, Notepad's "Unicode") were a 400 "not valid JSON (Bytes decoding error :
    invalid start byte ...)", Latin-1 likewise: now a sentence naming the encoding and the
    cure, and nothing starts. A UTF-8 byte order mark, which a parser MAY ignore, is."""
    url = f"/api/v1/videos/{video_id}/run_sync"
    options = '{"force": true, "language": "fr"}'
    cure = "send it in UTF-8, as JSON between systems must be (RFC 8259)"
    for encoding, name in (("utf-16", "UTF-16"), ("utf-16-le", "UTF-16 (little-endian)"),
                           ("utf-16-be", "UTF-16 (big-endian)"), ("utf-32", "UTF-32")):
        resp = client.post(url, data=options.encode(encoding),
                           content_type="application/json")
        assert assert_json_error(resp, 415)["message"] == (
            f"the JSON body is encoded in {name}; {cure}"), encoding
    resp = client.post(url, data='{"language": "fr", "x": "é"}'.encode("latin-1"),
                       content_type="application/json")
    assert assert_json_error(resp, 400)["message"] == (
        "the JSON body is not UTF-8 text (byte 26 is not part of a UTF-8 character: another "
        f"encoding, such as Latin-1?); {cure}")
    db_session.expire_all()
    assert db_session.query(ProcessingTask).count() == 0
    bom = codecs.BOM_UTF8
    resp = client.post(url, data=bom + b'{"forse": true}', content_type="application/json")
    assert assert_json_error(resp, 422)["message"] == (
        "JSON field `forse` is not an option this request takes")  # (read past the mark)
    resp = client.post(url, data=bom + options.encode(), content_type="application/json")
    assert resp.status_code == 202, resp.get_json()
    # (and the API description says so, where it describes the body)
    paths = client.get("/api/openapi.json").get_json()["paths"]
    for mode in ("run_sync", "reprocess"):
        post = paths[f"/api/v1/videos/{{video_id}}/{mode}"]["post"]
        assert "in UTF-8 (RFC 8259" in post["requestBody"]["description"]
        assert "UTF-16 or UTF-32" in post["responses"]["415"]["description"]


def test_refused_arguments_are_named_in_the_message(client, video_id):
    """The message alone says which argument to change and why (a client shows it, or logs
    only it): it was webargs' generic "The request was well-formed but was unable to be
    followed due to semantic errors." or "The browser (or proxy) sent a request that this
    server could not understand.", with the reason only inside `errors`."""
    trigger = f"/api/v1/videos/{video_id}/run_sync"
    cases = [
        (client.get("/api/v1/videos?page=0"), 422,
         "query parameter `page`: must be greater than or equal to 1"),
        (client.get("/api/v1/videos?sort=size"), 422,
         "query parameter `sort`: must be one of: newest, oldest, name, duration"),
        (client.get("/api/v1/search?q="), 422,
         "query parameter `q`: length must be between 1 and 200"),
        (client.get("/api/v1/search"), 422, "query parameter `q` is missing"),
        (client.post(f"{trigger}?forse=true"), 422,
         "query parameter `forse` is not an option this request takes"),
        (client.post(trigger, json={"force": None, "translate": "perhaps"}), 422,
         "JSON field `force` may not be null; JSON field `translate`: must be true or false "
         "(a JSON boolean, not a string or a number)"),
        (client.post(trigger, json={"force": 1}), 422,
         "JSON field `force`: must be true or false (a JSON boolean, not a string or a "
         "number)"),
        (client.post(trigger, json=[{"force": True}]), 422,
         'the JSON body is not an object: send options as one, e.g. {"force": true}'),
        (client.post(trigger, data="{not json", content_type="application/json"), 400,
         "the body is not valid JSON (Expecting property name enclosed in double quotes: "
         "line 1 column 2 (char 1))"),
        (client.post("/api/v1/videos", data={"file": "not a file"},
                     content_type="multipart/form-data"), 422,
         "form field `file`: is text, not a file: send the file's content as a file part"
         " (curl: -F file=@talk.mp4)"),
    ]
    for resp, status, message in cases:
        body = assert_json_error(resp, status)
        assert body["message"] == message, (resp.request.url, body)
        assert body["errors"], body  # the details by location and field stay as they were


def test_flags_are_json_booleans_in_a_body_and_keep_their_spellings_in_the_query(
        client, video_id):
    """A JSON body's flags are true and false (1 and "yes" are 422, BAD_TRIGGERS); the query
    string, which is text, keeps the spellings it always took (1, yes, on, any case)."""
    active = client.post(f"/api/v1/videos/{video_id}/run_sync").get_json()["task_id"]
    for query in ("force=1", "force=yes", "force=On", "force=TRUE", "force=t"):
        resp = client.post(f"/api/v1/videos/{video_id}/run_sync?{query}")
        assert resp.status_code == 202, (query, resp.get_json())
        assert resp.get_json()["task_id"] != active, query  # forced: a new run replaced it
        active = resp.get_json()["task_id"]
    for query in ("force=0", "force=no", "force=off", "force=false"):
        resp = client.post(f"/api/v1/videos/{video_id}/run_sync?{query}")
        assert assert_json_error(resp, 409)["task_id"] == active, query
    assert assert_json_error(client.post(f"/api/v1/videos/{video_id}/run_sync",
                                         json={"force": False}), 409)["task_id"] == active
    resp = client.post(f"/api/v1/videos/{video_id}/run_sync", json={"force": True})
    assert resp.status_code == 202 and resp.get_json()["task_id"] != active


def test_json_options_with_a_json_media_type_variant_are_read(client, video_id):
    # A run is active: only a force read from the body starts another (unread: a 409).
    first = client.post(f"/api/v1/videos/{video_id}/run_sync").get_json()["task_id"]
    resp = client.post(f"/api/v1/videos/{video_id}/run_sync", data='{"force": true}',
                       content_type="application/json; charset=utf-8")
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["task_id"] != first


def test_bad_page_parameters_are_4xx_and_huge_pages_are_empty(client, video_id):
    for query in ("page=1000000000000000000000000000000",  # was a 500 (integer overflow)
                  "page=9223372036854775807&page_size=100"):
        resp = client.get(f"/api/v1/videos?{query}")
        assert resp.status_code == 200 and resp.get_json() == [], query
        assert json.loads(resp.headers["X-Pagination"])["total"] == 1
    for query in ("page=-1", "page=", "page=1.5", "page=abc", "page=%00", "page_size=0",
                  "page_size=-1", "page_size=101", "page_size=1e3",
                  "page_size=100000000000000000000000"):
        assert_json_error(client.get(f"/api/v1/videos?{query}"), 422)


def test_library_page_with_a_huge_page_number_is_not_an_error(client, video_id):
    assert client.get("/?page=1000000000000000000000000000000").status_code == 200


# --- uploads cut short -----------------------------------------------------------------------

CUT_SHORT = re.compile(r"the upload (was cut short|is incomplete)\b.*nothing was stored")


def cut_upload(clip: Path, fraction: float = 0.6) -> tuple[bytes, int, str]:
    """The first `fraction` of a whole multipart upload of `clip`, the whole body's length
    (what its Content-Length says), and its Content-Type."""
    body, content_type = multipart(b'filename="clip.mp4"', clip.read_bytes())
    return body[:int(len(body) * fraction)], len(body), content_type


def test_upload_cut_short_is_400_and_leaves_nothing(client, settings, db_session, clip):
    """The test client's three ways of ending a body early: the body ends before the closing
    boundary; Content-Length promises more than is sent, with the stream werkzeug limits
    (its own server), and with one the server ends itself (gunicorn's wsgi.input_terminated)."""
    before = files_outside_media(settings)
    cut, length, content_type = cut_upload(clip)
    cases = {
        "ends before the boundary": {"data": cut},
        "Content-Length too big": {"input_stream": io.BytesIO(cut),
                                   "environ_overrides": {"CONTENT_LENGTH": str(length)}},
        "Content-Length too big, terminated input": {
            "input_stream": io.BytesIO(cut),
            "environ_overrides": {"CONTENT_LENGTH": str(length), "wsgi.input_terminated": True}},
    }
    for case, kwargs in cases.items():
        resp = client.post("/api/v1/videos", content_type=content_type, **kwargs)
        message = assert_json_error(resp, 400)["message"]
        assert CUT_SHORT.search(message), (case, message)
    no_rows(db_session)
    assert media_files(settings) == []  # nothing in staging/ or videos/
    assert files_outside_media(settings) == before


def test_an_empty_upload_body_says_it_is_empty(client, settings, db_session):
    """A multipart upload with no body at all (a client that forgot to attach the form)
    was told "the upload is incomplete: the body ends before the multipart form's closing
    boundary; nothing was stored, send it again": sent again, it was the same nothing."""
    resp = client.post("/api/v1/videos", content_type="multipart/form-data; boundary=b",
                       input_stream=io.BytesIO(b""), environ_overrides={"CONTENT_LENGTH": "0"})
    assert resp.request.content_length == 0
    assert assert_json_error(resp, 400)["message"] == (
        "the body is empty: send the file as multipart/form-data, in the field `file`; "
        "nothing was stored")
    no_rows(db_session)
    assert media_files(settings) == []


def test_upload_cut_short_over_a_real_connection(settings, db_session, tmp_path, clip):
    """gunicorn as `make run` starts it; the client sends 60 % of the body its Content-Length
    announces and stops sending (half-closes). A 400 saying so, and no row, no file in
    MEDIA_ROOT and no temporary file left (the server's TMPDIR is the test's)."""
    from tests.test_concurrency import web_server

    temp = tmp_path / "server-tmp"
    temp.mkdir()
    cut, length, content_type = cut_upload(clip)
    with web_server(tmp_path, SECRET_KEY="k" * 32, WEB_WORKERS="1", TMPDIR=str(temp)) as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"POST /api/v1/videos HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                         f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
                         "Connection: close\r\n\r\n".encode() + cut)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), answer[:500]
        assert b"\r\nContent-Type: application/json" in head, head
        error = json.loads(body)
        assert (error["code"], error["status"]) == (400, "Bad Request"), error
        assert CUT_SHORT.search(error["message"]), error
        no_rows(db_session)
        assert media_files(settings) == []
        assert list(temp.iterdir()) == []


def test_chunked_upload_cut_short_over_a_real_connection(settings, db_session, tmp_path, clip):
    """gunicorn as `make run` starts it; a chunked upload (no Content-Length) whose sender
    stops before the body's last chunk: in the middle of a chunk, or with the whole form sent
    but never the zero-length chunk that ends the body. A 400 saying the upload was cut short,
    as for a Content-Length that promised more; it said "the multipart/form-data body is
    malformed (400 Bad Request: The browser (or proxy) sent a request that this server could
    not understand.)", werkzeug's words, which name nothing the client can fix."""
    from tests.test_concurrency import web_server

    body, content_type = multipart(b'filename="clip.mp4"', clip.read_bytes())
    cases = {  # what is sent after the headers
        "in the middle of a chunk": b"%x\r\n" % len(body) + body[:int(len(body) * 0.6)],
        "without the last chunk": b"%x\r\n" % len(body) + body + b"\r\n",
    }
    with web_server(tmp_path, SECRET_KEY="k" * 32, WEB_WORKERS="1") as (port, _):
        for case, sent in cases.items():
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(f"POST /api/v1/videos HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                             f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n"
                             "Connection: close\r\n\r\n".encode() + sent)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            head, _, answered = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), (case, answer[:500])
            error = json.loads(answered)
            assert CUT_SHORT.search(error["message"]), (case, error)
            assert "chunk" in error["message"], (case, error)
            no_rows(db_session)
            assert media_files(settings) == []


DISK = 2 * 1024 * 1024  # the small disk's size: an upload of twice that fills it


def test_an_upload_that_fills_the_disk_is_507_and_leaves_nothing(settings, db_session,
                                                                  tmp_path, clip):
    """MEDIA_ROOT on a disk that fills up while an upload is received: 507 saying so (it was a
    500 "internal error" and a traceback), the partial file deleted, no row; the same disk
    takes a file that fits right after, through the API and the page's form alike."""
    with small_disk(tmp_path / "small", DISK) as media:
        app = create_app(Settings.from_env(media_root=media))
        app.config["TESTING"] = True
        client = app.test_client()
        big = clip.read_bytes() + bytes(2 * DISK)
        resp = client.post("/api/v1/videos", data={"file": (io.BytesIO(big), "big.mp4")},
                           content_type="multipart/form-data")
        assert assert_json_error(resp, 507)["message"] == (
            "the server's disk is full: the upload was not stored; send it again once space "
            "has been freed on the server")
        no_rows(db_session)
        assert [p for p in media.rglob("*") if p.is_file()] == []
        assert shutil.disk_usage(media).used < DISK // 4  # its space is free again

        page = client.get("/")  # the page's form, as HTMX sends it
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.get_data(as_text=True))
        resp = client.post("/videos", data={"file": (io.BytesIO(big), "big.mp4")},
                           content_type="multipart/form-data",
                           headers={"HX-Request": "true", "X-CSRFToken": token.group(1)})
        assert resp.status_code == 507
        message = BeautifulSoup(resp.get_data(as_text=True), "html.parser").select_one(
            "#upload-message").get_text()
        assert message.startswith("the server's disk is full: the upload was not stored"), \
            message
        no_rows(db_session)

        stored = upload_ok(client, clip)  # a file that fits is taken
        assert (media / "videos" / stored["id"]).is_dir()


def test_a_transcript_that_finds_the_disk_full_fails_in_a_sentence_and_keeps_the_old(
        client, settings, clip):
    """MEDIA_ROOT fills up while the transcription runs: whisper's transcript and captions
    are written by the step itself, not by ffmpeg. Their ENOSPC was an internal error with a
    reference and a traceback, tried three times; now it says the disk is full, like the
    ffmpeg steps, once. What was published before stays, and nothing half-written is left.
    """
    with small_disk(settings.media_root, 4 * 1024 * 1024) as media:
        vid = upload_ok(client, clip)["id"]
        assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
        run_worker()
        assert progress_of(client, vid)["status"] == "completed"
        before = {name: client.get(f"/api/v1/videos/{vid}/artifacts/{name}").get_data()
                  for name in ("transcript.json", "captions.vtt", "audio.wav")}
        filler = media / "filler"
        with open(filler, "wb") as fh, contextlib.suppress(OSError):
            while True:
                fh.write(bytes(64 * 1024))
                fh.flush()
        # Asking for English (the first run detected the language) redoes the transcription
        # alone, on the audio already extracted.
        resp = client.post(f"/api/v1/videos/{vid}/run_sync", json={"language": "en"})
        assert resp.status_code == 202, resp.get_json()
        task_id = resp.get_json()["task_id"]
        run_worker()
        state = progress_of(client, vid)
        step = {s["name"]: s for s in state["subtasks"]}["transcribe"]
        assert (state["task_id"], state["status"], step["status"]) == (task_id, "failed",
                                                                      "failed"), state
        assert step["error"] == ("The transcript and captions could not be saved: the "
                                 "server's disk is full."), step
        assert step["attempt"] == 1, "a full disk was tried again at once"
        assert {name: client.get(f"/api/v1/videos/{vid}/artifacts/{name}").get_data()
                for name in before} == before
        assert not (media / "videos" / vid / "runs" / task_id).exists() or not any(
            (media / "videos" / vid / "runs" / task_id).rglob("*.*"))
        filler.unlink()


def test_a_disk_too_full_for_a_steps_folder_fails_the_step_in_a_sentence(client, settings,
                                                                         clip):
    """MEDIA_ROOT so full that not even a folder can be made (ext4 at 100 %; here a tmpfs out
    of inodes): each step's first write, its attempt folder, was outside the step's error
    handling. The step stayed `running` with nobody on it, was tried three times, each
    with a traceback, until the reconciler failed it "without recording a result". Now
    each step fails at once saying the disk is full, and the run ends failed."""
    with small_disk(settings.media_root, 4 * 1024 * 1024, inodes=64) as media:
        vid = upload_ok(client, clip)["id"]
        worker = start_worker()  # started before the disk fills: its start-up check writes
        try:
            wait_for(lambda: "Listening on" in Path(worker.log_path).read_text(), timeout=30,
                     what="the worker listening")
            fillers = []
            with contextlib.suppress(OSError):
                while True:
                    fillers.append(media / f"filler-{len(fillers)}")
                    fillers[-1].touch()
            task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
            state = wait_for(lambda: (s := progress_of(client, vid))["status"] not in
                             ("queued", "running") and s, timeout=60, what="the run ending")
        finally:
            stop_worker(worker)
        steps = {s["name"]: s for s in state["subtasks"]}
        assert (state["task_id"], state["status"]) == (task_id, "failed"), state
        saved = {"extract_audio": "The audio", "thumbnails": "The poster and storyboard",
                 "transcode": "The preview"}
        for name, what in saved.items():
            assert (steps[name]["status"], steps[name]["attempt"], steps[name]["error"]) == (
                "failed", 1, f"{what} could not be saved: the server's disk is full."), steps
        assert steps["transcribe"]["status"] == "cancelled", steps
        assert not (media / "videos" / vid / "runs" / task_id).exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_full_database_disk_is_507_and_changes_nothing(settings, db_session, tmp_path, clip):
    """The SQLite database on a disk that is full: a trigger cannot write its task. 507 with
    a sentence (it was a 500), nothing enqueued, and the run starts once there is space."""
    with small_disk(tmp_path / "dbdisk", 4 * 1024 * 1024) as disk:
        database = disk / "vidpipe.db"
        shutil.copyfile(settings.database_url.removeprefix("sqlite:///"), database)
        app = create_app(Settings.from_env(database_url=f"sqlite:///{database}"))
        client = app.test_client()
        # A running web process: its connections to the database are open before the disk
        # fills (a new one could not even open the database's write-ahead log then).
        vid = upload_ok(client, clip)["id"]
        filler = disk / "filler"
        with open(filler, "wb") as fh, contextlib.suppress(OSError):
            while True:
                fh.write(bytes(64 * 1024))
                fh.flush()
        resp = client.post(f"/api/v1/videos/{vid}/run_sync")
        assert assert_json_error(resp, 507)["message"] == (
            "the server's disk is full: the request could not be completed; try again once "
            "space has been freed on the server")
        assert client.get(f"/api/v1/videos/{vid}/reprocess").get_json()["status"] == "pending"
        filler.unlink()
        resp = client.post(f"/api/v1/videos/{vid}/run_sync")
        assert resp.status_code == 202, resp.get_json()
        dispose(f"sqlite:///{database}")
    # A client generated from the description knows every write can answer it (the
    # triggers', cancel's and delete's did not list it).
    paths = client.get("/api/openapi.json").get_json()["paths"]
    video = "/api/v1/videos/{video_id}"
    for path, method in (("/api/v1/videos", "post"), (f"{video}/run_sync", "post"),
                         (f"{video}/reprocess", "post"), (f"{video}/cancel", "post"),
                         (video, "delete")):
        assert "507" in paths[path][method]["responses"], (path, method)
