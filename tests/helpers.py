"""Small helpers shared by the API and pipeline tests."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random as _random
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def upload(client, path: Path, name: str | None = None):
    with open(path, "rb") as fh:
        return client.post("/api/v1/videos", data={"file": (fh, name or path.name)},
                           content_type="multipart/form-data")


def upload_ok(client, path: Path, name: str | None = None) -> dict:
    resp = upload(client, path, name)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def progress_of(client, video_id: str) -> dict:
    resp = client.get(f"/api/v1/videos/{video_id}/reprocess")
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def subtasks(state: dict) -> dict[str, dict]:
    return {s["name"]: s for s in state["subtasks"]}


def wait_for(predicate, timeout: float = 120, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout} s; last value {value!r}")


def assert_json_error(resp, status: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.data[:500])
    assert resp.is_json, resp.data[:200]
    body = resp.get_json()
    assert body["code"] == status
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    return body


def publish_files(settings, video_id: str, step: str, files: dict[str, bytes],
                  segments: list[tuple[float, float, str]] | None = None,
                  video_values: dict | None = None,
                  translation: list[tuple[float, float, str]] = (),
                  task_id: str | None = None) -> str:
    """Publish `files` as the outputs of `step` of the video, the way a worker does: a task
    whose attempt writes them into its own folder and completes (with a transcript's
    `segments` and its English `translation`'s, which that completion indexes for search,
    and the facts it writes on the video, `video_values`). The task is a new one, or the
    active `task_id` (the step pending in it). Returns the task id."""
    from webapp.config import STEPS
    from webapp.db import session_factory
    from webapp.models import Video
    from webapp.services import progress
    from webapp.services.storage import Storage

    storage = Storage(settings.media_root)
    with session_factory(settings.database_url)() as session:
        if task_id is None:
            video = session.get(Video, video_id)
            others = {s: "not part of this test" for s in STEPS if s != step}
            task = progress.new_task(video, "reprocess", settings.weights, others)
            progress.insert_task(session, task)
            session.commit()
            task_id = task.id
        attempt = progress.start_subtask(session, task_id, step)
        assert attempt, f"{step} of task {task_id} cannot start"
        folder = storage.attempt_folder(task_id, step, attempt)
        path = storage.folder_path(video_id, folder)
        path.mkdir(parents=True)
        for name, data in files.items():
            (path / name).write_bytes(data)
        assert progress.complete_subtask(session, task_id, step, attempt, video_id=video_id,
                                         folder=folder, segments=segments,
                                         video_values=video_values, translation=translation)
        return task_id


def transcript_files(segments: list[tuple[float, float, str]],
                     language: str | None = "en",
                     translation: list[tuple[float, float, str]] = ()) -> dict[str, bytes]:
    """The transcribe step's files for these segments (start, end, text), and for their
    English translation's if given, as it writes them."""
    from webapp.services import transcription

    def made(said: list[tuple[float, float, str]], lang: str | None):
        return transcription.Transcript(
            lang, max((end for _, end, _ in said), default=0.0),
            [transcription.Segment(start, end, text) for start, end, text in said], 1.0)

    result = made(segments, language)
    files = {"captions.vtt": b"WEBVTT\n\n", "captions.srt": b""}
    if translation:
        result = dataclasses.replace(result, translation=made(translation, "en"))
        files.update({"captions.en.vtt": b"WEBVTT\n\n", "captions.en.srt": b""})
    data = json.dumps(result.to_dict(), ensure_ascii=False).encode()
    return {"transcript.json": data, **files}


def publish_transcript(settings, video_id: str, segments: list[tuple[float, float, str]],
                       language: str | None = "en",
                       translation: list[tuple[float, float, str]] = ()) -> str:
    """Publish a transcript of these segments (and of their English translation's, if
    given) as the transcribe step does (files, the video's language and the search index
    in one completion); returns the task id."""
    return publish_files(settings, video_id, "transcribe",
                         transcript_files(segments, language, translation),
                         segments=segments, translation=translation,
                         video_values={"language": language} if language else None)


def always(predicate, within: float, interval: float = 0.05, what: str = "condition"):
    """A negative check: fail as soon as predicate() is falsy during the next `within` s.

    It watches the whole window, so a state that comes and goes (a stale poll swapping an
    old panel in, a request that should never be made) is caught when it happens, where a
    sleep followed by one look would miss it.
    """
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if not value:
            raise AssertionError(f"{what} stopped holding; value {value!r}")
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict | None = None, timeout: float = 60,
                 host: str = "127.0.0.1") -> tuple[int, bytes]:
    """One request to a real server on host:port (loopback): (status, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def multipart(data: bytes, name: str, fields: dict[str, str] | None = None
              ) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body holding `data` as the field `file` (plus text `fields`),
    and its Content-Type header."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n"
                    f"{value}\r\n".encode() for key, value in (fields or {}).items())
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
             f"filename=\"{name}\"\r\nContent-Type: video/mp4\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def http_upload(port: int, data: bytes, name: str) -> str:
    """Upload `data` to a real server as a multipart file; the new video's id."""
    body, headers = multipart(data, name)
    status, raw = http_request(port, "POST", "/api/v1/videos", body, headers)
    assert status == 201, raw[:300]
    return json.loads(raw)["id"]


def top_level_boxes(path: Path) -> list[str]:
    """The four-letter names of an MP4's top-level boxes, in file order."""
    boxes = []
    with path.open("rb") as f:
        while header := f.read(8):
            size, kind = struct.unpack(">I4s", header)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0] - 8
            boxes.append(kind.decode("latin-1"))
            f.seek(size - 8, 1)
    return boxes


# The source name of the tmpfs mounts small_disk makes, with the test run's id: the run's end
# finds any of its own left over (tests/conftest.py, no_mount_outlives_the_run), and never
# takes another run's (two runs at once on one machine: a developer's and a helper's).
SMALL_DISK = "vidpipe-test-full"


def small_disks(run: str) -> list[str]:
    """The mount points of the tmpfs mounts small_disk made in the test run `run`, still
    mounted."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return [line.split()[1] for line in mounts
                if line.split()[0] == f"{SMALL_DISK}-{run}"]


@contextmanager
def small_disk(path: Path, size: int, inodes: int | None = None) -> Iterator[Path]:
    """A disk of `size` bytes (a tmpfs) on `path`, for a disk that fills up; unmounted
    however the test ends. Mounted in the host's mount namespace, where processes the test
    started before (a web server) see it too. `inodes`: at most this many files and folders
    (a full disk where even a new folder fails, as on ext4; a tmpfs's folders take no
    space)."""
    path.mkdir(parents=True, exist_ok=True)
    from tests.conftest import RUN_MARK

    source = f"{SMALL_DISK}-{os.environ.get(RUN_MARK, 'none')}"
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, source, str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def _ephemeral_low(default: int = 32768) -> int:
    """The first port the kernel hands out to outgoing connections (and to bind(0))."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_port() -> int:
    """A port nothing listens on now: for a server to start on, or to stand for one that is
    down. Below the kernel's ephemeral range: a port of that range (the kernel's pick for
    bind(0)) could be taken by any outgoing connection of the run (Redis, PostgreSQL,
    HTTP) in the seconds before the server binds it."""
    top = min(_ephemeral_low(), 32768)
    for _ in range(200):
        port = _random.randrange(max(top - 12000, 1024), top)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use: another
                continue
            return port
    raise AssertionError("no free port found below the ephemeral range")


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a host that hangs); its number."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        with suppress(OSError):
            while True:
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)
        for conn in held:
            conn.close()
