"""Progress polling: vidpipe's `GET /api/v1/videos/<id>/reprocess` against a bare Flask app.

Both run under the same gunicorn settings as the Procfile's web process (`gunicorn -c
gunicorn.conf.py`: its default gthread workers and threads, access log on stdout, here
to a file). vidpipe serves a fresh SQLite database (alembic migrations) holding one video
whose task is running (extract_audio done, transcode at 42 %); the baseline is
bench/bare_app.py, one Flask endpoint answering the very JSON document vidpipe answers.

Load: wrk (Debian's, `scripts/system-deps.sh wrk`), one thread, 32 keep-alive connections,
BENCH_SECONDS (10) s per measurement, closed loop (each connection sends its next poll as
soon as the previous answer arrived), after a 2 s warm-up of each server. Two modes:

- plain: no validator, every answer is a 200 with the JSON body;
- conditional: If-None-Match with the current ETag, every answer is a bodiless 304
  (the statuses are counted in gunicorn's access log).

Each of BENCH_RUNS (5) runs measures both apps in both modes, the apps in alternating order
(ABBA); reported per mode: requests/s and the paired ratio vidpipe/bare (median and spread),
latency percentiles from wrk, and the CPU time the server and wrk used. Keep-alive
connections stay on the gunicorn worker that accepted them, and about every other time one
of the 2 workers accepts nearly all 32 (the server then runs on one core, for either app):
such a measurement is repeated (see BALANCE) and kept in the details, so that both apps are
compared at the capacity of the configuration. A paced run of
vidpipe alone (each connection waits 50-150 ms, at random, between polls: ~300 polls/s, far
below saturation, yet ten times the UI's rate of one poll a second) shows the latency 32
concurrent pollers see: the p99 target applies to it. Under the saturating load a poll
waits behind the other 31 whatever it costs (mean latency ≈ 32 / throughput), so that p99
is reported with bare Flask's for comparison.

Plain polls of an unchanged progress are answered from webapp/fastpoll.py's cache of recent
answers and conditional ones with a 304, both after one query and without entering Flask:
the benchmark measures what a poller of a running task sees between two progress writes.

The machine's 2 cores are shared by gunicorn and wrk (wrk uses about a fifth of one).

    .venv/bin/python -m bench.polling

The helpers below (temporary databases, a gunicorn under the Procfile settings, Redis
clean-up) are shared with bench.trigger, bench.progress_writes and bench.scale.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import Result, spread
from webapp.config import DEFAULT_WEIGHTS, PROJECT_ROOT

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = 32
PACED_DELAY_MS = 100
# A saturating measurement counts when the busier of the 2 workers used at most this share of
# their CPU time: wrk opens its 32 connections at once, keep-alive keeps each on the worker
# that accepted it, and about every other time one worker grabs nearly all of them (then the
# server runs on one core, whatever the app). Repeated up to MAX_ATTEMPTS times otherwise.
BALANCE = 0.65
MAX_ATTEMPTS = 6
TARGET_RATIO = 0.8
TARGET_P99_MS = 20.0
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


# -- shared helpers ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def migrate(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A temporary directory for one benchmark, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=f"vidpipe-bench-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """A private, migrated schema on BENCH_POSTGRES_URL (like tests/conftest.py); dropped after."""
    from sqlalchemy import text

    from webapp.db import dispose, get_engine

    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = get_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        migrate(url)
        yield url
    finally:
        dispose(url)
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


def app_env(tmp: Path, database_url: str, queue_name: str, **extra: str) -> dict[str, str]:
    """The environment of vidpipe's processes for one benchmark (nothing of the user's)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("API_TOKEN", "ADMIN_PASSWORD", "HOST", "PORT", "WEB_WORKERS",
                        "WEB_THREADS")}
    env.update(DATABASE_URL=database_url, REDIS_URL=REDIS_URL, QUEUE_NAME=queue_name,
               MEDIA_ROOT=str(tmp / "media"), SECRET_KEY=uuid.uuid4().hex, **extra)
    return env


@dataclass
class Server:
    proc: subprocess.Popen
    base_url: str
    log: Path

    def pids(self) -> list[int]:
        """The gunicorn master and its workers."""
        pids = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid:
                    pids.append(int(stat.parent.name))
        return pids

    def cpu_seconds(self) -> float:
        return sum(process_cpu(pid) for pid in self.pids())

    def worker_cpu(self) -> dict[int, float]:
        return {pid: process_cpu(pid) for pid in self.pids() if pid != self.proc.pid}

    def log_size(self) -> int:
        return self.log.stat().st_size

    def statuses_since(self, offset: int) -> Counter:
        """HTTP statuses in the access log written after `offset`."""
        with open(self.log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
        return Counter(re.findall(r'" (\d{3}) ', text))


def gunicorn_size() -> str:
    """The web concurrency gunicorn.conf.py gives on this machine by default, as the
    benchmarks run it (WEB_WORKERS and WEB_THREADS unset, see app_env)."""
    saved = {k: os.environ.pop(k) for k in ("WEB_WORKERS", "WEB_THREADS") if k in os.environ}
    try:
        conf = runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))
    finally:
        os.environ.update(saved)
    return f"{conf['workers']} gthread workers x {conf['threads']} threads"


def process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def gunicorn(app: str, env: dict[str, str], log: Path, ready_path: str) -> Iterator[Server]:
    """`gunicorn -c gunicorn.conf.py <app>` as the Procfile runs it, on a free port."""
    port = free_port()
    env = {**env, "HOST": "127.0.0.1", "PORT": str(port)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([GUNICORN, "-c", "gunicorn.conf.py", app], cwd=PROJECT_ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn {app} exited ({proc.returncode}):\n"
                                   f"{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(server.base_url + ready_path, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn {app} did not answer:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        # Every worker imports the app lazily on its first request: warm them all up.
        for _ in range(20):
            urllib.request.urlopen(server.base_url + ready_path, timeout=10).read()
        yield server
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group started with start_new_session, SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    else:  # the leader is gone; make sure nothing of its group is left
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def cleanup_redis(queue_name: str, ids: set[str] = frozenset()) -> int:
    """Delete every RQ key of this benchmark's queue and jobs (job ids start with a task id)."""
    from redis import Redis

    conn = Redis.from_url(REDIS_URL)
    doomed = []
    for key in conn.scan_iter(count=1000):
        text = key.decode("utf-8", "replace")
        if queue_name in text or (ids and _mentions(text, ids)):
            doomed.append(key)
    for i in range(0, len(doomed), 500):
        conn.delete(*doomed[i:i + 500])
    conn.srem("rq:queues", f"rq:queue:{queue_name}")
    for member in conn.smembers("rq:workers"):
        if queue_name in member.decode("utf-8", "replace"):
            conn.srem("rq:workers", member)
    conn.close()
    return len(doomed)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _mentions(key: str, ids: set[str]) -> bool:
    return any(found in ids for found in _UUID.findall(key))


def insert_running_video(database_url: str) -> tuple[str, str]:
    """One video whose task is running: extract_audio completed, transcode at 42 %."""
    from webapp.db import session_factory
    from webapp.models import Video
    from webapp.services import progress

    with session_factory(database_url)() as session:
        video = Video(original_filename="clip.mp4", stored_name="source.mp4",
                      size_bytes=4_000_000, format_name="mov,mp4,m4a,3gp,3g2,mj2",
                      duration=20.0, width=1280, height=720, has_audio=True, has_video=True,
                      video_codec="h264", audio_codec="aac")
        session.add(video)
        session.commit()
        task = progress.new_task(video, "run_sync", DEFAULT_WEIGHTS, {})
        session.add(task)
        session.commit()
        progress.start_subtask(session, task.id, "extract_audio")
        progress.complete_subtask(session, task.id, "extract_audio", 1)
        progress.start_subtask(session, task.id, "transcode")
        progress.report_progress(session, task.id, "transcode", 1, 42.0)
        return video.id, task.id


def run_main(main, name: str) -> None:
    """Run a benchmark's main(): SIGTERM and Ctrl-C still clean up (the `finally`s run), and
    any failure exits non-zero."""
    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        code = main()
    except KeyboardInterrupt:
        print(f"bench.{name} interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- wrk -----------------------------------------------------------------------------------

WRK_SCRIPT = r"""
-- args: [If-None-Match value or "-"] [mean delay in ms between a connection's requests]
local pause = 0
function init(args)
  if args[1] and args[1] ~= "-" then wrk.headers["If-None-Match"] = args[1] end
  pause = tonumber(args[2] or "0") or 0
  math.randomseed(os.time())
end
function delay()
  -- uniform in [pause/2, 3*pause/2]: the connections do not poll in lockstep
  if pause <= 0 then return 0 end
  return math.random(math.floor(pause / 2), math.floor(pause * 3 / 2))
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
"""


def wrk(url: str, seconds: float, script: Path, if_none_match: str | None = None,
        delay_ms: int = 0, connections: int = CONNECTIONS) -> dict:
    """One wrk measurement; requests/s, latency percentiles (ms) and wrk's own CPU time."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is missing: run scripts/system-deps.sh wrk")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "10s", "-s",
         str(script), url, "--", if_none_match or "-", str(delay_ms)],
        capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    seconds_run = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors",
                                  "status_errors", "timeouts"))
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "rps": round(raw["requests"] / seconds_run, 1),
        "requests": raw["requests"],
        "errors": errors,
        "bytes_per_request": round(raw["bytes"] / max(1, raw["requests"]), 1),
        **{f"{p}_ms": round(raw[f"{p}_us"] / 1000, 2) for p in ("p50", "p90", "p99", "p999")},
        "max_ms": round(raw["max_us"] / 1000, 2),
        "mean_ms": round(raw["mean_us"] / 1000, 2),
        "wrk_cpu_pct": round(100 * wrk_cpu / seconds_run, 1),
    }


def measure(server: Server, path: str, script: Path, seconds: float,
            if_none_match: str | None = None, delay_ms: int = 0) -> dict:
    """wrk against one server, with the server's CPU time and the statuses it logged."""
    offset, cpu, workers = server.log_size(), server.cpu_seconds(), server.worker_cpu()
    result = wrk(server.base_url + path, seconds, script, if_none_match, delay_ms)
    time.sleep(0.2)  # the access log of the last answers
    used = server.cpu_seconds() - cpu
    statuses = server.statuses_since(offset)
    # Keep-alive connections stay with the worker that accepted them, and wrk opens all 32
    # at once: how evenly the two workers shared them shows in their CPU time.
    per_worker = sorted((max(0.0, t - workers.get(pid, t)) for pid, t in
                         server.worker_cpu().items()), reverse=True)
    result["busiest_worker_share"] = round(per_worker[0] / max(1e-9, sum(per_worker)), 2)
    result["server_cpu_pct"] = round(100 * used / seconds, 1)
    result["server_cpu_ms_per_request"] = round(1000 * used / max(1, result["requests"]), 3)
    result["statuses"] = dict(statuses)
    return result


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:  # 304 is an "error" to urllib
        return exc.code, dict(exc.headers), exc.read()


# -- the benchmark -------------------------------------------------------------------------

def summarize(values: list[dict], key: str) -> dict:
    return spread([v[key] for v in values])


def main() -> int:
    from redis import Redis

    Redis.from_url(REDIS_URL).ping()
    queue = f"bench-polling-{uuid.uuid4().hex[:8]}"
    started = time.time()
    load_before = loadavg()
    with workdir("polling") as tmp:
        database_url = f"sqlite:///{tmp / 'vidpipe.db'}"
        migrate(database_url)
        video_id, task_id = insert_running_video(database_url)
        script = tmp / "poll.lua"
        script.write_text(WRK_SCRIPT)
        env = app_env(tmp, database_url, queue)
        path = f"/api/v1/videos/{video_id}/reprocess"
        try:
            with gunicorn("wsgi:app", env, tmp / "vidpipe.log", "/healthz") as vidpipe:
                status, headers, body = fetch(vidpipe.base_url + path)
                assert status == 200, (status, body[:300])
                etag = headers["ETag"]
                doc = tmp / "doc.json"
                doc.write_bytes(body)
                assert fetch(vidpipe.base_url + path, {"If-None-Match": etag})[0] == 304
                bare_env = {**env, "BARE_DOC": str(doc)}
                with gunicorn("bench.bare_app:app", bare_env, tmp / "bare.log",
                              "/progress") as bare:
                    bare_status, bare_headers, bare_body = fetch(bare.base_url + "/progress")
                    assert bare_status == 200 and json.loads(bare_body) == json.loads(body)
                    bare_etag = bare_headers["ETag"]
                    assert fetch(bare.base_url + "/progress",
                                 {"If-None-Match": bare_etag})[0] == 304
                    details = run_series(vidpipe, bare, path, etag, bare_etag, script)
                    details["bodies_bytes"] = {"vidpipe": len(body), "bare": len(bare_body)}
        finally:
            cleanup_redis(queue)
    details["setup"] = {
        "gunicorn": f"gunicorn -c gunicorn.conf.py ({gunicorn_size()}, access log "
                    "to a file)",
        "database": "SQLite (WAL), one video, task running (extract_audio done, transcode 42 %)",
        "load": f"wrk -t1 -c{CONNECTIONS} -d{SECONDS:g}s, keep-alive, closed loop",
        "paced": f"vidpipe only, {PACED_DELAY_MS // 2}-{PACED_DELAY_MS * 3 // 2} ms (uniform) "
                 "between a connection's polls",
        "endpoint": "GET /api/v1/videos/<id>/reprocess vs bare GET /progress (same JSON)",
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "seconds": round(time.time() - started, 1),
    }
    plain, cond = details["plain"], details["conditional"]
    # The p99 target is the latency 32 concurrent pollers see (the paced runs). Under the
    # closed-loop saturating load a poll waits behind the other 31 (mean ≈ 32 / throughput,
    # Little's law), whatever it costs: that p99 is reported next to bare Flask's own.
    paced = [m["vidpipe_paced"]["p99_ms"]["median"] for m in (plain, cond)]
    saturated = [m["vidpipe"]["p99_ms"]["median"] for m in (plain, cond)]
    bare_saturated = [m["bare"]["p99_ms"]["median"] for m in (plain, cond)]
    met = (plain["ratio"]["median"] >= TARGET_RATIO and cond["ratio"]["median"] >= TARGET_RATIO
           and max(paced) <= TARGET_P99_MS)
    measured = (f"ratio {plain['ratio']['median']:.2f} plain / {cond['ratio']['median']:.2f} "
                f"conditional (304); p99 of 32 pollers {paced[0]:.0f} / {paced[1]:.0f} ms; "
                f"saturated p99 {saturated[0]:.0f} / {saturated[1]:.0f} ms (bare Flask "
                f"{bare_saturated[0]:.0f} / {bare_saturated[1]:.0f} ms) (median of {RUNS})")
    Result(
        name="polling",
        title="Progress polling vs bare Flask (gunicorn, 32 keep-alive connections)",
        target=f"ratio ≥ {TARGET_RATIO}, p99 ≤ {TARGET_P99_MS:.0f} ms",
        measured=measured,
        met=met,
        details=details,
        notes=notes(details),
    ).write()
    return 0


def balanced(server: Server, path: str, script: Path, tag: str | None, expected: str,
             label: str, skipped: list[dict]) -> dict:
    """A saturating measurement in which both workers served (see BALANCE): measured again,
    up to MAX_ATTEMPTS times, while one worker did most of the work. Skipped ones are kept."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        m = measure(server, path, script, SECONDS, tag)
        if m["errors"] or set(m["statuses"]) != {expected}:
            raise RuntimeError(f"{label}: unexpected answers {m}")
        m["attempt"] = attempt
        print(f"{label:24} {m['rps']:8.1f} req/s  p50 {m['p50_ms']:6.2f}  p99 "
              f"{m['p99_ms']:6.2f} ms  server cpu {m['server_cpu_pct']:5.1f} % (busiest worker "
              f"{m['busiest_worker_share']:.0%})  wrk cpu {m['wrk_cpu_pct']:4.1f} %", flush=True)
        if m["busiest_worker_share"] <= BALANCE:
            return m
        skipped.append({"what": label, **m})
    raise RuntimeError(f"{label}: one worker took most connections {MAX_ATTEMPTS} times")


def run_series(vidpipe: Server, bare: Server, path: str, etag: str, bare_etag: str,
               script: Path) -> dict:
    for server, url_path in ((vidpipe, path), (bare, "/progress")):  # warm-up
        wrk(server.base_url + url_path, 2, script)
    runs: dict[str, dict[str, list[dict]]] = {
        mode: {"vidpipe": [], "bare": [], "vidpipe_paced": []}
        for mode in ("plain", "conditional")}
    skipped: list[dict] = []
    for i in range(RUNS):
        order = ["vidpipe", "bare"] if i % 2 == 0 else ["bare", "vidpipe"]
        for mode in ("plain", "conditional"):
            expected = "304" if mode == "conditional" else "200"
            for name in order:
                server, url_path = (vidpipe, path) if name == "vidpipe" else (bare, "/progress")
                tag = (etag if name == "vidpipe" else bare_etag) if mode == "conditional" else None
                runs[mode][name].append(balanced(server, url_path, script, tag, expected,
                                                 f"run {i + 1} {mode} {name}", skipped))
            tag = etag if mode == "conditional" else None
            paced = measure(vidpipe, path, script, SECONDS, tag, PACED_DELAY_MS)
            runs[mode]["vidpipe_paced"].append(paced)
            print(f"run {i + 1} {mode} paced      {paced['rps']:8.1f} req/s  p50 "
                  f"{paced['p50_ms']:6.2f}  p99 {paced['p99_ms']:6.2f} ms", flush=True)
    details: dict = {}
    for mode, by_app in runs.items():
        ratios = [v["rps"] / b["rps"] for v, b in zip(by_app["vidpipe"], by_app["bare"],
                                                      strict=True)]
        section = {"ratio": spread(ratios)}
        for name, values in by_app.items():
            section[name] = {
                key: summarize(values, key)
                for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "server_cpu_pct",
                            "server_cpu_ms_per_request", "wrk_cpu_pct", "bytes_per_request",
                            "busiest_worker_share")
            }
            section[name]["runs"] = values
        v_cpu = section["vidpipe"]["server_cpu_ms_per_request"]["median"]
        b_cpu = section["bare"]["server_cpu_ms_per_request"]["median"]
        section["server_cpu_ms_per_request_ratio"] = round(b_cpu / v_cpu, 3) if v_cpu else None
        details[mode] = section
    details["unbalanced_measurements_repeated"] = skipped
    return details


def notes(details: dict) -> str:
    plain, cond = details["plain"], details["conditional"]
    parts = []
    for mode, section in (("plain", plain), ("conditional", cond)):
        v, b = section["vidpipe"], section["bare"]
        parts.append(
            f"{mode}: vidpipe {v['rps']['median']:.0f} req/s vs bare {b['rps']['median']:.0f}"
            f" (ratio {section['ratio']['median']:.2f}); server CPU per poll "
            f"{v['server_cpu_ms_per_request']['median']:.2f} vs "
            f"{b['server_cpu_ms_per_request']['median']:.2f} ms; vidpipe p99 "
            f"{v['p99_ms']['median']:.1f} ms at saturation, "
            f"{section['vidpipe_paced']['p99_ms']['median']:.1f} ms paced "
            f"({section['vidpipe_paced']['rps']['median']:.0f} req/s)")
    parts.append("p99 at saturation is queueing: 32 connections on 8 server threads and 2 "
                 "cores wait ~32/throughput on average. See docs/PERFORMANCE.md, section 2.")
    return "; ".join(parts)


if __name__ == "__main__":
    run_main(main, "polling")
