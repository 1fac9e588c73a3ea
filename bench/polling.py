"""Progress polling under saturation: vidpipe as `make run` starts it against a bare Flask app.

Measured the way a load tester would (issue 15): `wrk -t2 -c32 -d8s --latency`, plain GETs
of one video's progress (`GET /api/v1/videos/<id>/reprocess`, no If-None-Match: every answer
a 200 with the JSON body) and conditional ones (If-None-Match with the current ETag: every
answer a bodiless 304), against

- **vidpipe** started as `make run` starts it: `honcho start -f Procfile -c web=1,worker=2`
  (gunicorn with gunicorn.conf.py and its defaults, 2 idle RQ workers, the output relayed by
  honcho, here into a file), on a fresh SQLite database (alembic) holding one video whose
  task is running (extract_audio done, transcode at 42 %);
- **bare Flask**: bench/hello/hello.py, one route returning `{"ok": 1}`, started as
  `gunicorn -w 2 hello:app` (sync workers, gunicorn's defaults, no access log).

Each of BENCH_RUNS (3) runs measures bare Flask, vidpipe plain and vidpipe conditional, the
order turned around every other run; nothing is discarded. Judged on the medians of the
runs' ratios: throughput ≥ 0.8× bare Flask's, p99 ≤ 2× bare Flask's p99 of the same run,
in both modes. Also reported: the server's CPU time per request (every process of each
server's session), and a paced run of vidpipe (each of the 32 connections waits 50–150 ms
between polls, ~300 polls/s) whose p99 is the earlier target (≤ 20 ms: the latency 32
pollers see below saturation).

The machine's 2 cores are shared by the servers and wrk.

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import Result, spread
from webapp.config import DEFAULT_WEIGHTS, PROJECT_ROOT

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
CONNECTIONS = 32
PACED_DELAY_MS = 100
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
def gunicorn(app: str, env: dict[str, str], log: Path, ready_path: str,
             root: Path = PROJECT_ROOT) -> Iterator[Server]:
    """`gunicorn -c gunicorn.conf.py <app>` as the Procfile runs it, on a free port, in
    `root` (another checkout runs its own code: its config imports webapp from there)."""
    port = free_port()
    env = {**env, "HOST": "127.0.0.1", "PORT": str(port)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([GUNICORN, "-c", "gunicorn.conf.py", app], cwd=root,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(proc, server.base_url + ready_path, log, f"gunicorn {app}", 60)
        # Every worker imports the app lazily on its first request: warm them all up.
        for _ in range(20):
            urllib.request.urlopen(server.base_url + ready_path, timeout=10).read()
        yield server
    finally:
        stop_group(proc)


def wait_ready(proc: subprocess.Popen, url: str, log: Path, what: str, timeout: float) -> None:
    """Until `url` answers 200; RuntimeError with the log's tail if the server exits first or
    does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


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


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:  # 304 is an "error" to urllib
        return exc.code, dict(exc.headers), exc.read()


# -- the benchmark -------------------------------------------------------------------------

HELLO = Path(__file__).resolve().parent / "hello"
HONCHO = str(Path(sys.executable).with_name("honcho"))
TARGET_P99_RATIO = 2.0
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
# BENCH_VARIANT="WEB_KEEPALIVE=0 POLL_LOG_SECONDS=0": settings vidpipe runs with instead of
# its defaults, to measure what a setting changes (the result is then not the record).
VARIANT = dict(item.split("=", 1) for item in os.environ.get("BENCH_VARIANT", "").split())


@dataclass
class Service:
    """A server started in a session of its own."""

    proc: subprocess.Popen
    base_url: str

    def cpu_seconds(self) -> float:
        """CPU time of the server's process tree (honcho puts its children in sessions of
        their own, so the tree, not the session)."""
        parents, cpu = {}, {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                pid = int(stat.parent.name)
                parents[pid] = int(fields[1])
                cpu[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in cpu:
            ancestor = pid
            while ancestor > 1 and ancestor != self.proc.pid:
                ancestor = parents.get(ancestor, 0)
            if ancestor == self.proc.pid:
                total += cpu[pid]
        return total


@contextlib.contextmanager
def started(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, url: str,
            ready_path: str) -> Iterator[Service]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_ready(proc, url + ready_path, log, " ".join(cmd), 90)
        for _ in range(20):  # every worker imports the app on its first request
            urllib.request.urlopen(url + ready_path, timeout=10).read()
        yield Service(proc, url)
    finally:
        stop_group(proc, timeout=30)


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * _UNITS[unit]


def wrk_plain(url: str, header: str | None = None, seconds: float = SECONDS) -> dict:
    """`wrk -t2 -c32 -d8s --latency` (plus the header, if any), its report parsed."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is missing: run scripts/system-deps.sh wrk")
    cmd = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{round(seconds)}s", "--latency", url]
    if header:
        cmd[1:1] = ["-H", header]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    if done.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed ({done.returncode}): {out[-2000:]}{done.stderr[-2000:]}")
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
              "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.MULTILINE):
        result[f"p{pct}_ms"] = round(_ms(value), 2)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise RuntimeError(f"wrk saw failures: {out}")
    return result


def measure_one(service: Service, url: str, header: str | None) -> dict:
    cpu = service.cpu_seconds()
    result = wrk_plain(url, header)
    result["server_cpu_ms_per_request"] = round(
        1000 * (service.cpu_seconds() - cpu) / max(1, result["requests"]), 3)
    return result


def main() -> int:
    from redis import Redis

    Redis.from_url(REDIS_URL).ping()
    queue = f"bench-polling-{uuid.uuid4().hex[:8]}"
    begun = time.time()
    load_before = loadavg()
    with workdir("polling") as tmp:
        database_url = f"sqlite:///{tmp / 'vidpipe.db'}"
        migrate(database_url)
        video_id, _task_id = insert_running_video(database_url)
        port, bare_port = free_port(), free_port()
        env = {**app_env(tmp, database_url, queue), "PORT": str(port)}
        # make puts the virtualenv's bin first on PATH (the Procfile names gunicorn bare)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for key in ("POLL_LOG_SECONDS", "SLOW_REQUEST_MS", "WEB_KEEPALIVE"):
            env.pop(key, None)
        env.update(VARIANT)
        url = f"http://127.0.0.1:{port}/api/v1/videos/{video_id}/reprocess"
        bare_url = f"http://127.0.0.1:{bare_port}/"
        script = tmp / "poll.lua"
        script.write_text(WRK_SCRIPT)
        try:
            with started([HONCHO, "start", "-f", "Procfile", "-c", "web=1,worker=2"],
                         PROJECT_ROOT, env, tmp / "vidpipe.log", f"http://127.0.0.1:{port}",
                         f"/api/v1/videos/{video_id}/reprocess") as vidpipe, \
                    started([GUNICORN, "-w", "2", "-b", f"127.0.0.1:{bare_port}", "hello:app"],
                            HELLO, {k: v for k, v in os.environ.items()
                                    if not k.startswith("GUNICORN")},
                            tmp / "bare.log", bare_url.rstrip("/"), "/") as bare:
                status, headers, body = fetch(url)
                assert status == 200, (status, body[:300])
                etag = headers["ETag"]
                assert fetch(url, {"If-None-Match": etag})[0] == 304
                details = run_series(vidpipe, bare, url, bare_url, etag, script)
                details["vidpipe_log_lines"] = len((tmp / "vidpipe.log").read_text()
                                                   .splitlines())
        finally:
            cleanup_redis(queue)
    details["setup"] = {
        "vidpipe": f"honcho start -f Procfile -c web=1,worker=2 (gunicorn.conf.py defaults: "
                   f"{gunicorn_size()}; POLL_LOG_SECONDS, SLOW_REQUEST_MS and WEB_KEEPALIVE "
                   "unset)" + (f", variant {VARIANT}" if VARIANT else ""),
        "bare": "gunicorn -w 2 hello:app (sync workers, defaults, no access log), "
                "GET / -> {\"ok\": 1}",
        "database": "SQLite (WAL), one video, task running (extract_audio done, transcode 42 %)",
        "load": f"wrk -t2 -c{CONNECTIONS} -d{SECONDS:g}s --latency",
        "paced": f"vidpipe only, wrk -t1 -c{CONNECTIONS}, {PACED_DELAY_MS // 2}-"
                 f"{PACED_DELAY_MS * 3 // 2} ms (uniform) between a connection's polls",
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "seconds": round(time.time() - begun, 1),
    }
    plain, cond = details["plain"], details["conditional"]
    paced = [m["vidpipe_paced"]["p99_ms"]["median"] for m in (plain, cond)]
    met = all(m["ratio"]["median"] >= TARGET_RATIO
              and m["p99_ratio"]["median"] <= TARGET_P99_RATIO for m in (plain, cond))
    met = met and max(paced) <= TARGET_P99_MS
    bare_rps = plain["bare"]["rps"]["median"]
    measured = (
        f"{plain['vidpipe']['rps']['median']:.0f} / {cond['vidpipe']['rps']['median']:.0f} "
        f"polls/s plain / conditional vs bare Flask {bare_rps:.0f}: ratio "
        f"{plain['ratio']['median']:.2f} / {cond['ratio']['median']:.2f}; p99 "
        f"{plain['vidpipe']['p99_ms']['median']:.0f} / {cond['vidpipe']['p99_ms']['median']:.0f}"
        f" ms vs {plain['bare']['p99_ms']['median']:.0f} ms (×{plain['p99_ratio']['median']:.2f}"
        f" / ×{cond['p99_ratio']['median']:.2f}); paced p99 {paced[0]:.0f} / {paced[1]:.0f} ms "
        f"(median of {RUNS})")
    Result(
        name="polling",
        title="Progress polls under saturation vs bare Flask (wrk -t2 -c32 -d8s; vidpipe as "
              "make run starts it)",
        target=f"≥ {TARGET_RATIO}× bare throughput, p99 ≤ {TARGET_P99_RATIO:g}× bare p99; "
               f"paced p99 ≤ {TARGET_P99_MS:.0f} ms",
        measured=measured,
        met=met,
        details=details,
        notes=notes(details),
    ).write()
    return 0


def run_series(vidpipe: Service, bare: Service, url: str, bare_url: str, etag: str,
               script: Path) -> dict:
    for target in (url, bare_url):  # warm-up
        wrk_plain(target, seconds=2)
    runs: dict[str, list[dict]] = {"bare": [], "plain": [], "conditional": [],
                                   "paced_plain": [], "paced_conditional": []}
    steps = [("bare", bare, bare_url, None), ("plain", vidpipe, url, None),
             ("conditional", vidpipe, url, f"If-None-Match: {etag}")]
    for i in range(RUNS):
        for label, service, target, header in (steps if i % 2 == 0 else steps[::-1]):
            m = measure_one(service, target, header)
            runs[label].append(m)
            print(f"run {i + 1} {label:12} {m['rps']:8.1f} req/s  p50 {m.get('p50_ms', 0):6.2f}"
                  f"  p99 {m.get('p99_ms', 0):6.2f} ms  server cpu "
                  f"{m['server_cpu_ms_per_request']:.3f} ms/req", flush=True)
        for mode, tag in (("plain", None), ("conditional", f'"{etag.strip(chr(34))}"')):
            paced = wrk(url, SECONDS, script, tag, PACED_DELAY_MS)
            if paced["errors"]:
                raise RuntimeError(f"paced {mode}: {paced}")
            runs[f"paced_{mode}"].append(paced)
            print(f"run {i + 1} paced {mode:12} {paced['rps']:8.1f} req/s  p99 "
                  f"{paced['p99_ms']:6.2f} ms", flush=True)
    details: dict = {}
    for mode in ("plain", "conditional"):
        ratios = [v["rps"] / b["rps"] for v, b in zip(runs[mode], runs["bare"], strict=True)]
        p99s = [v["p99_ms"] / b["p99_ms"] for v, b in zip(runs[mode], runs["bare"],
                                                          strict=True)]
        section = {"ratio": spread(ratios), "p99_ratio": spread(p99s)}
        for name, values in (("vidpipe", runs[mode]), ("bare", runs["bare"]),
                             ("vidpipe_paced", runs[f"paced_{mode}"])):
            section[name] = {key: summarize(values, key)
                             for key in ("rps", "p50_ms", "p90_ms", "p99_ms",
                                         "server_cpu_ms_per_request") if key in values[0]}
            section[name]["runs"] = values
        details[mode] = section
    return details


def summarize(values: list[dict], key: str) -> dict:
    return spread([v[key] for v in values])


def notes(details: dict) -> str:
    parts = []
    for mode in ("plain", "conditional"):
        section = details[mode]
        v, b = section["vidpipe"], section["bare"]
        ratios = [round(r["rps"] / x["rps"], 2) for r, x in zip(v["runs"], b["runs"],
                                                                 strict=True)]
        parts.append(
            f"{mode}: every run's ratio {ratios}; "
            f"server CPU per poll {v['server_cpu_ms_per_request']['median']:.3f} ms vs bare "
            f"{b['server_cpu_ms_per_request']['median']:.3f} ms")
    parts.append("See docs/PERFORMANCE.md, section 2.")
    return "; ".join(parts)


if __name__ == "__main__":
    run_main(main, "polling")
