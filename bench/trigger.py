"""Trigger latency: `POST /api/v1/videos/<id>/run_sync` with 8 concurrent clients, on SQLite
and on PostgreSQL.

The real stack: gunicorn as the Procfile runs it (`gunicorn -c gunicorn.conf.py wsgi:app`,
its default gthread workers and threads), one server per backend, each on a fresh database
(alembic migrations): a SQLite file, and a private schema on BENCH_POSTGRES_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/test, dropped afterwards); real Redis
(BENCH_REDIS_URL, default redis://127.0.0.1:6379/13, a queue of its own that no worker
consumes). Each measurement inserts 8 x BENCH_TRIGGERS (25) videos directly in the
database, each with a tiny real source file (a hard link of one 1 s clip) and no outputs
yet, so every trigger creates a task with 4 pending steps and enqueues 4 RQ jobs
(transcribe deferred behind extract_audio). 8 client threads, one keep-alive connection
each, start together and each triggers its own 25 videos one after another: every request
is on a different video. Latency is client-side, from sending the request to the whole
answer read; the CPU time of the server's processes is divided by the triggers.

Each of BENCH_RUNS (5) rounds measures every server once (the order reversed every other
round), then the floor: the same clients against bench/bare_app.py (a POST answered 202
with nothing done, same gunicorn settings). The headline per backend is the median of the
rounds' p99; every round is kept in the details with the load average after it. With
BENCH_BASELINE_ROOT set to another checkout (e.g. a `git worktree` of the code before a
change), a server of that code per backend is measured in the same rounds, alternating.
Afterwards, in this process and one at a time, 100 more triggers per backend through the
Flask test client are split into the database part and the Redis enqueue.

Redis keys of the benchmark's queue and jobs are deleted after every measurement.

    .venv/bin/python -m bench.trigger
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from bench.common import Result, percentile, spread
from bench.polling import (
    POSTGRES_URL,
    REDIS_URL,
    Server,
    app_env,
    cleanup_redis,
    gunicorn,
    gunicorn_size,
    loadavg,
    migrate,
    postgres_schema,
    run_main,
    workdir,
)
from webapp.config import PROJECT_ROOT

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
PER_CLIENT = int(os.environ.get("BENCH_TRIGGERS", "25"))
CLIENTS = 8
TARGET_P99_MS = 50.0
IN_PROCESS = 100
BACKENDS = ("sqlite", "postgresql")
BASELINE_ROOT = os.environ.get("BENCH_BASELINE_ROOT")
SUMMARY_KEYS = ("p50_ms", "p90_ms", "p99_ms", "max_ms", "per_second", "server_cpu_ms")


def tiny_clip(path: Path) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-hide_banner", "-loglevel", "error",
                    "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10", "-f", "lavfi",
                    "-i", "sine=frequency=440:sample_rate=16000", "-t", "1",
                    "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                    "-shortest", str(path)], check=True, capture_output=True, timeout=60)
    return path


def insert_videos(database_url: str, media_root: Path, clip: Path, count: int) -> list[str]:
    """`count` videos with the clip as their source (hard links), in one transaction."""
    from sqlalchemy import insert

    from webapp.db import get_engine
    from webapp.models import Video, new_id, utcnow
    from webapp.services.media.probe import probe
    from webapp.services.storage import Storage

    info = probe(clip)
    storage = Storage(media_root)
    ids = [new_id() for _ in range(count)]
    rows = [dict(id=vid, original_filename=f"clip-{i}.mp4", stored_name="source.mp4",
                 size_bytes=clip.stat().st_size, format_name=info.format_name[:64],
                 duration=info.duration, width=info.width, height=info.height,
                 has_audio=info.has_audio, has_video=info.has_video,
                 video_codec=info.video_codec, audio_codec=info.audio_codec,
                 created_at=utcnow())
            for i, vid in enumerate(ids)]
    with get_engine(database_url).begin() as conn:
        conn.execute(insert(Video), rows)
    for vid in ids:
        source = storage.source_path(vid, "source.mp4")
        source.parent.mkdir(parents=True)
        os.link(clip, source)
    return ids


def fire(server: Server, paths: list[list[str]]) -> tuple[list[float], list[int], float]:
    """One client thread per list of paths, started together; latencies (s), statuses, wall."""
    host, port = server.base_url.removeprefix("http://").split(":")
    barrier = threading.Barrier(len(paths) + 1)
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(mine: list[str]) -> None:
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.connect()
            barrier.wait()
            for path in mine:
                started = time.perf_counter()
                conn.request("POST", path)  # Content-Length: 0, no body
                resp = conn.getresponse()
                resp.read()
                took = time.perf_counter() - started
                with lock:
                    latencies.append(took)
                    statuses.append(resp.status)
            conn.close()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()

    threads = [threading.Thread(target=client, args=(mine,), daemon=True) for mine in paths]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}")
    return latencies, statuses, wall


def stats(latencies: list[float], wall: float) -> dict:
    ms = [x * 1000 for x in latencies]
    return {"p50_ms": round(percentile(ms, 50), 2), "p90_ms": round(percentile(ms, 90), 2),
            "p99_ms": round(percentile(ms, 99), 2), "max_ms": round(max(ms), 2),
            "requests": len(ms), "per_second": round(len(ms) / wall, 1)}


def in_process_breakdown(env: dict[str, str], database_url: str, media_root: Path,
                         clip: Path) -> dict:
    """Sequential triggers through the test client: total, the task's INSERTs + commit, and
    the Redis enqueue."""
    from sqlalchemy.orm import Session

    from webapp import create_app
    from webapp.config import Settings
    from webapp.services import progress, queue

    settings = Settings.from_env(database_url=database_url, media_root=media_root,
                                 redis_url=REDIS_URL, queue_name=env["QUEUE_NAME"])
    client = create_app(settings).test_client()
    logging.getLogger("webapp").setLevel(logging.WARNING)  # no line per trigger
    warmup = 10
    ids = insert_videos(database_url, media_root, clip, IN_PROCESS + warmup)
    current = {"enqueue": 0.0, "commit": 0.0}
    real_enqueue, real_commit, real_insert = queue.enqueue_steps, Session.commit, \
        progress.insert_task_rows

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                current[key] += time.perf_counter() - t0
        return wrapper

    samples: dict[str, list[float]] = {"total_ms": [], "enqueue_ms": [], "commit_ms": []}
    with mock.patch.object(queue, "enqueue_steps", timed("enqueue", real_enqueue)), \
            mock.patch.object(Session, "commit", timed("commit", real_commit)), \
            mock.patch.object(progress, "insert_task_rows", timed("commit", real_insert)):
        for i, vid in enumerate(ids):
            current.update(enqueue=0.0, commit=0.0)
            t0 = time.perf_counter()
            resp = client.post(f"/api/v1/videos/{vid}/run_sync")
            took = time.perf_counter() - t0
            assert resp.status_code == 202, resp.get_data(as_text=True)
            if i >= warmup:
                samples["total_ms"].append(1000 * took)
                samples["enqueue_ms"].append(1000 * current["enqueue"])
                samples["commit_ms"].append(1000 * current["commit"])
    out = {key: round(percentile(values, 50), 2) for key, values in samples.items()}
    out["rest_ms"] = round(out["total_ms"] - out["enqueue_ms"] - out["commit_ms"], 2)
    out["p99_total_ms"] = round(percentile(samples["total_ms"], 99), 2)
    out["triggers"] = len(samples["total_ms"])
    forget_jobs(env["QUEUE_NAME"], database_url, ids)
    return out


@dataclass
class Target:
    """One server under test: its backend, which code it runs, its database, its videos."""

    backend: str
    code: str  # "now", or "before" (BENCH_BASELINE_ROOT)
    database_url: str
    server: Server
    runs: list[dict] = field(default_factory=list)
    measured_ids: set[str] = field(default_factory=set)


def database(stack: contextlib.ExitStack, backend: str, tmp: Path, code: str) -> str:
    """A fresh, migrated database of `backend` for one server."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp / f'vidpipe-{code}.db'}"
        migrate(url)
        return url
    return stack.enter_context(postgres_schema(f"bench_trigger_{code}"))


def start_targets(stack: contextlib.ExitStack, tmp: Path, queue: str) -> list[Target]:
    """A gunicorn of this code per backend, and of BENCH_BASELINE_ROOT's if it is set."""
    codes = {"now": None} | ({"before": BASELINE_ROOT} if BASELINE_ROOT else {})
    targets = []
    for backend in BACKENDS:
        for code, root in codes.items():
            url = database(stack, backend, tmp, code)
            env = app_env(tmp, url, queue)
            if root:  # its own code, not this checkout's from PYTHONPATH
                env["PYTHONPATH"] = root
            server = stack.enter_context(gunicorn(
                "wsgi:app", env, tmp / f"{backend}-{code}.log", "/healthz",
                root=Path(root) if root else PROJECT_ROOT))
            targets.append(Target(backend, code, url, server))
    return targets


def trigger_paths(ids: list[str], prefix: str = "/api/v1") -> list[list[str]]:
    """Each client's own videos, one after another."""
    return [[f"{prefix}/videos/{v}/run_sync" for v in ids[i::CLIENTS]] for i in range(CLIENTS)]


def measure(target: Target, media_root: Path, clip: Path, queue: str,
            count: int) -> tuple[dict, list[str]]:
    """One run of `count` triggers (8 clients) against `target`; stats and the video ids."""
    ids = insert_videos(target.database_url, media_root, clip, count)
    cpu_before = target.server.cpu_seconds()
    latencies, statuses, wall = fire(target.server, trigger_paths(ids))
    cpu = target.server.cpu_seconds() - cpu_before
    forget_jobs(queue, target.database_url, ids)
    if set(statuses) != {202}:
        raise RuntimeError(f"{target.backend} ({target.code}): statuses {sorted(set(statuses))}")
    return stats(latencies, wall) | {"server_cpu_ms": round(1000 * cpu / len(ids), 2)}, ids


def run_rounds(targets: list[Target], bare: Server, media_root: Path, clip: Path,
               queue: str) -> list[dict]:
    """BENCH_RUNS rounds; each measures every target once, in an order reversed every other
    round, then the bare app once. Returns the bare app's runs."""
    bare_runs = []
    for target in targets:  # warm-up: a few triggers on each worker thread
        measure(target, media_root, clip, queue, CLIENTS * 3)
    fire(bare, trigger_paths([str(uuid.uuid4()) for _ in range(CLIENTS * 3)], prefix=""))
    for run in range(RUNS):
        order = targets if run % 2 == 0 else targets[::-1]
        for target in order:
            result, ids = measure(target, media_root, clip, queue, CLIENTS * PER_CLIENT)
            target.runs.append(result | {"loadavg": loadavg()})
            target.measured_ids.update(ids)
            print(f"run {run + 1} {target.backend} ({target.code}): {result}", flush=True)
        unknown = [str(uuid.uuid4()) for _ in range(CLIENTS * PER_CLIENT)]
        latencies, statuses, wall = fire(bare, trigger_paths(unknown, prefix=""))
        assert set(statuses) == {202}, statuses
        bare_runs.append(stats(latencies, wall) | {"loadavg": loadavg()})
        print(f"run {run + 1} bare: {bare_runs[-1]}", flush=True)
    return bare_runs


def summary(runs: list[dict]) -> dict:
    return {key: spread([r[key] for r in runs]) for key in SUMMARY_KEYS if key in runs[0]}


def main() -> int:
    from redis import Redis

    Redis.from_url(REDIS_URL).ping()
    queue = f"bench-trigger-{uuid.uuid4().hex[:8]}"
    load_before = loadavg()
    started = time.time()
    breakdown: dict[str, dict] = {}
    with workdir("trigger") as tmp, contextlib.ExitStack() as stack:
        clip = tiny_clip(tmp / "clip.mp4")
        media_root = tmp / "media"
        try:
            targets = start_targets(stack, tmp, queue)
            # The bare app reads no database, but gunicorn.conf.py's start-up checks want
            # one at this code's migration (webapp/startup.py).
            bare_db = f"sqlite:///{tmp / 'bare.db'}"
            migrate(bare_db)
            bare = stack.enter_context(gunicorn("bench.bare_app:app", app_env(
                tmp, bare_db, queue), tmp / "bare.log", "/progress"))
            bare_runs = run_rounds(targets, bare, media_root, clip, queue)
            for target in targets:
                check_tasks(target.database_url, target.measured_ids)
            for target in targets:
                if target.code == "now":
                    breakdown[target.backend] = in_process_breakdown(
                        app_env(tmp, target.database_url, queue), target.database_url,
                        media_root, clip)
        finally:
            cleanup_redis(queue)
    details: dict = {}
    for target in targets:
        details.setdefault(target.backend, {})[target.code] = summary(target.runs)
        details[target.backend][f"{target.code}_runs"] = target.runs
    details["bare"] = summary(bare_runs)
    details["bare_runs"] = bare_runs
    details["in_process_sequential"] = breakdown
    details["setup"] = {
        "gunicorn": f"gunicorn -c gunicorn.conf.py ({gunicorn_size()})",
        "databases": {"sqlite": "SQLite (WAL, synchronous=NORMAL)",
                      "postgresql": f"{POSTGRES_URL} (a private schema, dropped afterwards)"},
        "before": BASELINE_ROOT, "redis": REDIS_URL, "clients": CLIENTS,
        "triggers_per_client": PER_CLIENT, "jobs_per_trigger": 4,
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "seconds": round(time.time() - started, 1),
    }
    p99 = {b: details[b]["now"]["p99_ms"]["median"] for b in BACKENDS}
    p50 = {b: details[b]["now"]["p50_ms"]["median"] for b in BACKENDS}
    Result(
        name="trigger",
        title="Trigger latency (POST run_sync, 8 concurrent clients, gunicorn + Redis; "
              "SQLite and PostgreSQL)",
        target=f"p99 ≤ {TARGET_P99_MS:.0f} ms on both",
        measured=(f"p99 {p99['sqlite']:.1f} ms SQLite, {p99['postgresql']:.1f} ms PostgreSQL "
                  f"(p50 {p50['sqlite']:.1f} / {p50['postgresql']:.1f} ms, median of {RUNS} "
                  f"runs of {CLIENTS * PER_CLIENT})"),
        met=all(value <= TARGET_P99_MS for value in p99.values()),
        details=details,
        notes=notes(details, breakdown),
    ).write()
    return 0


def notes(details: dict, breakdown: dict[str, dict]) -> str:
    alone = "; ".join(
        f"{b}: {d['total_ms']} ms = Redis enqueue of 4 jobs {d['enqueue_ms']} + DB inserts and "
        f"commit {d['commit_ms']} + the rest {d['rest_ms']}" for b, d in breakdown.items())
    before = [f"code before ({BASELINE_ROOT}), same rounds: {b} p99 "
              f"{details[b]['before']['p99_ms']['median']:.1f} ms"
              for b in BACKENDS if "before" in details[b]]
    return "; ".join([
        *before,
        f"bare Flask under the same gunicorn and clients: p99 "
        f"{details['bare']['p99_ms']['median']:.1f} ms",
        f"one trigger alone in-process (median) — {alone}. See docs/PERFORMANCE.md, section 3.",
    ])


def forget_jobs(queue: str, database_url: str, video_ids: list[str]) -> None:
    """Delete the RQ keys of the videos' tasks (job ids start with the task's id) and of
    the queue."""
    from sqlalchemy import select

    from webapp.db import session_factory
    from webapp.models import ProcessingTask

    with session_factory(database_url)() as session:
        task_ids = session.scalars(select(ProcessingTask.id)
                                   .where(ProcessingTask.video_id.in_(video_ids))).all()
    cleanup_redis(queue, set(task_ids))


def check_tasks(database_url: str, ids: set[str]) -> None:
    """Every measured trigger made exactly one queued task with 4 pending steps."""
    from sqlalchemy import func, select

    from webapp.db import session_factory
    from webapp.models import ProcessingTask

    with session_factory(database_url)() as session:
        rows = session.execute(
            select(ProcessingTask.status, func.count()).where(ProcessingTask.video_id.in_(ids))
            .group_by(ProcessingTask.status)).all()
    found = dict(rows)
    if found != {"queued": len(ids)}:
        raise RuntimeError(f"unexpected tasks: {json.dumps(found)} for {len(ids)} triggers")


if __name__ == "__main__":
    run_main(main, "trigger")
