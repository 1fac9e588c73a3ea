"""Progress write rate: database writes per running step per second during a real transcode.

A real worker (`python -m jobs.worker --burst`, RQ, forked work-horse) transcodes a 20 s
1280x720 30 fps H.264/AAC clip (bench/media.py) into the preview; the task has only that
step to run (the others are marked skipped), so every write of the task is the transcode's.
ffmpeg reports every 0.25 s (`-stats_period 0.25`), and the worker's AttemptWatch
writes at most one every PROGRESS_INTERVAL (default 0.5 s) and only when the value grew.

Counting: every write of the progress service bumps the task's `version` (one transaction:
UPDATE processing_tasks, then UPDATE subtasks), so progress writes = the version at the end
- 2 (start and finish), exact whatever the sampling. The rate is those writes over the step's
running time; on a step of a few seconds the edges weigh (n writes 0.5 s apart fit in
(n - 1) x 0.5 s), so the rate between the first and the last write, and the smallest gap
between two writes, are reported too. This process also reads the step's
progress every 10 ms (SQLite WAL: readers never block the worker) to time the changes a
poller can see: the largest gap between consecutive changes, and from the step's start
to the first one. The worker's own log line "(N progress writes)" is checked against the
count. Rate = progress writes / (finished_at - started_at) of the step.

Each of BENCH_RUNS (3) runs transcodes once with the default PROGRESS_INTERVAL (0.5 s) and
once with PROGRESS_INTERVAL=0 (the watch's shortest tick, 0.05 s: nearly every growing ffmpeg
report is written), the baseline that shows what the throttle saves.

    .venv/bin/python -m bench.progress_writes
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench import media as benchmedia
from bench.common import Result, spread, start_task
from bench.polling import (
    REDIS_URL,
    app_env,
    cleanup_redis,
    loadavg,
    migrate,
    run_main,
    stop_group,
    workdir,
)
from webapp.config import PROJECT_ROOT, Settings

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
CLIP_SECONDS = 20
SAMPLE_EVERY = 0.01
TARGET_RATE = 2.0
TARGET_GAP = 1.0
STEP = "transcode"


def ingest_clip(database_url: str, media_root: Path, clip: Path) -> str:
    from webapp.db import session_factory
    from webapp.services import ingest
    from webapp.services.storage import Storage

    with session_factory(database_url)() as session, open(clip, "rb") as fh:
        return ingest.ingest(session, Storage(media_root), fh, clip.name).id


def sample_until_done(database_url: str, task_id: str, worker: subprocess.Popen,
                      timeout: float = 600) -> list[tuple[float, int, str, str, float]]:
    """(monotonic time, task version, task status, step status, step progress) every 10 ms."""
    from sqlalchemy import select

    from webapp.db import get_engine
    from webapp.models import ProcessingTask, SubTask

    stmt = (select(ProcessingTask.version, ProcessingTask.status, SubTask.status,
                   SubTask.progress)
            .join(SubTask, SubTask.task_id == ProcessingTask.id)
            .where(ProcessingTask.id == task_id, SubTask.name == STEP))
    samples = []
    deadline = time.monotonic() + timeout
    with get_engine(database_url).connect() as conn:
        while True:
            row = conn.execute(stmt).one()
            conn.rollback()  # a fresh snapshot next time
            samples.append((time.monotonic(), *row))
            if row[1] not in ("queued", "running"):
                return samples
            if worker.poll() is not None and worker.returncode != 0:
                raise RuntimeError(f"the worker exited with {worker.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the transcode did not finish within {timeout} s")
            time.sleep(SAMPLE_EVERY)


def one_run(tmp: Path, env: dict[str, str], database_url: str, video_id: str,
            interval: str, run: int, task_ids: set[str]) -> dict:
    from webapp.db import session_factory
    from webapp.models import ProcessingTask

    env = {**env, "PROGRESS_INTERVAL": interval}
    settings = Settings.from_env(database_url=database_url, redis_url=env["REDIS_URL"],
                                 queue_name=env["QUEUE_NAME"],
                                 media_root=Path(env["MEDIA_ROOT"]))
    task_id = start_task(database_url, settings, video_id, STEP)
    task_ids.add(task_id)
    log = tmp / f"worker-{run}-{interval}.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "jobs.worker", "--burst", "--name",
             f"{env['QUEUE_NAME']}-{run}-{interval}"],
            cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        samples = sample_until_done(database_url, task_id, worker)
        worker.wait(60)
    finally:
        stop_group(worker)
    with session_factory(database_url)() as session:
        task = session.get(ProcessingTask, task_id)
        sub = next(s for s in task.subtasks if s.name == STEP)
        if task.status != "completed" or sub.status != "completed":
            raise RuntimeError(f"transcode ended {sub.status}: {sub.error or task.error}\n"
                               f"{log.read_text()[-2000:]}")
        running = (sub.finished_at - sub.started_at).total_seconds()
        version = task.version
    writes = version - 2  # start_subtask and complete_subtask are the other two
    logged = re.search(rf"{STEP} of task {task_id} completed \(attempt 1, (\d+) progress writes\)",
                       log.read_text())
    if logged is None or int(logged.group(1)) != writes:
        raise RuntimeError(f"version count {writes} != worker log {logged and logged.group(0)}")
    # The changes a poller sees: when the progress value it reads changes.
    changes, last, started_at, finished_seen = [], None, None, None
    for t, _version, _status, step_status, value in samples:
        if step_status == "running" and started_at is None:
            started_at, last = t, value
        elif started_at is not None and step_status == "running" and value != last:
            changes.append(t)
            last = value
        if step_status == "completed":
            finished_seen = t
            break
    gaps = [b - a for a, b in zip(changes, changes[1:], strict=False)]
    return {
        "progress_interval_s": float(interval),
        "step_seconds": round(running, 3),
        "progress_writes": writes,
        "writes_per_second": round(writes / running, 3),
        "all_writes_per_second": round((writes + 2) / running, 3),
        "visible_changes": len(changes),
        "max_gap_s": round(max(gaps), 3) if gaps else None,
        "min_gap_s": round(min(gaps), 3) if gaps else None,
        # between the first and the last write, free of the edges of a short step
        "steady_writes_per_second": (round((len(changes) - 1) / (changes[-1] - changes[0]), 3)
                                     if len(changes) > 1 else None),
        "first_change_after_start_s": round(changes[0] - started_at, 3) if changes else None,
        "finish_after_last_change_s": round(finished_seen - changes[-1], 3) if changes else None,
        "samples": len(samples),
    }


def main() -> int:
    from redis import Redis

    Redis.from_url(REDIS_URL).ping()
    clip = benchmedia.speech_video(duration=CLIP_SECONDS)
    queue = f"bench-progress-{uuid.uuid4().hex[:8]}"
    load_before = loadavg()
    started = time.time()
    results: dict[str, list[dict]] = {"0.5": [], "0": []}
    task_ids: set[str] = set()
    with workdir("progress-writes") as tmp:
        database_url = f"sqlite:///{tmp / 'vidpipe.db'}"
        migrate(database_url)
        env = app_env(tmp, database_url, queue)
        env.pop("PROGRESS_INTERVAL", None)
        try:
            video_id = ingest_clip(database_url, tmp / "media", clip)
            for run in range(RUNS):
                order = ["0.5", "0"] if run % 2 == 0 else ["0", "0.5"]
                for interval in order:
                    r = one_run(tmp, env, database_url, video_id, interval, run, task_ids)
                    results[interval].append(r)
                    print(f"run {run + 1} PROGRESS_INTERVAL={interval}: {r}", flush=True)
        finally:
            cleanup_redis(queue, task_ids)  # the jobs' keys name their task, not the queue
    keys = ("step_seconds", "progress_writes", "writes_per_second", "steady_writes_per_second",
            "all_writes_per_second", "visible_changes", "max_gap_s", "min_gap_s",
            "first_change_after_start_s", "finish_after_last_change_s")
    summary = {interval: {k: spread([r[k] for r in rs if r[k] is not None]) for k in keys}
               for interval, rs in results.items()}
    rate = summary["0.5"]["writes_per_second"]["median"]
    worst_gap = max(r["max_gap_s"] for r in results["0.5"])
    details = {
        "default_interval": summary["0.5"], "unthrottled": summary["0"],
        "runs": results,
        "clip": {"path": str(clip.relative_to(PROJECT_ROOT)), "seconds": CLIP_SECONDS,
                 "size": "1280x720", "fps": 30},
        "setup": {"worker": "python -m jobs.worker --burst (one per transcode)",
                  "database": "SQLite (WAL)", "sample_every_s": SAMPLE_EVERY,
                  "ffmpeg_stats_period_s": 0.25, "loadavg_before": load_before,
                  "loadavg_after": loadavg(), "seconds": round(time.time() - started, 1)},
    }
    met = rate <= TARGET_RATE and worst_gap <= TARGET_GAP
    Result(
        name="progress_writes",
        title="Progress writes per running step (real worker, 20 s 720p transcode)",
        target=f"≤ {TARGET_RATE:g} writes/s per step, visible gap ≤ {TARGET_GAP:g} s",
        measured=(f"{rate:.2f} writes/s, largest gap {worst_gap:.2f} s "
                  f"(median of {RUNS}; unthrottled "
                  f"{summary['0']['writes_per_second']['median']:.2f} writes/s)"),
        met=met,
        details=details,
        notes=(f"a write is one transaction (task version + step progress); the step ran "
               f"{summary['0.5']['step_seconds']['median']:.1f} s, first visible change "
               f"{summary['0.5']['first_change_after_start_s']['median']:.2f} s after its "
               f"start; between first and last write "
               f"{summary['0.5']['steady_writes_per_second']['median']:.2f} writes/s, "
               f"smallest gap {min(r['min_gap_s'] for r in results['0.5']):.2f} s. "
               "See docs/PERFORMANCE.md, section 4."),
    ).write()
    return 0


if __name__ == "__main__":
    run_main(main, "progress_writes")
