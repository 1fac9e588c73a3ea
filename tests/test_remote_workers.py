"""Workers on other hosts: a real gunicorn web process and real workers with MEDIA_ROOTs of
their own exchange media over HTTP (webapp/internal.py, jobs/remote.py), on PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import ffmpeg
import pytest
import requests
from sqlalchemy import update

from jobs.cache import Cache
from jobs.remote import RemoteAttempt, Server, TransferError
from tests import mediagen
from tests.conftest import PROJECT_ROOT, start_worker, stop_worker
from tests.helpers import (
    free_port,
    progress_of,
    small_disk,
    subtasks,
    upload_ok,
    wait_for,
)
from tests.test_concurrency import web_server
from webapp.db import session_factory
from webapp.models import Publication, Video
from webapp.services import progress
from webapp.services.storage import ARTIFACT_NAMES

pytestmark = pytest.mark.e2e

TOKEN = "worker-token-for-tests-0123456789"
POSTGRES = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
SENTENCE = "Good morning. The weather report says rain in the afternoon."


@pytest.fixture(scope="module")
def speech_video(tmp_path_factory):
    return mediagen.make_speech_video(tmp_path_factory.mktemp("m") / "talk.mp4", SENTENCE,
                                      size="640x360")


@pytest.fixture
def web(settings, tmp_path):
    """gunicorn serving the test's database and MEDIA_ROOT, with WORKER_TOKEN set."""
    with web_server(tmp_path, WORKER_TOKEN=TOKEN, WEB_WORKERS="2") as (port, proc):
        proc.port = port
        proc.log_path = tmp_path / "gunicorn.log"
        yield proc


def remote_settings(settings, tmp_path: Path, url: str, name: str = "worker-b"):
    """The settings of a worker on another host: its own MEDIA_ROOT, the web app's URL."""
    from dataclasses import replace

    return replace(settings, server_url=url, worker_token=TOKEN, worker_name=name,
                   media_root=tmp_path / f"media-{name}")


def remote_env(tmp_path: Path, port: int, name: str = "worker-b", **extra: str) -> dict:
    return {"SERVER_URL": f"http://127.0.0.1:{port}", "WORKER_TOKEN": TOKEN,
            "WORKER_NAME": name, "MEDIA_ROOT": str(tmp_path / f"media-{name}"), **extra}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifacts(client, vid: str) -> dict[str, bytes]:
    return {a["name"]: client.get(f"/api/v1/videos/{vid}/artifacts/{a['name']}").data
            for a in client.get(f"/api/v1/videos/{vid}/artifacts").get_json()}


def streams(data: bytes, tmp_path: Path) -> list[tuple]:
    path = tmp_path / f"probe-{sha(data)[:8]}.mp4"
    path.write_bytes(data)
    info = ffmpeg.probe(str(path))
    return [(s["codec_type"], s["codec_name"], s.get("width"), s.get("height"),
             round(float(s["duration"]), 1)) for s in info["streams"]]


def run_remotely(client, vid: str, env: dict[str, str], timeout: float) -> dict:
    """Run the video's queued task with one remote worker; its state once it has ended."""
    worker = start_worker(env)
    try:
        return wait_for(lambda: (s := progress_of(client, vid))["status"] not in
                        ("queued", "running") and s, timeout=timeout, interval=0.5,
                        what="the remote run ending")
    finally:
        stop_worker(worker)


@POSTGRES
def test_a_worker_on_another_host_processes_a_video_like_a_local_one(
        client, settings, web, speech_video, tmp_path):
    vid = upload_ok(client, speech_video)["id"]
    video_sha = sha(speech_video.read_bytes())
    with session_factory(settings.database_url)() as session:
        assert session.get(Video, vid).sha256 == video_sha  # recorded at upload
    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    state = run_remotely(client, vid, remote_env(tmp_path, web.port), timeout=300)
    assert (state["status"], state["progress"]) == ("completed", 100), state
    assert {s["worker"] for s in state["subtasks"]} == {"worker-b"}
    page = client.get(f"/videos/{vid}").get_data(as_text=True)
    assert 'id="worker-transcode">on worker-b<' in page
    remote = artifacts(client, vid)
    assert sorted(remote) == sorted(ARTIFACT_NAMES)
    # Nothing of the web app's disk was read by the worker: its own MEDIA_ROOT holds only
    # its cache (the source once, the audio for the transcription) and no work folder left.
    own = tmp_path / "media-worker-b"
    assert not (own / "videos").exists()
    cached = {p.name: p.read_bytes() for p in (own / "cache").iterdir()}
    assert cached[f"source-{vid}"] == speech_video.read_bytes()
    assert [n for n in cached if n.endswith("audio.wav")] and len(cached) == 2, sorted(cached)
    assert not any((own / "work").rglob("*")) if (own / "work").exists() else True
    assert not (settings.media_root / "cache").exists()
    # The transcript a worker on another host made is searchable like a local one.
    found = client.get("/api/v1/search", query_string={"q": "weather report"}).get_json()
    assert [hit["video"]["id"] for hit in found] == [vid], found
    assert "weather" in found[0]["segments"][0]["text"].lower()

    # The same video processed on one host, by a worker on the shared MEDIA_ROOT.
    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    local = subprocess.run([sys.executable, "-m", "jobs.worker", "--burst"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "WORKER_NAME": "web-host"})
    assert local.returncode == 0, local.stderr[-2000:]
    state = progress_of(client, vid)
    assert state["status"] == "completed" and {s["worker"] for s in state["subtasks"]} == {
        "web-host"}
    here = artifacts(client, vid)
    for name in ARTIFACT_NAMES:
        if name == "preview.mp4" and here[name] != remote[name]:
            assert streams(here[name], tmp_path) == streams(remote[name], tmp_path)
        else:
            assert here[name] == remote[name], name


@POSTGRES
def test_a_stale_attempts_uploads_are_refused_and_change_nothing(client, settings, web,
                                                                 speech_video, tmp_path):
    from tests.helpers import publish_files

    vid = upload_ok(client, speech_video)["id"]
    publish_files(settings, vid, "thumbnails", {"poster.jpg": b"old poster",
                                                "storyboard.jpg": b"old board",
                                                "storyboard.vtt": b"WEBVTT\n"})
    before = artifacts(client, vid)
    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    task_id = progress_of(client, vid)["task_id"]
    with session_factory(settings.database_url)() as session:
        first = progress.start_subtask(session, task_id, "thumbnails", worker="worker-b")
        second = progress.start_subtask(session, task_id, "thumbnails", takeover=True,
                                        worker="worker-c")
    assert (first, second) == (1, 2)
    # The first attempt (cut off, say) comes back with its outputs.
    out = tmp_path / "stale" / "out"
    out.mkdir(parents=True)
    for name in ("poster.jpg", "storyboard.jpg", "storyboard.vtt"):
        (out / name).write_bytes(b"stale " + name.encode())
    server = Server(remote_settings(settings, tmp_path, f"http://127.0.0.1:{web.port}"),
                    delays=(0.1,))
    stale = RemoteAttempt(server, out.parent)
    assert stale.publish(task_id, "thumbnails", first, None, {}, time.monotonic()) is False
    folder = settings.media_root / "videos" / vid / "runs" / task_id / "thumbnails.1"
    assert not folder.exists() or not any(folder.iterdir())
    # Its completion, sent anyway, is refused as well.
    resp = requests.post(f"http://127.0.0.1:{web.port}/internal/v1/tasks/{task_id}/steps/"
                         f"thumbnails/{first}/complete", json={"files": {}},
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert resp.status_code == 409, resp.text
    assert artifacts(client, vid) == before
    assert subtasks(progress_of(client, vid))["thumbnails"]["status"] == "running"
    # The current attempt's upload is published.
    current = RemoteAttempt(server, tmp_path / "current")
    current.out.mkdir(parents=True)
    for name in ("poster.jpg", "storyboard.jpg", "storyboard.vtt"):
        (current.out / name).write_bytes(b"new " + name.encode())
    assert current.publish(task_id, "thumbnails", second, None, {}, time.monotonic()) is True
    after = artifacts(client, vid)
    assert after["poster.jpg"] == b"new poster.jpg"
    thumbnails = subtasks(progress_of(client, vid))["thumbnails"]
    assert (thumbnails["status"], thumbnails["worker"]) == ("completed", "worker-c")


@POSTGRES
def test_a_completion_whose_video_facts_do_not_fit_is_refused(web):
    """What a worker writes on the video with its outputs must fit the columns: a 400
    naming the allowed facts, before any attempt is looked up (a PostgreSQL error, a 500,
    otherwise)."""
    url = (f"http://127.0.0.1:{web.port}/internal/v1/tasks/{uuid.uuid4()}/steps/transcribe/1/"
           "complete")
    for video in ({"transcript_model": "m" * 1025}, {"language": 5},
                  {"language": "x" * 17}, {"language_probability": "high"},
                  {"language_probability": True}, {"transcript_script": "s" * 17},
                  {"colour": "red"}):
        resp = requests.post(url, json={"files": {}, "video": video}, timeout=10,
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 400, (video, resp.text)
        assert "transcript_model" in resp.json()["message"]
    # So must the attempt's length on the worker's clock (it corrects the step's cost).
    for ran_for in ('"12.5"', "-1", "true", "NaN", "Infinity", "[3]"):
        resp = requests.post(url, data=f'{{"files": {{}}, "ran_for": {ran_for}}}', timeout=10,
                             headers={"Authorization": f"Bearer {TOKEN}",
                                      "Content-Type": "application/json"})
        assert resp.status_code == 400, (ran_for, resp.text)
        assert "ran_for a number of seconds" in resp.json()["message"]
    # Facts that fit pass this check (the task, unknown, is then a 404).
    resp = requests.post(url, json={"files": {}, "ran_for": 12.5, "video": {
        "language": "de", "language_probability": 0.97, "transcript_model": "m" * 1024,
        "transcript_script": None}},
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert resp.status_code == 404, resp.text


@POSTGRES
def test_only_the_worker_token_opens_the_exchange(client, settings, web, speech_video):
    vid = upload_ok(client, speech_video)["id"]
    url = f"http://127.0.0.1:{web.port}/internal/v1/videos/{vid}/source"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"},
                    {"Authorization": f"Basic {TOKEN}"}):
        resp = requests.get(url, headers=headers, timeout=10)
        assert resp.status_code == 401, (headers, resp.status_code)
        assert resp.json()["code"] == 401 and "video" not in resp.text
        assert resp.headers["WWW-Authenticate"] == (
            'Bearer error="invalid_token"' if "Bearer" in str(headers) else "Bearer"), headers
    put = requests.put(url.replace(f"videos/{vid}/source", "tasks/x/steps/transcode/1/files/"
                                   "preview.mp4"), data=b"x", timeout=10)
    assert put.status_code == 401
    ok = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert ok.status_code == 200 and ok.content == speech_video.read_bytes()
    assert ok.headers["X-Sha256"] == sha(speech_video.read_bytes())
    wait_for(lambda: web.log_path.read_text().count("refused GET /internal/v1/videos/") >= 4,
             timeout=10, what="a log line per refusal")
    spec = client.get("/api/openapi.json").get_json()
    assert not [p for p in spec["paths"] if "internal" in p]


def test_a_worker_locked_out_by_its_address_waits_as_retry_after_asks(
        client, settings, speech_video, tmp_path, caplog):
    """A worker whose address is locked out for wrong credentials (a sibling on the same host
    or behind the same NAT with an old WORKER_TOKEN) gets 429 with its right token: it waits
    the Retry-After the web app names and then gets its file, instead of trying again on its
    short delays, being refused each time and failing the step."""
    from webapp.throttle import Throttle, client_key

    vid = upload_ok(client, speech_video)["id"]
    # A window of a minute: the three failures and the check below must all fall in it,
    # which a 4 s window left to the speed of the machine (a loaded one took longer, the
    # count expired before the lockout, and the right token got its 200 at once).
    with web_server(tmp_path, WORKER_TOKEN=TOKEN, AUTH_FAILURE_LIMIT="3",
                    AUTH_FAILURE_WINDOW="60") as (port, _):
        url = f"http://127.0.0.1:{port}/internal/v1/videos/{vid}/source"
        for _ in range(3):  # the misconfigured sibling
            assert requests.get(url, headers={"Authorization": "Bearer old-token"},
                                timeout=10).status_code == 401
        locked = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert locked.status_code == 429 and 0 < int(locked.headers["Retry-After"]) <= 60
        server = Server(remote_settings(settings, tmp_path, f"http://127.0.0.1:{port}"),
                        delays=(0.1, 0.1))  # 0.2 s in all: far less than the lockout
        # The rest of the lockout is cut to 2 s, as if most of the minute had passed, so
        # that the worker's wait for its end is short.
        throttle = Throttle(settings)
        assert throttle.redis.pexpire(throttle.prefix + client_key("127.0.0.1"), 2000)
        throttle.redis.close()
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="jobs.remote"):
            got = server.source(Video(id=vid, stored_name="source.mp4",
                                      sha256=sha(speech_video.read_bytes())))
        assert got.read_bytes() == speech_video.read_bytes()
        assert time.monotonic() - started >= 1  # it waited for the lockout's end
    waits = [r.getMessage() for r in caplog.records if "Retry-After" in r.getMessage()]
    assert waits and "downloading the source: the web app answered 429" in waits[0], waits


def test_a_retry_after_beyond_the_steps_time_limit_fails_the_attempt_at_once(
        client, settings, speech_video, tmp_path):
    """A wait that would outlast the job's time limit is not started: RQ would stop the step
    for "taking longer than its time limit", a permanent failure that blames the media. The
    attempt fails at once with the reason, and the step's next attempt (STEP_RETRIES) starts
    with a whole time limit."""
    vid = upload_ok(client, speech_video)["id"]
    with web_server(tmp_path, WORKER_TOKEN=TOKEN, AUTH_FAILURE_LIMIT="1",
                    AUTH_FAILURE_WINDOW="60") as (port, _):
        url = f"http://127.0.0.1:{port}/internal/v1/videos/{vid}/source"
        assert requests.get(url, headers={"Authorization": "Bearer old-token"},
                            timeout=10).status_code == 401
        server = Server(remote_settings(settings, tmp_path, f"http://127.0.0.1:{port}"),
                        delays=(0.1, 0.1), deadline=time.monotonic() + 70)
        started = time.monotonic()
        with pytest.raises(TransferError) as refused:
            server.source(Video(id=vid, stored_name="source.mp4"))
        # At once: well before the minute it was asked to wait (a loaded machine may take
        # seconds over the request).
        assert time.monotonic() - started < 15
    # The wait asked for is what is left of the minute's lockout: 60 s, or 59 s (or less)
    # when a loaded machine took a second or more between the refusal and this request.
    said = re.match(r"downloading the source: the web app asked to wait (\d+) s before "
                    r"trying again, longer than the step's time limit leaves \(the web app "
                    r"answered 429: too many wrong ", str(refused.value))
    assert said and 50 <= int(said[1]) <= 60, refused


@POSTGRES
def test_a_worker_whose_token_is_refused_does_not_start(web, tmp_path):
    """A remote worker with a wrong WORKER_TOKEN stops at start, saying so, instead of
    taking jobs and failing each of them; one that cannot reach the web app yet starts
    (the web app may come up after its workers)."""
    wrong = start_worker({**remote_env(tmp_path, web.port), "WORKER_TOKEN": TOKEN + "-old"})
    try:
        assert wrong.wait(60) == 1
        said = Path(wrong.log_path).read_text()
    finally:
        stop_worker(wrong)
    assert ("the web app refused this worker's WORKER_TOKEN (401 from http://127.0.0.1:"
            f"{web.port}/internal/v1/hello): set the same WORKER_TOKEN as the web app's; not "
            "starting") in said, said[-2000:]
    assert "Traceback" not in said
    right = start_worker(remote_env(tmp_path, web.port))
    unreachable = start_worker(remote_env(tmp_path, free_port(), name="worker-c"))
    try:
        for proc in (right, unreachable):
            wait_for(lambda p=proc: "Listening on" in Path(p.log_path).read_text()
                     or p.poll() is not None, timeout=60, what="the worker listening")
            assert proc.poll() is None, Path(proc.log_path).read_text()[-2000:]
        assert "could not check WORKER_TOKEN with http://127.0.0.1:" in Path(
            unreachable.log_path).read_text()
        assert "could not check" not in Path(right.log_path).read_text()
    finally:
        stop_worker(right)
        stop_worker(unreachable)


@POSTGRES
def test_a_worker_whose_server_url_the_web_app_refuses_does_not_start(settings, tmp_path):
    """SERVER_URL's host name must be in the web app's ALLOWED_HOSTS (README). A worker whose
    name is not started all the same, with a warning that the token was not checked, then
    failed every step it took ("the web app refused the request: this service does not
    answer to the host name …"), video after video. It now stops at start, saying so, as
    for a refused token. The web app listens on a loopback address that is not one of the
    names it answers to by default (localhost, 127.0.0.1, [::1]), and the worker reaches it
    by that address (a test listens on loopback only)."""
    with web_server(tmp_path, WORKER_TOKEN=TOKEN, WEB_WORKERS="1", HOST="127.0.0.2",
                    ALLOWED_HOSTS="web-host") as (port, _):
        worker = start_worker({**remote_env(tmp_path, port),
                               "SERVER_URL": f"http://127.0.0.2:{port}"})
        try:
            assert worker.wait(60) == 1, Path(worker.log_path).read_text()[-2000:]
            said = Path(worker.log_path).read_text()
        finally:
            stop_worker(worker)
    assert ("the web app refused the request: this service does not answer to the host name "
            f"'127.0.0.2:{port}': the operator can add it to ALLOWED_HOSTS (400 from "
            f"http://127.0.0.2:{port}/internal/v1/hello): every step's requests would be "
            "refused the same way; set SERVER_URL to a name the web app answers to (one in its "
            "ALLOWED_HOSTS); not starting") in said, said[-2000:]
    assert "Traceback" not in said and "Listening on" not in said


@POSTGRES
def test_a_worker_refused_mid_run_hands_its_step_back_and_stops(client, settings,
                                                                speech_video, tmp_path):
    """WORKER_TOKEN rotated on the web app while a worker runs with the old one: its step is
    not failed (nor does the refusal use one of its tries, STEP_RETRIES) but waits again,
    saying why; that worker stops, with status 1, instead of failing every job
    it would take; a worker with the new token then does the whole run."""
    port = free_port()
    # (the web app is not up yet; LOG_LEVEL=DEBUG: RQ's own lines, its retry's below)
    old = start_worker({**remote_env(tmp_path, port), "LOG_LEVEL": "DEBUG"})
    try:
        wait_for(lambda: "Listening on" in Path(old.log_path).read_text(), timeout=60,
                 what="the worker listening")
        with web_server(tmp_path, port=port, WORKER_TOKEN=TOKEN + "-new"):
            vid = upload_ok(client, speech_video)["id"]
            assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
            assert old.wait(120) == 1
            state = progress_of(client, vid)
            assert state["status"] == "queued", state
            waiting = [s for s in state["subtasks"] if s["error"]]
            assert len(waiting) == 1 and waiting[0]["status"] == "pending", state
            assert waiting[0]["error"] == ("worker worker-b was refused by the web app (wrong "
                                           "WORKER_TOKEN) and stopped; the step waits for "
                                           "another worker"), waiting
            log = Path(old.log_path).read_text()
            assert "stopping: the web app refused this worker's WORKER_TOKEN" in log
            assert f"enqueued for retry, {settings.step_retries} remaining" in log, log
            state = run_remotely(client, vid, {**remote_env(tmp_path, port, name="worker-c"),
                                               "WORKER_TOKEN": TOKEN + "-new"}, timeout=300)
        assert (state["status"], state["progress"]) == ("completed", 100), state
        assert {s["worker"] for s in state["subtasks"]} == {"worker-c"}
    finally:
        stop_worker(old)


def test_the_api_token_and_the_admin_login_do_not_open_the_exchange(settings, tmp_path):
    from webapp import create_app

    app = create_app(settings.__class__.from_env(api_token="api-token-1234567",
                                                 admin_password="admin-pass-1234",
                                                 worker_token=TOKEN))
    client = app.test_client()
    path = "/internal/v1/videos/0b6f5d6e-0000-4000-8000-000000000001/source"
    assert client.get(path, headers={"Authorization": "Bearer api-token-1234567"}
                      ).status_code == 401
    assert client.get(path, auth=("admin", "admin-pass-1234")).status_code == 401
    assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    closed = create_app(settings.__class__.from_env()).test_client()  # no WORKER_TOKEN
    resp = closed.get(path, headers={"Authorization": "Bearer "})
    assert resp.status_code == 401 and "WORKER_TOKEN" in resp.get_json()["message"]


class CuttingProxy:
    """A TCP proxy in front of the web app that cuts the first answer carrying a source
    after `cut` bytes, and records what the client sent."""

    def __init__(self, port: int, cut: int) -> None:
        self.target, self.cut, self.sent = port, cut, []
        self.cuts = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target))
        state = {"source": False}

        def up() -> None:
            while data := _recv(client):
                self.sent.append(data)
                state["source"] = b"/source HTTP" in data and b"Range:" not in data
                upstream.sendall(data)
            upstream.close()

        threading.Thread(target=up, daemon=True).start()
        passed = 0
        while data := _recv(upstream):
            if state["source"] and self.cuts == 0 and passed + len(data) > self.cut:
                client.sendall(data[:self.cut - passed])
                self.cuts += 1
                client.shutdown(socket.SHUT_RDWR)  # a cut: the worker sees the end at once
                break
            passed += len(data)
            client.sendall(data)
        client.close()
        upstream.close()

    def close(self) -> None:
        self.sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@POSTGRES
def test_a_download_cut_mid_file_resumes_with_range(client, settings, web, speech_video,
                                                    tmp_path):
    vid = upload_ok(client, speech_video)["id"]
    data = speech_video.read_bytes()
    assert len(data) > 100_000
    proxy = CuttingProxy(web.port, cut=60_000)
    try:
        server = Server(remote_settings(settings, tmp_path, f"http://127.0.0.1:{proxy.port}"),
                        delays=(0.1, 0.1))
        with session_factory(settings.database_url)() as session:
            video = session.get(Video, vid)
        path = server.source(video)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert path.read_bytes() == data
    ranges = [line for chunk in proxy.sent for line in chunk.split(b"\r\n")
              if line.lower().startswith(b"range:")]
    assert len(ranges) == 1, ranges
    start = int(ranges[0].split(b"=")[1].rstrip(b"-"))
    assert 0 < start < 60_000  # only the rest was fetched again
    assert server.bytes_down == len(data)
    # A second need is served from the cache: nothing is downloaded again.
    sent = len(proxy.sent)
    assert server.source(video) == path and len(proxy.sent) == sent


@POSTGRES
def test_a_cut_or_damaged_cached_source_is_fetched_again(client, settings, web, speech_video,
                                                        tmp_path):
    """What a power cut can leave under a cache entry's name when the rename reached the disk
    before the data: a shorter file, or one of the right size full of zeros. The next need
    finds it does not match the source's sha256 and downloads it again."""
    vid = upload_ok(client, speech_video)["id"]
    data = speech_video.read_bytes()
    server = Server(remote_settings(settings, tmp_path, f"http://127.0.0.1:{web.port}"),
                    delays=(0.1,))
    with session_factory(settings.database_url)() as session:
        video = session.get(Video, vid)
    path = server.source(video)
    assert server.bytes_down == len(data)
    for damage in (lambda: os.truncate(path, len(data) // 3),
                   lambda: path.write_bytes(bytes(len(data)))):
        damage()
        before = server.bytes_down
        assert server.source(video) == path
        assert path.read_bytes() == data
        assert server.bytes_down - before == len(data)  # fetched again, whole
    assert server.bytes_down == 3 * len(data)
    assert server.source(video) == path and server.bytes_down == 3 * len(data)  # a good hit


def test_a_cache_entry_is_on_disk_before_it_has_its_name(tmp_path, monkeypatch):
    """fsync of the file, then the rename, then fsync of the folder: after a power cut the
    name holds the whole file or is absent. (The syscalls are recorded as they are made.)"""
    cache = Cache(tmp_path / "cache", limit_bytes=10_000)
    part = cache.part("entry")
    part.write_bytes(b"x" * 1000)
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("rename", f"{src} -> {dst}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    entry = cache.add(part, "entry")
    assert calls == [("fsync", str(part)), ("rename", f"{part} -> {entry}"),
                     ("fsync", str(cache.root))], calls
    assert entry.read_bytes() == b"x" * 1000


@POSTGRES
def test_a_damaged_source_is_detected_by_its_sha256(client, settings, web, speech_video,
                                                    tmp_path):
    vid = upload_ok(client, speech_video)["id"]
    with session_factory(settings.database_url)() as session:
        video = session.get(Video, vid)
        stored = settings.media_root / "videos" / vid / video.stored_name
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped on the server's disk, same size
    stored.write_bytes(bytes(data))
    server = Server(remote_settings(settings, tmp_path, f"http://127.0.0.1:{web.port}"),
                    delays=(0.1,))
    with pytest.raises(TransferError, match="does not match its sha256"):
        server.source(video)
    assert not any((tmp_path / "media-worker-b" / "cache").iterdir())  # nothing kept
    # A real worker fails the steps that read it with that sentence.
    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    state = run_remotely(client, vid, remote_env(tmp_path, web.port, STEP_RETRIES="0"),
                         timeout=120)
    steps = subtasks(state)
    assert steps["transcode"]["status"] == "failed"
    assert "does not match its sha256" in steps["transcode"]["error"]


@POSTGRES
def test_an_old_sources_sha256_is_computed_on_first_need(client, settings, web, speech_video):
    vid = upload_ok(client, speech_video)["id"]
    with session_factory(settings.database_url)() as session:
        session.execute(update(Video).where(Video.id == vid).values(sha256=None))
        session.commit()
    resp = requests.get(f"http://127.0.0.1:{web.port}/internal/v1/videos/{vid}/source",
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert resp.headers["X-Sha256"] == sha(speech_video.read_bytes())
    with session_factory(settings.database_url)() as session:
        assert session.get(Video, vid).sha256 == sha(speech_video.read_bytes())


def running_attempt(client, settings, video, step: str) -> tuple[str, str, int]:
    """Upload `video`, reprocess it, and start an attempt of `step` as a worker would:
    (video id, task id, attempt)."""
    vid = upload_ok(client, video)["id"]
    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    task_id = progress_of(client, vid)["task_id"]
    with session_factory(settings.database_url)() as session:
        return vid, task_id, progress.start_subtask(session, task_id, step)


@POSTGRES
def test_a_damaged_upload_is_refused_and_kept_nowhere(client, settings, web, speech_video):
    vid, task_id, attempt = running_attempt(client, settings, speech_video, "transcode")
    url = (f"http://127.0.0.1:{web.port}/internal/v1/tasks/{task_id}/steps/transcode/"
           f"{attempt}/files/preview.mp4")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = requests.put(url, data=b"x" * 1000, timeout=10,
                        headers={**auth, "X-Sha256": sha(b"y" * 1000)})
    assert resp.status_code == 422
    folder = settings.media_root / "videos" / vid / "runs" / task_id / f"transcode.{attempt}"
    assert not any(folder.iterdir())
    resp = requests.put(url, data=b"x" * 1000, timeout=10,
                        headers={**auth, "X-Sha256": sha(b"x" * 1000)})
    assert resp.status_code == 201 and (folder / "preview.mp4").read_bytes() == b"x" * 1000
    with session_factory(settings.database_url)() as session:
        assert session.get(Publication, (vid, "transcode")) is None


def test_a_remote_worker_refuses_sqlite_at_start(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.worker", "--burst"], cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=60, env={**os.environ, "SERVER_URL": "http://web-host:5000",
                                    "WORKER_TOKEN": TOKEN,
                                    "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert proc.returncode == 1
    assert "A worker with SERVER_URL needs the PostgreSQL database" in proc.stderr


def test_the_cache_evicts_the_least_recently_used_files(tmp_path):
    cache = Cache(tmp_path / "cache", limit_bytes=3000)
    for key in ("a", "b", "c"):
        part = cache.part(key)
        part.write_bytes(b"x" * 1000)
        cache.add(part, key)
        time.sleep(0.02)
    assert cache.get("a") is not None  # used again: b is now the oldest
    part = cache.part("d")
    part.write_bytes(b"x" * 1000)
    cache.add(part, "d")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a", "c", "d"]
    big = cache.part("e")
    big.write_bytes(b"x" * 5000)
    assert cache.add(big, "e").exists()  # alone over the limit, but kept: it is needed
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["e"]


@POSTGRES
def test_an_empty_output_is_uploaded_like_any_other(client, settings, web, speech_video,
                                                    tmp_path):
    """A video without speech has empty captions: the upload still says its length."""
    vid, task_id, attempt = running_attempt(client, settings, speech_video, "transcribe")
    empty = tmp_path / "captions.srt"
    empty.write_bytes(b"")
    server = Server(remote_settings(settings, tmp_path, f"http://127.0.0.1:{web.port}"),
                    delays=(0.1,))
    assert server.upload(task_id, "transcribe", attempt, empty) == sha(b"")
    folder = settings.media_root / "videos" / vid / "runs" / task_id / f"transcribe.{attempt}"
    assert (folder / "captions.srt").read_bytes() == b""


@POSTGRES
def test_outputs_larger_than_the_upload_limit_are_received(client, settings, tmp_path):
    """MAX_UPLOAD_BYTES limits what API clients upload, not what workers send back: the
    16 kHz WAV of a compressed source is larger than the source (here 2 to 1), and a worker
    on another host must be able to deliver it as a local worker writes it."""
    source = mediagen.make_audio_only(tmp_path / "talk.m4a", SENTENCE)
    limit = source.stat().st_size + 10_000
    vid = upload_ok(client, source)["id"]
    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    with web_server(tmp_path, WORKER_TOKEN=TOKEN, MAX_UPLOAD_BYTES=str(limit)) as (port, _):
        state = run_remotely(client, vid, remote_env(tmp_path, port, STEP_RETRIES="0"),
                             timeout=240)
    assert state["status"] == "completed", subtasks(state)
    audio = client.get(f"/api/v1/videos/{vid}/artifacts/audio.wav")
    assert audio.status_code == 200 and len(audio.data) > limit
    assert client.get(f"/api/v1/videos/{vid}/artifacts/captions.vtt").status_code == 200


@POSTGRES
def test_a_killed_attempt_leaves_nothing_on_the_worker_host(client, settings, web, tmp_path):
    """A work-horse killed mid-step (the OOM killer, or RQ's stop command when the run is
    cancelled) cannot remove its work folder: it holds hard links of the downloads (whose
    disk space eviction from the cache then never frees) and partial outputs. The worker
    removes it once the attempt is known dead, and the next one starting on the host
    removes what a whole worker killed left behind."""
    from tests.procs import horse_of, horses
    from tests.test_crashes import transcode_running

    video = mediagen.make_video(tmp_path / "long.mp4", duration=8.0, size="1280x720")
    vid = upload_ok(client, video)["id"]
    own = tmp_path / "media-worker-b"

    def leftovers() -> list[str]:
        work = [str(p.relative_to(own)) for p in (own / "work").rglob("*")]
        parts = [p.name for p in (own / "cache").glob(".*")] if (own / "cache").is_dir() else []
        return work + parts

    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    worker = start_worker(remote_env(tmp_path, web.port))
    try:
        wait_for(transcode_running(client, vid), timeout=60, interval=0.05)
        os.killpg(horse_of(worker), signal.SIGKILL)  # the horse leads its group: ffmpeg too
        state = wait_for(lambda: (s := progress_of(client, vid))["status"] not in
                         ("queued", "running") and s, timeout=180, interval=0.5)
        assert state["status"] == "completed" and subtasks(state)["transcode"]["attempt"] == 2
        wait_for(lambda: not leftovers(), timeout=60, what="the killed attempt's files gone")
        # A cancelled run: RQ's stop command kills the horse.
        assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
        wait_for(transcode_running(client, vid), timeout=60, interval=0.05)
        assert client.post(f"/api/v1/videos/{vid}/cancel").status_code == 200
        wait_for(lambda: not horses(worker), timeout=60, what="the horse gone")
        wait_for(lambda: not leftovers(), timeout=60, what="the stopped attempt's files gone")
    finally:
        stop_worker(worker)
    # What a whole worker killed left (its work folder, a download cut short) goes when the
    # next worker starts on this host.
    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    task_id = progress_of(client, vid)["task_id"]
    assert client.post(f"/api/v1/videos/{vid}/cancel").status_code == 200
    dead = own / "work" / task_id / "transcode.1"
    dead.mkdir(parents=True)
    (dead / "preview.mp4").write_bytes(b"half a preview")
    (own / "cache" / f".source-{vid}.999999999.part").write_bytes(b"half a source")
    worker = start_worker(remote_env(tmp_path, web.port))
    try:
        wait_for(lambda: not leftovers(), timeout=30, what="the dead worker's files gone")
    finally:
        stop_worker(worker)


def test_an_unreachable_web_app_is_one_sentence_without_its_address(settings, tmp_path):
    """The step's error says why the exchange failed in words, not in requests' repr, which
    names the web app's (internal) address and the exchange's URLs, and was cut at 200
    characters before it said why."""
    def server(port: int) -> Server:
        return Server(remote_settings(settings, tmp_path, f"http://127.0.0.1:{port}"),
                      delays=(0.1,))

    closed = free_port()  # a port nothing listens on
    video = Video(id=str(uuid.uuid4()), stored_name="source.mp4")
    with pytest.raises(TransferError) as refused:
        server(closed).source(video)
    # A server that takes the request and hangs up without an answer.
    listener = socket.create_server(("127.0.0.1", 0))
    hanging = listener.getsockname()[1]

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            received = b""
            while not received.endswith(b"x" * 1000) and (data := _recv(conn)):
                received += data  # the whole request, so that the close is a clean one
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    out = tmp_path / "preview.mp4"
    out.write_bytes(b"x" * 1000)
    try:
        with pytest.raises(TransferError) as cut:
            server(hanging).upload(str(uuid.uuid4()), "transcode", 1, out)
    finally:
        listener.close()
    assert str(refused.value) == ("downloading the source: the web app could not be reached "
                                  "or kept failing (the connection was refused)")
    assert str(cut.value) == ("uploading preview.mp4: the web app could not be reached or "
                              "kept failing (the connection was closed without an answer)")
    for error, port in ((refused.value, closed), (cut.value, hanging)):
        assert "127.0.0.1" not in str(error) and str(port) not in str(error)
        assert "/internal/" not in str(error)


def test_a_stale_completion_is_409_even_once_its_files_are_collected(settings, client):
    """The web app collects a superseded attempt's folder at the next publication; its
    worker's completion, arriving later, must still be told it is stale (409: it gives up
    at once), not that its files are missing (422: it tried again for a minute)."""
    from webapp import create_app
    from webapp.services import publications
    from webapp.services.storage import Storage

    exchange = create_app(settings.__class__.from_env(worker_token=TOKEN)).test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    video = mediagen.make_video(settings.media_root.parent / "v.mp4", duration=1.0)
    vid = upload_ok(client, video)["id"]
    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    task_id = progress_of(client, vid)["task_id"]
    with session_factory(settings.database_url)() as session:
        first = progress.start_subtask(session, task_id, "thumbnails", worker="worker-b")
    base = f"/internal/v1/tasks/{task_id}/steps/thumbnails/{first}"
    files = {}
    for name in ("poster.jpg", "storyboard.jpg", "storyboard.vtt"):
        data = f"stale {name}".encode()
        files[name] = sha(data)
        assert exchange.put(f"{base}/files/{name}", data=data,
                            headers={**auth, "X-Sha256": files[name]}).status_code == 201
    with session_factory(settings.database_url)() as session:  # taken over, then collected
        assert progress.start_subtask(session, task_id, "thumbnails", takeover=True) == 2
        removed = publications.collect_garbage(session, Storage(settings.media_root), vid)
        session.commit()
    assert removed == [f"runs/{task_id}/thumbnails.{first}"]
    resp = exchange.post(f"{base}/complete", json={"files": files}, headers=auth)
    assert resp.status_code == 409, resp.get_json()
    assert "not the step's running attempt" in resp.get_json()["message"]
    assert client.get(f"/api/v1/videos/{vid}/artifacts").get_json() == []


@POSTGRES
def test_a_full_disk_on_the_worker_host_is_said_and_leaves_no_piece(client, settings, web,
                                                                   speech_video, tmp_path):
    """A download that fills the worker's disk fails its step with a sentence saying so
    (it was "internal error (reference …)"), and the piece received is removed."""
    from dataclasses import replace

    vid = upload_ok(client, speech_video)["id"]
    assert speech_video.stat().st_size > 512 * 1024
    with small_disk(tmp_path / "small", 256 * 1024) as small:
        remote = replace(remote_settings(settings, tmp_path, f"http://127.0.0.1:{web.port}"),
                         media_root=small)
        with session_factory(settings.database_url)() as session:
            video = session.get(Video, vid)
        with pytest.raises(TransferError) as full:
            Server(remote, delays=(0.1,)).source(video)
        assert str(full.value) == ("the source could not be stored on this worker host: its "
                                   "disk is full")
        assert not list((small / "cache").iterdir())


@POSTGRES
def test_a_full_disk_on_the_web_host_is_said_and_leaves_no_piece(client, settings, web,
                                                                 speech_video, tmp_path):
    """An output that fills the web host's disk is refused with 507 and a sentence the step
    shows (it was a 500 "internal error"), and the piece received is removed."""
    size = speech_video.stat().st_size + 150 * 1024
    with small_disk(settings.media_root, size) as media:
        vid, task_id, attempt = running_attempt(client, settings, speech_video, "transcode")
        preview = tmp_path / "preview.mp4"
        preview.write_bytes(os.urandom(600 * 1024))
        server = Server(remote_settings(settings, tmp_path, f"http://127.0.0.1:{web.port}"),
                        delays=(0.1,))
        with pytest.raises(TransferError) as full:
            server.upload(task_id, "transcode", attempt, preview)
        assert str(full.value) == ("uploading preview.mp4: the web app could not be reached or "
                                   "kept failing (the web app answered 507: its disk is full)")
        folder = media / "videos" / vid / "runs" / task_id / f"transcode.{attempt}"
        assert not list(folder.iterdir())


@POSTGRES
def test_a_step_that_fills_the_worker_hosts_disk_names_that_host(client, settings, web,
                                                                 speech_video, tmp_path):
    """ffmpeg's "No space left on device" on a worker on another host is that host's disk,
    not the server's, which the step's error used to name."""
    vid = upload_ok(client, speech_video)["id"]
    size = speech_video.stat().st_size + 64 * 1024  # the source, and little else
    with small_disk(tmp_path / "media-worker-b", size):
        assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
        state = run_remotely(client, vid, remote_env(tmp_path, web.port, STEP_RETRIES="0"),
                             timeout=240)
    error = subtasks(state)["transcode"]["error"]
    assert error == "The preview could not be encoded: the disk of worker host worker-b is full.", \
        error
    assert "server" not in error


def test_the_deadline_a_remote_step_waits_within_is_its_jobs_time_limit(redis_conn):
    from datetime import UTC, datetime, timedelta

    from rq.job import Job

    from jobs.runner import _deadline

    job = Job.create(print, connection=redis_conn, timeout=100)
    assert _deadline(job) is None  # not started
    job.started_at = datetime.now(UTC) - timedelta(seconds=40)
    # 60 s left of its 100; a few seconds less when a loaded machine stalls between the
    # lines (a 1 s margin did not allow for that), far from the 100 s of a limit counted
    # from now.
    assert 55 < _deadline(job) - time.monotonic() <= 60
    assert _deadline(None) is None
    job.timeout = -1  # RQ's "no limit"
    assert _deadline(job) is None
