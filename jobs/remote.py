"""A worker on another host: media from and to the web app over HTTP (webapp/internal.py).

With SERVER_URL set, a step's attempt downloads what it reads (the source, or the parent
step's published outputs) into the worker's bounded cache (jobs/cache.py), resuming a cut
download with HTTP Range and checking the sha256 the server recorded; it writes its
outputs into a folder of its own under the worker's MEDIA_ROOT, and when its work is done
uploads them one by one (a failed upload is sent again whole) and asks the web app to
publish them, which it does only for the step's running attempt.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import http.client
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests
import urllib3
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from jobs.cache import Cache
from webapp.config import Settings
from webapp.models import Video
from webapp.services import ffrun, progress
from webapp.services.queue import NEEDS
from webapp.services.storage import STEP_OUTPUTS, file_sha256, is_valid_id

log = logging.getLogger(__name__)
T = TypeVar("T")

SHA_HEADER = "X-Sha256"
# Waits between tries of one transfer: about a minute in all, longer than a web restart.
DELAYS = (0.5, 1, 2, 4, 8, 15, 15, 15)
# The longest wait a Retry-After (of a 429 or a 503) is followed for, in place of the next
# delay: the web app's lockout of an address lasts AUTH_FAILURE_WINDOW, 300 s by default.
MAX_RETRY_AFTER = 300.0
# What a step must still have of its time limit after such a wait (for the transfer and
# its own work); a wait that would leave less fails the attempt at once, saying why, and
# the step's next attempt starts with a whole time limit.
AFTER_WAIT = 30.0
_CHUNK = 1 << 20


class TransferError(Exception):
    """Media could not be exchanged with the web app; str() is one sentence for people."""


class TokenRefused(TransferError):
    """The web app refused this worker's WORKER_TOKEN (401): no step can be done here until
    it is set right; the step is handed back to the queue and the worker stops."""


class WebAppRefused(TransferError):
    """The web app answered a starting worker's check with a 400: the same request of every
    step would be refused the same way (a SERVER_URL host name not in its ALLOWED_HOSTS)."""


class Superseded(Exception):
    """The web app refused this attempt's files: it is no longer the step's running one."""


def uses_source(step: str) -> bool:
    """Steps with a parent work on its outputs; the others on the source."""
    return step not in NEEDS


def inputs_of(step: str) -> tuple[str, ...]:
    """The published outputs a step reads (the required outputs of its parent)."""
    parent = NEEDS.get(step)
    return STEP_OUTPUTS[parent] if parent else ()


class Server:
    """The web app's worker exchange, as seen from a worker."""

    def __init__(self, settings: Settings, stop: threading.Event | None = None,
                 delays: tuple[float, ...] = DELAYS, deadline: float | None = None) -> None:
        self.base = settings.server_url + "/internal/v1"
        self.cache = Cache(settings.media_root / "cache", settings.worker_cache_bytes)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {settings.worker_token}"
        self.stop = stop or threading.Event()
        self.delays = delays
        self.deadline = deadline  # time.monotonic() at which the step's time limit ends
        self.bytes_down = 0
        self.bytes_up = 0

    def check_token(self) -> str | None:
        """Ask the web app whether it takes this worker's token (one try): raises
        TokenRefused when it does not, WebAppRefused when it refuses the request itself (a
        400: its host check); a sentence when it could not tell (not reached, an error, this
        address locked out), None when it does."""
        try:
            resp = self.http.get(self.base + "/hello", timeout=(5, 10))
            self._check(resp)
        except _Refused as exc:
            raise TokenRefused(f"{exc} (401 from {self.base}/hello): set the same "
                               "WORKER_TOKEN as the web app's") from None
        except _Final as exc:
            if resp.status_code != 400:
                return str(exc)
            # The worker started and failed every step it took, each with this sentence.
            raise WebAppRefused(f"{exc} (400 from {self.base}/hello): every step's requests "
                                "would be refused the same way; set SERVER_URL to a name the "
                                "web app answers to (one in its ALLOWED_HOSTS)") from None
        except (_Again, requests.RequestException) as exc:
            return _cause(exc)
        return None

    # -- downloads --------------------------------------------------------------------

    def source(self, video: Video) -> Path:
        """The video's source in the cache, checked against the sha256 of its upload."""
        return self.fetch(f"/videos/{video.id}/source", f"source-{video.id}", video.sha256,
                          "the source")

    def output(self, video_id: str, folder: str, name: str) -> Path:
        """A published output of the video (from `folder`) in the cache."""
        key = f"{video_id}-{folder.replace('/', '-')}-{name}"
        return self.fetch(f"/videos/{video_id}/outputs/{name}", key, None, name,
                          params={"folder": folder})

    def fetch(self, path: str, key: str, expected: str | None, what: str,
              params: dict[str, str] | None = None) -> Path:
        # A hit is checked against the sha256 when it is known before asking the server
        # (the source's): a truncated or damaged entry is fetched again.
        hit = self.cache.get(key, expected)
        if hit is not None:
            return hit
        part = self.cache.part(key)
        part.unlink(missing_ok=True)
        try:
            try:
                told = self._retrying(lambda: self._download(path, part, params),
                                      f"downloading {what}")
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                log.warning("downloading %s into %s: %s", what, part.parent, exc)
                raise TransferError(f"{what} could not be stored on this worker host: its "
                                    "disk is full") from None
            expected = expected or told
            if not expected:
                raise TransferError(f"the server sent {what} without its sha256")
            got = file_sha256(part)
            if got != expected:
                log.warning("%s downloaded from %s: sha256 %s, expected %s", what, path, got,
                            expected)
                raise TransferError(f"{what} downloaded from the web app does not match its "
                                    "sha256 (damaged on the server's disk or on the way)")
            return self.cache.add(part, key)
        finally:
            part.unlink(missing_ok=True)

    def _download(self, path: str, part: Path, params: dict[str, str] | None) -> str | None:
        """Download into `part`, resuming what it already holds; the server's sha256."""
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-", "If-Range": self._etag} if have else {}
        with self.http.get(self.base + path, params=params, headers=headers, stream=True,
                           timeout=(5, 30)) as resp:
            if resp.status_code == 416 and have:
                return self._sha
            self._check(resp)
            if resp.status_code == 206:
                log.info("resuming the download of %s at byte %d", path, have)
            else:
                have = 0
            self._etag = resp.headers.get("ETag", "")
            self._sha = resp.headers.get(SHA_HEADER)
            with open(part, "ab" if have else "wb") as fh:
                # read1: what has arrived, so that a cut loses nothing already received
                while chunk := resp.raw.read1(_CHUNK):
                    ffrun.check_stop()
                    if self.stop.is_set():
                        raise ffrun.Stopped("stopped on request")
                    fh.write(chunk)
                    self.bytes_down += len(chunk)
        return self._sha

    _etag = ""
    _sha: str | None = None

    # -- uploads ----------------------------------------------------------------------

    def upload(self, task_id: str, step: str, attempt: int, path: Path) -> str:
        """Send one output file (again whole after a failure); its sha256."""
        sha = file_sha256(path)
        url = f"{self.base}/tasks/{task_id}/steps/{step}/{attempt}/files/{path.name}"

        def send() -> str:
            with open(path, "rb") as fh:
                # An empty file as b"": requests would send an empty stream chunked, without
                # the Content-Length the web app needs (captions of a video without speech).
                body = fh if path.stat().st_size else b""
                resp = self.http.put(url, data=body, timeout=(5, 120), headers={
                    SHA_HEADER: sha, "Content-Type": "application/octet-stream"})
            self._check(resp)
            self.bytes_up += path.stat().st_size
            return sha

        return self._retrying(send, f"uploading {path.name}")

    def complete(self, task_id: str, step: str, attempt: int, files: dict[str, str],
                 note: str | None, video: dict[str, object], began: float) -> bool:
        """Ask the web app to publish the uploaded files; False if the attempt is stale.
        The attempt's length so far (from `began`, time.monotonic()) goes with it: the two
        hosts' clocks, which date its start and its end, may differ."""
        url = f"{self.base}/tasks/{task_id}/steps/{step}/{attempt}/complete"

        def send() -> bool:
            resp = self.http.post(url, json={"files": files, "note": note, "video": video,
                                             "ran_for": time.monotonic() - began},
                                  timeout=(5, 120))
            self._check(resp)
            return True

        try:  # not stopped by the attempt's watch: completing makes the attempt not current
            return self._retrying(send, f"publishing {step}", stoppable=False)
        except Superseded:
            return False

    # -- both -------------------------------------------------------------------------

    def _check(self, resp: requests.Response) -> None:
        if resp.status_code in (200, 201, 206):
            return
        if resp.status_code == 409:
            raise Superseded(resp.text[:200])
        if resp.status_code == 401:
            raise _Refused("the web app refused this worker's WORKER_TOKEN")
        if resp.status_code == 404:
            raise _Final("the web app no longer has that file (the video was deleted, or "
                         "its outputs were replaced)")
        if resp.status_code == 400:  # sending the same request again cannot help
            raise _Final(f"the web app refused the request: {_message(resp)}")
        said = _json_message(resp)  # the exchange's own sentence ("its disk is full")
        raise _Again(f"the web app answered {resp.status_code}" + (f": {said}" if said else ""),
                     wait=_retry_after(resp) if resp.status_code in (429, 503) else None)

    def _retrying(self, send: Callable[[], T], what: str, stoppable: bool = True) -> T:
        for delay in (*self.delays, None):
            try:
                return send()
            except _Final as exc:
                raise (TokenRefused if isinstance(exc, _Refused) else TransferError)(
                    str(exc)) from None
            except (_Again, requests.RequestException, urllib3.exceptions.HTTPError,
                    ConnectionError) as exc:
                stop = self.stop if stoppable else threading.Event()
                if delay is None or stop.is_set():
                    log.warning("%s: %s; giving up", what, _short(exc, 1000))
                    raise TransferError(f"{what}: the web app could not be reached or kept "
                                        f"failing ({_cause(exc)})") from None
                # A 429 (this host's address locked out for wrong credentials, maybe a
                # sibling's) or a 503 that says when to come back is waited for as asked:
                # trying again sooner is refused again and would fail the step.
                asked = getattr(exc, "wait", None)
                if asked is not None and asked > delay:
                    delay = min(asked, MAX_RETRY_AFTER)
                    if (self.deadline is not None
                            and time.monotonic() + delay + AFTER_WAIT > self.deadline):
                        log.warning("%s: %s; its Retry-After (%.0f s) outlasts the step's "
                                    "time limit: giving up", what, _short(exc), asked)
                        raise TransferError(
                            f"{what}: the web app asked to wait {asked:.0f} s before trying "
                            f"again, longer than the step's time limit leaves "
                            f"({_cause(exc)})") from None
                    log.warning("%s: %s; waiting %.0f s as its Retry-After asks", what,
                                _short(exc), delay)
                else:
                    log.warning("%s: %s; trying again in %.1f s", what, _short(exc), delay)
                if stop.wait(delay):
                    raise ffrun.Stopped("stopped on request") from None
        raise AssertionError("unreachable")


class _Again(Exception):
    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait  # seconds the web app asked to wait before the next try


def _retry_after(resp: requests.Response) -> float | None:
    """The seconds a Retry-After header asks for (delay-seconds or an HTTP date); None
    without one, or with one that cannot be read."""
    value = resp.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a malformed one without a zone, too
        return None
    return max(0.0, when.timestamp() - time.time())


class _Final(Exception):
    pass


class _Refused(_Final):
    pass


def _message(resp: requests.Response) -> str:
    try:
        return str(resp.json().get("message"))[:200]
    except ValueError:
        return resp.text[:200]


def _json_message(resp: requests.Response) -> str | None:
    """The message of one of the web app's JSON errors; None for other bodies (a proxy's
    error page)."""
    try:
        body = resp.json()
    except ValueError:
        return None
    message = body.get("message") if isinstance(body, dict) else None
    return " ".join(str(message).split())[:200] if message else None


def _short(exc: BaseException, limit: int = 200) -> str:
    return " ".join(str(exc).split())[:limit]


def _cause(exc: BaseException) -> str:
    """Why a transfer failed, in words for the step's error: requests' own text names the
    web app's address and the exchange's URLs (the log has it)."""
    if isinstance(exc, _Again):
        return str(exc)  # "the web app answered 503"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connecting timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "the web app did not answer in time"
    seen, inner = set(), exc  # the innermost reason: requests wraps urllib3 wraps OSError
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, ConnectionRefusedError):
            return "the connection was refused"
        if isinstance(inner, urllib3.exceptions.NameResolutionError):
            return "the web app's host name could not be resolved"
        if isinstance(inner, http.client.RemoteDisconnected):
            return "the connection was closed without an answer"
        if isinstance(inner, (ConnectionResetError, BrokenPipeError)):
            return "the connection was reset"
        if isinstance(inner, (http.client.IncompleteRead, urllib3.exceptions.IncompleteRead)):
            return "the connection was cut mid-transfer"
        nested = [a for a in getattr(inner, "args", ()) if isinstance(a, BaseException)]
        inner = (getattr(inner, "reason", None) or (nested[-1] if nested else None)
                 or inner.__cause__ or inner.__context__)
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError,
                        urllib3.exceptions.ProtocolError)):
        return "the connection was cut mid-transfer"
    return f"the connection failed ({type(exc).__name__})"


@dataclass
class RemoteAttempt:
    """Where one attempt of a step works on a remote worker: its own folder under the
    worker's MEDIA_ROOT (work/<task>/<step>.<attempt>/), removed when it ends."""

    server: Server
    folder: Path

    @property
    def out(self) -> Path:
        return self.folder / "out"

    def prepare(self, video: Video, step: str, published: dict[str, str]
                ) -> tuple[Path, dict[str, Path]]:
        """Download what the step reads; (source path, inputs by name) as hard links in
        this attempt's folder, so that cache eviction never takes them away mid-step."""
        self.out.mkdir(parents=True, exist_ok=True)
        source = self.folder / f"source{Path(video.stored_name).suffix}"
        if uses_source(step):
            _link(self.server.source(video), source)
        inputs = {}
        parent = NEEDS.get(step)
        if parent and parent in published:
            for name in inputs_of(step):
                inputs[name] = self.folder / name
                _link(self.server.output(video.id, published[parent], name), inputs[name])
        return source, inputs

    def publish(self, task_id: str, step: str, attempt: int, note: str | None,
                video_values: dict[str, object], began: float) -> bool:
        """Upload every output, then have them published; False if the attempt is stale.
        `began`: time.monotonic() when the attempt started."""
        files = {}
        try:
            for path in sorted(p for p in self.out.iterdir() if p.is_file()):
                files[path.name] = self.server.upload(task_id, step, attempt, path)
        except Superseded:
            return False
        return self.server.complete(task_id, step, attempt, files, note, video_values, began)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()  # work/<task>/, if nothing else is in it


def _link(cached: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(cached, target)
    except OSError:  # another filesystem: copy
        shutil.copyfile(cached, target)


def attempt_folder(settings: Settings, task_id: str, step: str, attempt: int) -> Path:
    return settings.media_root / "work" / task_id / f"{step}.{attempt}"


def sweep(settings: Settings, sessions: sessionmaker[Session]) -> list[Path]:
    """Remove what attempts that could not clean up after themselves left on this host.

    A work-horse killed mid-step (the OOM killer, RQ's stop command for a cancel, the
    whole worker) leaves its work folder, which holds hard links of its downloads (so that
    evicting them from the cache frees no disk) and partial outputs, and maybe a download
    piece in the cache. The worker sweeps after every job and when it starts: work
    folders whose attempt is not the step's running one (their files are never wanted;
    the folders of running attempts, of this worker's siblings too, stay) and pieces of
    processes that are gone. Folders are listed before the database is read: an attempt
    is recorded running before it makes its folder. A database that does not answer
    decides nothing.
    """
    removed: list[Path] = []
    work = settings.media_root / "work"
    folders = sorted(p for p in work.glob("*/*") if p.is_dir()) if work.is_dir() else []
    for folder in folders:
        task_id, (step, _, number) = folder.parent.name, folder.name.rpartition(".")
        if not (is_valid_id(task_id) and step in STEP_OUTPUTS and number.isdigit()):
            continue
        try:
            with sessions() as session:
                if progress.attempt_is_current(session, task_id, step, int(number)):
                    continue
        except SQLAlchemyError as exc:
            log.warning("sweeping %s: database error (%s); kept for now", work, _short(exc))
            break
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # work/<task>/, if nothing else is in it
        removed.append(folder)
    cache = settings.media_root / "cache"
    for piece in cache.glob(".*.part") if cache.is_dir() else ():
        pid = piece.name.rsplit(".", 2)[-2]  # .<key>.<pid>.part (Cache.part)
        if pid.isdigit() and not _alive(int(pid)):
            piece.unlink(missing_ok=True)
            removed.append(piece)
    if removed:
        log.info("removed %d folder(s) and download piece(s) of attempts that ended without "
                 "cleaning up: %s", len(removed), ", ".join(p.name for p in removed[:5]))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True
