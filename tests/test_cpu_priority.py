"""The preview encode runs below the other steps' CPU priority (TRANSCODE_NICE).

x264 takes every core it is given, whisper only its share (WHISPER_THREADS): at the same
priority, x264's threads starve the transcription that the user waits for
(docs/PERFORMANCE.md, section 1b). These tests read the nice values of the real processes
from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import mediagen, procs
from tests.conftest import start_worker, stop_worker
from tests.helpers import progress_of, upload_ok
from webapp.config import ConfigError, Settings
from webapp.services import ffrun
from webapp.services.media.preview import transcode_preview


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)  # this thread's, on Linux


@pytest.fixture(scope="module")
def hd_clip(tmp_path_factory) -> Path:
    return mediagen.make_video(tmp_path_factory.mktemp("nice") / "hd.mp4", duration=6.0,
                               size="1280x720")


def test_niced_lowers_every_thread_of_the_process_it_starts_and_not_the_callers() -> None:
    before = own_nice()
    proc = ffrun.niced(lambda: subprocess.Popen(["sleep", "30"]), 5)
    try:
        assert procs.thread_nices(proc.pid) == {min(19, before + 5)}
        assert own_nice() == before
    finally:
        proc.kill()
        proc.wait()
    capped = ffrun.niced(lambda: subprocess.Popen(["sleep", "30"]), 40)
    try:
        assert procs.thread_nices(capped.pid) == {19}
    finally:
        capped.kill()
        capped.wait()


def test_niced_hands_the_callers_thread_what_start_raised() -> None:
    def missing() -> subprocess.Popen[bytes]:
        return subprocess.Popen(["/nonexistent/vidpipe-tool"])

    with pytest.raises(FileNotFoundError):
        ffrun.niced(missing, 10)


class TimeLimit(Exception):
    """Stands for RQ's JobTimeoutException, which a SIGALRM handler raises the same way."""


def test_a_time_limit_while_starting_leaves_nothing_running() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def slow_start() -> subprocess.Popen[bytes]:
        time.sleep(1.5)  # the limit (at 0.1 s) strikes in the caller's wait meanwhile
        proc = subprocess.Popen(["sleep", "30"])
        started.append(proc)
        return proc

    def strike(signum, frame):
        raise TimeLimit

    previous = signal.signal(signal.SIGALRM, strike)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        with pytest.raises(TimeLimit):
            ffrun.niced(slow_start, 5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                pytest.fail("the process started under the time limit was left running")
    assert len(started) == 1  # it was started, and killed: poll() had its exit status
    assert started[0].returncode == -signal.SIGKILL

def test_the_preview_encode_runs_niced_in_every_thread(hd_clip: Path, tmp_path: Path) -> None:
    seen: list[set[int]] = []
    threads_seen: list[int] = []
    me = os.getpid()

    def look(fraction: float) -> None:
        for pid in procs.children(me):
            if "libx264" in procs.cmdline(pid):
                seen.append(procs.thread_nices(pid))
                threads_seen.append(len(list(Path(f"/proc/{pid}/task").glob("*"))))

    before = own_nice()
    transcode_preview(hd_clip, tmp_path / "preview.mp4", 6.0, look, threads=2, nice=7)
    assert seen, "no progress report came while ffmpeg ran"
    # x264's and the decoder's threads included: they are what takes the cores.
    assert any(seen) and all(nices == {before + 7} for nices in seen if nices), seen
    assert max(threads_seen) > 2, threads_seen  # the threads started after ffmpeg did
    assert own_nice() == before


@pytest.mark.parametrize("raw", ["-1", "20", "ten"])
def test_transcode_nice_out_of_range_stops_start_up(monkeypatch, raw: str) -> None:
    monkeypatch.setenv("TRANSCODE_NICE", raw)
    with pytest.raises(ConfigError, match=f"TRANSCODE_NICE must be a whole number from 0 to "
                                          f"19; got '{raw}'"):
        Settings.from_env()


def test_transcode_nice_defaults_to_10(monkeypatch) -> None:
    monkeypatch.delenv("TRANSCODE_NICE", raising=False)
    assert Settings.from_env().transcode_nice == 10
    monkeypatch.setenv("TRANSCODE_NICE", "0")
    assert Settings.from_env().transcode_nice == 0


@pytest.mark.e2e
def test_a_worker_encodes_the_preview_niced_and_extracts_the_audio_not(client, tmp_path,
                                                                        settings) -> None:
    # 20 s of 720p: the encode takes long enough to be looked at several times.
    src = mediagen.make_video(tmp_path / "talk.mp4", duration=20.0, size="1280x720")
    vid = upload_ok(client, src)["id"]
    proc = start_worker({"TRANSCODE_NICE": "10"})
    try:
        assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
        worker_nice = None
        # (ffmpeg writes into ".preview.part.mp4" and ".audio.part.wav" until it is done)
        nices: dict[str, set[int]] = {"preview.part": set(), "audio.part": set()}
        deadline = time.monotonic() + 240
        while progress_of(client, vid)["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, progress_of(client, vid)
            for pid in procs.in_session(proc.pid):
                line = procs.cmdline(pid)
                if pid == proc.pid:
                    worker_nice = worker_nice or min(procs.thread_nices(pid) or {0})
                for output in nices:
                    if line.startswith("ffmpeg") and output in line and vid in line:
                        nices[output] |= procs.thread_nices(pid)
            time.sleep(0.02)
        assert progress_of(client, vid)["status"] == "completed"
    finally:
        stop_worker(proc)
    base = worker_nice or 0
    assert nices["preview.part"] == {base + 10}, nices
    # The audio extraction may be over before it is seen; when seen, it runs as the worker.
    assert nices["audio.part"] <= {base}, nices
