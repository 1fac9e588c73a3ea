"""Keyframe detection on a 3-hour video: the worker's memory while its thumbnails run.

The storyboard decodes keyframes alone when no two are further apart than a tile's interval
(webapp/services/media/thumbnails.py), which it learns from the packet flags of the whole video
(webapp/services/keyframes.py). Before, those flags came as one JSON document of every
packet, parsed into Python objects at once: memory grew with the video's length.

The input (bench/media.py, cached in bench/.cache/): 3 hours of 128x72 30 fps H.264 with a
keyframe every 2 s (324 000 packets; no gap over a tile's 2 s, so every packet must be read),
and the same with a keyframe every 10 s (the answer is known at the first gap).

1. A real worker (`python -m jobs.worker --burst`, RQ, forked work-horse) runs the thumbnails
   step (poster, keyframe detection, storyboard) of the 3-hour video, ingested into a
   temporary SQLite database and MEDIA_ROOT; the other steps are marked skipped. Every
   process under the worker is sampled every 20 ms from /proc/<pid>/status: the work-horse's
   peak RSS (VmHWM, the kernel's high-water mark) is the figure, the tools' (ffprobe,
   ffmpeg) are reported beside it. BENCH_APP_DIR runs the worker from another copy of the
   app (e.g. a checkout of the code before this change), for the before/after figures.
2. Keyframe detection alone, the code before (kept below as `old_keyframe_gap`, the
   baseline measured in the same run) against keyframes.keyframe_gap, each in a fresh
   Python process that first imports what a work-horse has imported (jobs.steps): its own
   peak RSS (VmHWM, exact), ffprobe's (sampled as above), and the time.

    .venv/bin/python -m bench.keyframes

BENCH_RUNS (3) runs of each. MB = 10^6 bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from bench import media as benchmedia
from bench.common import Result, spread, start_task
from webapp.config import PROJECT_ROOT, Settings

# (The other benchmarks' helpers are imported where used: the detection child imports only
# what a work-horse has, so that its memory compares.)

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
APP_DIR = Path(os.environ.get("BENCH_APP_DIR") or PROJECT_ROOT)
HOURS = 3.0
TARGET_MB = 200.0
SAMPLE_EVERY = 0.02
STEP = "thumbnails"
MB = 1_000_000


def old_keyframe_gap(path: Path, duration: float) -> float | None:
    """keyframe_gap as it was before (media.py, commit a57b6ad): the baseline."""
    import ffmpeg

    try:
        info = ffmpeg.probe(str(path), v="error", select_streams="v:0",
                            show_entries="packet=pts_time,flags")
    except (ffmpeg.Error, FileNotFoundError):
        return None
    try:
        starts = [float(p["pts_time"]) for p in info.get("packets", [])
                  if "K" in p.get("flags", "") and p.get("pts_time") not in (None, "N/A")]
    except (TypeError, ValueError):
        return None
    if not starts:
        return None
    starts.sort()
    first = float(info["streams"][0].get("start_time") or 0.0) if info.get("streams") else 0.0
    edges = [min(first, starts[0]), *starts, max(duration + first, starts[-1])]
    return max(later - earlier for earlier, later in zip(edges, edges[1:], strict=False))


# -- 2. detection alone, in a child process -----------------------------------------------------


def detect(which: str, path: Path, duration: float) -> dict:
    """(In the child) one detection; its own peak RSS (VmHWM, exact) and ffprobe's (sampled).

    Not getrusage's ru_maxrss: Linux carries the peak of the image a process replaced at
    exec over, i.e. a fork of the benchmark's big parent process."""
    import jobs.steps  # noqa: F401  (what a work-horse has imported)
    from webapp.services.keyframes import keyframe_gap

    before = _kb(_status(os.getpid()), "VmHWM")
    sampler = TreeSampler(os.getpid())
    sampler.start()
    started = time.perf_counter()
    try:
        if which == "old":
            gap = old_keyframe_gap(path, duration)
        else:  # as make_storyboard asks: is every gap within a 2 s tile (+1 %)?
            gap = keyframe_gap(path, duration, enough=2.0 * 1.01)
        seconds = time.perf_counter() - started
    finally:
        sampler.done.set()
        sampler.join(5)
    return {
        "gap_s": gap,
        "seconds": round(seconds, 3),
        "rss_before_mb": round(before, 1),
        "peak_mb": round(_kb(_status(os.getpid()), "VmHWM"), 1),
        "ffprobe_peak_mb": sampler.peak("ffprobe"),
    }


def detection_alone(which: str, path: Path, duration: float) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.keyframes", "--detect", which, str(path), str(duration)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"detection ({which}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- 1. a real worker -------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _kb(status: dict[str, str], key: str) -> float:
    """A /proc status size ("123456 kB") in MB."""
    return int(status.get(key, "0 kB").split()[0]) * 1000 / MB


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    return children


class TreeSampler(threading.Thread):
    """Peak RSS (VmHWM) of every process under the worker, by role (the worker, its
    work-horse and reconciler, the tools), sampled until stopped."""

    def __init__(self, worker_pid: int) -> None:
        super().__init__(daemon=True)
        self.worker_pid = worker_pid
        self.peaks: dict[int, tuple[str, float]] = {}  # pid -> (role, peak MB)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY):
            self.sample()

    def sample(self) -> None:
        children = _children()
        todo = [(self.worker_pid, "worker")]
        while todo:
            pid, role = todo.pop()
            try:
                status = _status(pid)
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if status.get("Name") in ("ffprobe", "ffmpeg"):
                role = status["Name"]
            elif role == "worker" and pid != self.worker_pid:
                role = "reconciler" if b"jobs.reconciler" in cmdline else "horse"
            peak = _kb(status, "VmHWM")
            self.peaks[pid] = (role, max(peak, self.peaks.get(pid, (role, 0.0))[1]))
            todo += [(child, role) for child in children.get(pid, [])]

    def peak(self, role: str) -> float | None:
        values = [mb for r, mb in self.peaks.values() if r == role]
        return round(max(values), 1) if values else None


def worker_run(tmp: Path, env: dict[str, str], database_url: str, video_id: str,
               run: int, task_ids: set[str]) -> dict:
    from bench.polling import stop_group
    from webapp.db import session_factory
    from webapp.models import ProcessingTask

    settings = Settings.from_env(database_url=database_url, redis_url=env["REDIS_URL"],
                                 queue_name=env["QUEUE_NAME"],
                                 media_root=Path(env["MEDIA_ROOT"]))
    task_id = start_task(database_url, settings, video_id, STEP)
    task_ids.add(task_id)
    log = tmp / f"worker-{run}.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "jobs.worker", "--burst", "--name",
             f"{env['QUEUE_NAME']}-{run}"],
            cwd=APP_DIR, env={**env, "PYTHONPATH": str(APP_DIR)}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    sampler = TreeSampler(worker.pid)
    sampler.start()
    try:
        worker.wait(1800)
    finally:
        sampler.done.set()
        sampler.join(5)
        stop_group(worker)
    with session_factory(database_url)() as session:
        task = session.get(ProcessingTask, task_id)
        sub = next(s for s in task.subtasks if s.name == STEP)
        if sub.status != "completed":
            raise RuntimeError(f"{STEP} ended {sub.status}: {sub.error}\n"
                               f"{log.read_text()[-2000:]}")
        seconds = (sub.finished_at - sub.started_at).total_seconds()
    return {
        "horse_peak_mb": sampler.peak("horse"),
        "worker_peak_mb": sampler.peak("worker"),
        "ffprobe_peak_mb": sampler.peak("ffprobe"),
        "ffmpeg_peak_mb": sampler.peak("ffmpeg"),
        "step_seconds": round(seconds, 2),
    }


def worker_runs(video: Path) -> list[dict]:
    from redis import Redis

    from bench.polling import REDIS_URL, app_env, cleanup_redis, migrate, workdir
    from bench.progress_writes import ingest_clip

    Redis.from_url(REDIS_URL).ping()
    queue = f"bench-keyframes-{uuid.uuid4().hex[:8]}"
    runs: list[dict] = []
    task_ids: set[str] = set()
    with workdir("keyframes") as tmp:
        database_url = f"sqlite:///{tmp / 'vidpipe.db'}"
        migrate(database_url)
        env = app_env(tmp, database_url, queue)
        try:
            video_id = ingest_clip(database_url, tmp / "media", video)
            for run in range(RUNS):
                runs.append(worker_run(tmp, env, database_url, video_id, run, task_ids))
                print(f"worker run {run + 1}: {runs[-1]}", flush=True)
        finally:
            cleanup_redis(queue, task_ids)  # the jobs' keys name their task, not the queue
    return runs


# -- the benchmark ----------------------------------------------------------------------------


def main() -> int:
    duration = HOURS * 3600
    videos = {"keyframe every 2 s": benchmedia.long_video(HOURS, gop_seconds=2),
              "keyframe every 10 s": benchmedia.long_video(HOURS, gop_seconds=10)}
    started = time.time()
    worker = worker_runs(videos["keyframe every 2 s"])
    alone: dict[str, dict[str, list[dict]]] = {}
    for name, path in videos.items():
        alone[name] = {"old": [], "new": []}
        for run in range(RUNS):
            for which in (("old", "new") if run % 2 == 0 else ("new", "old")):
                r = detection_alone(which, path, duration)
                alone[name][which].append(r)
                print(f"{name}, {which} code, run {run + 1}: {r}", flush=True)
    keys = ("seconds", "peak_mb", "ffprobe_peak_mb", "rss_before_mb")
    summary = {name: {which: {k: spread([r[k] for r in rs]) for k in keys}
                      for which, rs in sides.items()}
               for name, sides in alone.items()}
    horse = spread([r["horse_peak_mb"] for r in worker])
    worst = max(r["horse_peak_mb"] for r in worker)
    regular = summary["keyframe every 2 s"]
    details = {
        "worker": {"runs": worker,
                   **{k: spread([r[k] for r in worker if r[k] is not None])
                      for k in worker[0]}},
        "detection_alone": summary, "detection_runs": alone,
        "videos": {name: {"path": str(p.relative_to(PROJECT_ROOT)), "bytes": p.stat().st_size,
                          "hours": HOURS, "size": "128x72", "fps": 30}
                   for name, p in videos.items()},
        "app_dir": str(APP_DIR), "seconds": round(time.time() - started, 1),
    }
    Result(
        name="keyframes",
        title="Worker memory on a 3-hour video (thumbnails step, real worker)",
        target=f"work-horse peak RSS < {TARGET_MB:.0f} MB",
        measured=(f"horse peak {horse['median']:.0f} MB (max {worst:.0f} MB, median of {RUNS}); "
                  f"keyframe detection alone: peak {regular['new']['peak_mb']['median']:.0f} MB"
                  f" in {regular['new']['seconds']['median']:.1f} s, code before "
                  f"{regular['old']['peak_mb']['median']:.0f} MB in "
                  f"{regular['old']['seconds']['median']:.1f} s"),
        met=worst < TARGET_MB,
        details=details,
        notes=("RSS of the work-horse, a fork of the worker (the imported app included); the "
               "tools run in processes of their own. See docs/PERFORMANCE.md, section 9."),
    ).write()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--detect"]:
        print(json.dumps(detect(sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]))))
    else:
        from bench.polling import run_main

        run_main(main, "keyframes")
