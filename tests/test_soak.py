"""Soak: many uploads processed by 2 workers while 100 clients poll, against real gunicorn."""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import mediagen
from tests.conftest import start_worker, stop_worker
from tests.helpers import free_port, http_request, http_upload, wait_for

pytestmark = pytest.mark.e2e
UPLOADS = int(os.environ.get("SOAK_UPLOADS", "50"))
POLLERS = int(os.environ.get("SOAK_POLLERS", "100"))
# Seconds for every task to end once all are triggered: a bound, not a performance target.
# The test's own timeout leaves room for the uploads before and the teardown after, so the
# deadline (with the states it names) is what fails first, never pytest-timeout.
DEADLINE = 8 * UPLOADS


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def web_pids(master: int) -> list[int]:
    pids = [master]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return pids


@pytest.fixture
def server(settings, tmp_path):
    port = free_port()
    with open(tmp_path / "gunicorn.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "2",
             "--threads", "8", "wsgi:app"],
            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
            stderr=log, start_new_session=True)
    try:
        wait_for(lambda: _answers(port), timeout=30, interval=0.2)
        yield port, proc
    finally:
        proc.terminate()  # gunicorn's master stops its workers
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _answers(port: int) -> bool:
    try:
        return http_request(port, "GET", "/healthz")[0] == 200
    except OSError:
        return False


class Pollers:
    """POLLERS threads asking for progress until told to stop, recording every answer."""

    def __init__(self, port: int, video_ids: list[str]) -> None:
        self.port, self.ids = port, video_ids
        self.stop = threading.Event()
        self.codes: dict[int, int] = {}
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(POLLERS)]

    def run(self, n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = n
        while not self.stop.is_set():
            vid = self.ids[i % len(self.ids)]
            i += 1
            started = time.perf_counter()
            try:
                conn.request("GET", f"/api/v1/videos/{vid}/reprocess")
                resp = conn.getresponse()
                json.loads(resp.read())
                with self.lock:
                    self.codes[resp.status] = self.codes.get(resp.status, 0) + 1
                    self.latencies.append(time.perf_counter() - started)
            except Exception as exc:  # every failed poll is a finding
                with self.lock:
                    self.errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.stop.wait(1.0)
        conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


@pytest.mark.timeout(DEADLINE + 300)
def test_soak_uploads_processed_while_clients_poll(server, settings, tmp_path):
    port, proc = server
    backend = settings.database_url.split(":", 1)[0].split("+")[0]
    clip = mediagen.make_speech_video(tmp_path / "soak.mp4", "Hello there. Good morning.",
                                      size="320x240")
    data = clip.read_bytes()
    workers = [start_worker() for _ in range(2)]
    try:
        first = http_upload(port, data, "warmup.mp4")
        http_request(port, "GET", f"/api/v1/videos/{first}/reprocess")
        rss_start = rss_kib(web_pids(proc.pid))
        started = time.monotonic()
        ids = [first]
        with Pollers(port, ids) as pollers:
            for i in range(UPLOADS - 1):
                ids.append(http_upload(port, data, f"soak-{i}.mp4"))
            for vid in ids:
                status, raw = http_request(port, "POST", f"/api/v1/videos/{vid}/run_sync")
                assert status == 202, raw[:300]

            def all_done():
                states = [json.loads(http_request(port, "GET", f"/api/v1/videos/{v}/reprocess")[1])
                          for v in ids]
                return all(s["status"] not in ("queued", "running") for s in states) and states

            states = wait_for(all_done, timeout=DEADLINE, interval=2)
        elapsed = time.monotonic() - started
        rss_end = rss_kib(web_pids(proc.pid))
    finally:
        for w in workers:
            w.terminate()  # both at once: each may take a while to finish its job
        for w in workers:
            stop_worker(w)
    polls = sum(pollers.codes.values())
    report = {
        "database": backend, "uploads": UPLOADS, "pollers": POLLERS, "seconds": round(elapsed, 1),
        "polls": polls, "poll_codes": pollers.codes, "poll_errors": len(pollers.errors),
        "poll_p50_ms": round(statistics.median(pollers.latencies) * 1000, 1),
        "poll_p99_ms": round(statistics.quantiles(pollers.latencies, n=100)[98] * 1000, 1),
        "web_rss_start_mib": round(rss_start / 1024, 1),
        "web_rss_end_mib": round(rss_end / 1024, 1),
    }
    print("SOAK", json.dumps(report))
    if os.environ.get("SOAK_REPORT"):
        target = Path(os.environ["SOAK_REPORT"]) / f"soak-{backend}.json"
        target.write_text(json.dumps(report, indent=2) + "\n")
    assert [s["status"] for s in states] == ["completed"] * UPLOADS
    assert pollers.errors == []
    assert set(pollers.codes) == {200} and polls > POLLERS
    # "flat": the web processes may warm caches, but must not grow with the traffic
    assert rss_end < rss_start * 1.25 + 10 * 1024, report
