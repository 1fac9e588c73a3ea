"""Pipeline vs raw tools: vidpipe's whole pipeline against the same four steps run by hand.

vidpipe: a 2-minute 1280x720 30 fps H.264/AAC speech video (bench/media.py) is uploaded
once; each run is `POST /api/v1/videos/<id>/reprocess`, timed from its 202 until
`GET .../reprocess` (polled every 0.1 s) says `completed`. The real stack: a fresh SQLite
database migrated with alembic, a temporary MEDIA_ROOT, a unique QUEUE_NAME on
BENCH_REDIS_URL (default redis://127.0.0.1:6379/13), the Flask app in this process (its
test client; HTTP is not what is measured) and 2 `python -m jobs.worker` processes started
before the first trigger and kept across runs, as an operator runs them.

By hand: the same steps one after another from this one process, with no queue or
database: the exact ffmpeg commands vidpipe's wrappers build (captured from
webapp/services/media/ with the runner stubbed out, through `ffrun.command`, which also
builds what the runner executes; only the -progress reporting arguments are left off), and
whisper as a user's script would do it in a fresh Python process (load the same model,
WHISPER_MODEL or vidpipe's default base, transcribe with the same settings, word timestamps
included, and write the segments).

Runs alternate (ABBA order), BENCH_RUNS of each (default 3). The machine may be shared, so
each run records the CPU time other processes took meanwhile (from /proc), and a run where
that exceeds 5 % (BENCH_MAX_OTHER_CPU) is repeated, at most BENCH_RETRIES (4) times in all.
Reported: medians, spread, the ratio vidpipe/by-hand, per-step times from the subtasks'
started_at/finished_at, the idle gaps between them, and where the time goes.

    .venv/bin/python -m bench.pipeline             # the recorded comparison (~3-5 min)
    .venv/bin/python -m bench.pipeline --explore   # plus settings variants and experiments

--explore (or BENCH_EXPLORE=1) also runs vidpipe with other values of the existing
WHISPER_THREADS / FFMPEG_THREADS settings (BENCH_VARIANTS, e.g.
"WHISPER_THREADS=1;FFMPEG_THREADS=2;WHISPER_THREADS=1,FFMPEG_THREADS=2"; BENCH_VARIANT_RUNS
each, default 2), and times, outside vidpipe, what code changes would buy: whisper alone
at 1/2/4 threads, one ffmpeg decode pass writing WAV + sprite + preview together, a
storyboard decoded from keyframes only, and the steps by hand in two lanes with the
longest (transcode) started first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

from bench import media as benchmedia
from bench.common import Result, spread
from webapp.config import PROJECT_ROOT, STEPS

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
# Only for quick smoke runs of this script; the recorded result uses the 120 s video.
VARIANT_RUNS = int(os.environ.get("BENCH_VARIANT_RUNS", "2"))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
DEFAULT_VARIANTS = "WHISPER_THREADS=1;WHISPER_THREADS=2;FFMPEG_THREADS=2"
VARIANT_KEYS = {"WHISPER_THREADS", "FFMPEG_THREADS"}
# A run is repeated when other processes took more than this share of the machine's CPU
# time during it (at most BENCH_RETRIES repeats in all).
MAX_OTHER_CPU = float(os.environ.get("BENCH_MAX_OTHER_CPU", "0.05"))
RETRIES = int(os.environ.get("BENCH_RETRIES", "4"))
WORKERS = 2
POLL = 0.1
RUN_TIMEOUT = 900.0

WHISPER_SCRIPT = textwrap.dedent('''\
    """What a user would write: load the model, transcribe the WAV, save the segments (with
    their words' times, which vidpipe cuts its caption cues from)."""
    import json
    import sys
    import time

    t0 = time.perf_counter()
    from faster_whisper import WhisperModel

    t1 = time.perf_counter()
    model_dir, audio, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads)
    t2 = time.perf_counter()
    segments, info = model.transcribe(audio, vad_filter=True, word_timestamps=True)
    rows = [{"start": s.start, "end": s.end, "text": s.text.strip(),
             "words": [[w.start, w.end, w.word] for w in s.words]} for s in segments]
    t3 = time.perf_counter()
    with open(out, "w") as fh:
        json.dump({"language": info.language, "duration": info.duration, "segments": rows}, fh)
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "transcribe_s": t3 - t2}))
''')


def log(message: str) -> None:
    print(f"[pipeline] {message}", flush=True)


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


# --------------------------------------------------------------------------- disturbance

TICK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds so far: the machine's busy and steal time, and this process tree's.

    The tree's figure sums utime+stime+cutime+cstime over this process and its live
    descendants (workers, horses, ffmpeg, whisper), so children that have exited and been
    reaped still count, through their parent's cutime.
    """
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    procs = process_table()
    mine = sum(procs[pid][1] for pid in descendants(os.getpid(), procs, include_self=True))
    return {"busy": (user + nice + system + irq + softirq) / TICK, "steal": steal / TICK,
            "mine": mine / TICK}


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks of it and its reaped children), from /proc."""
    procs: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                rest = fh.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        # rest[0] is field 3 (state): ppid is field 4, utime..cstime fields 14-17.
        procs[int(entry.name)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
    return procs


def descendants(root: int, procs: dict[int, tuple[int, int]] | None = None,
                include_self: bool = False) -> list[int]:
    procs = process_table() if procs is None else procs
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in procs and (pid != root or include_self):
            found.append(pid)
        todo.extend(children.get(pid, []))
    return found


@contextlib.contextmanager
def disturbance(into: dict[str, Any]) -> Iterator[None]:
    """Record in `into` the CPU seconds other processes (and the hypervisor) took meanwhile."""
    before, t0 = cpu_snapshot(), time.perf_counter()
    yield
    after, wall = cpu_snapshot(), time.perf_counter() - t0
    foreign = (after["busy"] - before["busy"]) - (after["mine"] - before["mine"])
    into["cpu"] = {"this_benchmark_s": round(after["mine"] - before["mine"], 2),
                   "other_processes_s": round(max(0.0, foreign), 2),
                   "steal_s": round(after["steal"] - before["steal"], 2),
                   "cores_x_wall_s": round((os.cpu_count() or 1) * wall, 2)}


def undisturbed(measure: Callable[[], dict[str, Any]], label: str, budget: list[int],
                discarded: list[dict[str, Any]]) -> dict[str, Any]:
    """Run measure(); repeat it (while budget[0] lasts) if other processes used the CPU.

    The machine is shared: a run during which other processes (or the hypervisor) took
    more than BENCH_MAX_OTHER_CPU of its CPU time is recorded in `discarded` and done again.
    """
    while True:
        cpu: dict[str, Any] = {}
        with disturbance(cpu):
            result = measure()
        result |= cpu
        c = cpu["cpu"]
        other = c["other_processes_s"] + c["steal_s"]
        result["disturbed"] = other > MAX_OTHER_CPU * c["cores_x_wall_s"]
        log(f"{label}: {result['seconds']:.1f} s (other processes and steal: {other:.1f} CPU s"
            f" of {c['cores_x_wall_s']:.0f})")
        if not result["disturbed"] or budget[0] <= 0:
            return result
        budget[0] -= 1
        discarded.append({"label": label, "seconds": round(result["seconds"], 3)} | cpu)
        log(f"{label}: disturbed by other processes, measured again")


# --------------------------------------------------------------------------- by hand


def capture_commands(src: Path, out: Path, probe: Any, ffmpeg_threads: int) -> dict[str, list]:
    """The ffmpeg argv lists vidpipe's media wrappers build for src, writing into out.

    The wrappers run with `run`, `atomic_output`, `require_output` and `check_reached_end`
    replaced, so nothing is executed here and outputs get their final names (no .part files
    and renames).
    """
    from webapp.services import ffrun
    from webapp.services.media import audio, preview, thumbnails

    captured: list[list[str]] = []
    plan = thumbnails.plan_storyboard(probe.duration, probe.width, probe.height)

    # (The transcode's `nice` is vidpipe's scheduling, not part of the command: a script by
    # hand runs every tool at the same priority.)
    # The argv is ffrun.command's, what ffrun.run executes, less only the progress reporting.
    def fake_run(stream, duration, on_progress=None, *, check_complete=True,
                 paths=(), nice=0):
        captured.append(ffrun.command(stream, reporting=False))
        return ffrun.RunResult(frames=plan.count)

    @contextlib.contextmanager
    def in_place(dst: Path) -> Iterator[Path]:
        yield dst

    commands: dict[str, list] = {}
    with contextlib.ExitStack() as stubs:
        for module in (audio, thumbnails, preview):  # where each wrapper looks them up
            stubs.enter_context(mock.patch.object(module, "run", fake_run))
            stubs.enter_context(mock.patch.object(module, "atomic_output", in_place))
            stubs.enter_context(mock.patch.object(module, "require_output",
                                                  lambda path: None))
            if hasattr(module, "check_reached_end"):  # (the preview's: nothing was written)
                stubs.enter_context(mock.patch.object(module, "check_reached_end",
                                                      lambda *args: None))
        audio.extract_audio(src, out / "audio.wav", probe.duration)
        commands["extract_audio"] = captured[-1]
        thumbnails.make_poster(src, out / "poster.jpg", probe.duration)
        commands["poster"] = captured[-1]
        # Also writes storyboard.vtt (a few lines of text) here, untimed.
        thumbnails.make_storyboard(src, out / "storyboard.jpg", out / "storyboard.vtt",
                                   probe.duration, probe.width, probe.height)
        commands["storyboard"] = captured[-1]
        preview.transcode_preview(src, out / "preview.mp4", probe.duration,
                                  has_audio=probe.has_audio, threads=ffmpeg_threads)
        commands["transcode"] = captured[-1]
    if len(captured) != 4:
        raise RuntimeError(f"expected 4 ffmpeg commands, captured {len(captured)}")
    return commands


class ByHand:
    """The baseline: the four steps run one after another from this process."""

    def __init__(self, work: Path, src: Path, probe: Any, model_dir: Path,
                 whisper_threads: int, ffmpeg_threads: int) -> None:
        self.out = work / "by-hand"
        self.out.mkdir()
        self.script = work / "transcribe_wav.py"
        self.script.write_text(WHISPER_SCRIPT)
        self.commands = capture_commands(src, self.out, probe, ffmpeg_threads)
        self.model_dir, self.whisper_threads = model_dir, whisper_threads

    def whisper_command(self, threads: int | None = None) -> list[str]:
        return [sys.executable, str(self.script), str(self.model_dir),
                str(self.out / "audio.wav"), str(self.out / "transcript.json"),
                str(self.whisper_threads if threads is None else threads)]

    def run(self) -> dict[str, Any]:
        for path in self.out.iterdir():
            if path.suffix != ".vtt":
                path.unlink()
        steps: dict[str, float] = {}
        started = time.perf_counter()
        for name in ("extract_audio", "transcribe", "poster", "storyboard", "transcode"):
            t0 = time.perf_counter()
            if name == "transcribe":
                whisper = json.loads(_check(self.whisper_command()).strip().splitlines()[-1])
            else:
                _check(self.commands[name])
            steps[name] = time.perf_counter() - t0
        total = time.perf_counter() - started
        transcript = json.loads((self.out / "transcript.json").read_text())
        return {
            "seconds": total,
            "steps": {k: round(v, 3) for k, v in steps.items()},
            "whisper_process": {k: round(v, 3) for k, v in whisper.items()}
            | {"python_start_and_exit_s": round(steps["transcribe"] - sum(whisper.values()), 3)},
            "transcript_words": sum(len(s["text"].split()) for s in transcript["segments"]),
            "preview_bytes": (self.out / "preview.mp4").stat().st_size,
        }


def shown(cmd: list[str], work: Path) -> str:
    """A command as recorded: temp and project paths shortened."""
    text = " ".join(cmd).replace(str(work), "$WORK")
    return text.replace(str(PROJECT_ROOT) + "/", "")


def _check(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))[:300]} failed ({done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return done.stdout


# --------------------------------------------------------------------------- vidpipe


class Stack:
    """A private vidpipe: database, media root, queue, in-process app and 2 workers."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.queue = f"bench-pipeline-{uuid.uuid4().hex[:12]}"
        self.env = {
            "DATABASE_URL": f"sqlite:///{work / 'vidpipe.db'}",
            "REDIS_URL": REDIS_URL,
            "MEDIA_ROOT": str(work / "media"),
            "QUEUE_NAME": self.queue,
            "SECRET_KEY": secrets.token_hex(16),
        }
        self.workers: list[subprocess.Popen] = []
        self.worker_names: list[str] = []
        self.task_ids: list[str] = []
        self.worker_env: dict[str, str] = {}
        self.client = None
        self.redis = None

    def start(self) -> None:
        from alembic import command
        from alembic.config import Config
        from redis import Redis

        from webapp import create_app
        from webapp.config import Settings
        from webapp.db import get_engine

        self.redis = Redis.from_url(REDIS_URL)
        self.redis.ping()
        cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
        cfg.attributes["database_url"] = self.env["DATABASE_URL"]
        cfg.attributes["configure_logger"] = False
        command.upgrade(cfg, "head")
        get_engine(self.env["DATABASE_URL"]).dispose()
        settings = Settings.from_env(
            database_url=self.env["DATABASE_URL"], redis_url=REDIS_URL,
            media_root=Path(self.env["MEDIA_ROOT"]), queue_name=self.queue,
            secret_key=self.env["SECRET_KEY"], api_token="", admin_password="", host="",
        )
        self.settings = settings
        app = create_app(settings)
        self.client = app.test_client()

    def start_workers(self, extra: dict[str, str] | None = None) -> None:
        self.stop_workers()
        base = {k: v for k, v in os.environ.items() if k not in VARIANT_KEYS}
        self.worker_env = {k: os.environ[k] for k in VARIANT_KEYS if k in os.environ}
        self.worker_env.update(extra or {})
        env = base | self.env | self.worker_env
        for _ in range(WORKERS):
            name = f"{self.queue}-w{len(self.worker_names) + 1}"
            logfile = open(self.work / f"{name}.log", "w")  # noqa: SIM115 (kept by Popen)
            proc = subprocess.Popen([sys.executable, "-m", "jobs.worker", "--name", name],
                                    cwd=PROJECT_ROOT, env=env, stdout=logfile,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            logfile.close()
            self.workers.append(proc)
            self.worker_names.append(name)
        self._wait_for_workers()

    def _wait_for_workers(self) -> None:
        from rq import Queue, Worker

        queue = Queue(self.queue, connection=self.redis)
        deadline = time.monotonic() + 60
        while Worker.count(connection=self.redis, queue=queue) < len(self.workers):
            dead = [p for p in self.workers if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start; log:\n{self.worker_logs()}")
            time.sleep(0.1)

    def worker_logs(self) -> str:
        return "\n".join(p.read_text()[-1500:] for p in self.work.glob("*-w*.log"))

    def stop_workers(self) -> None:
        """Stop the workers and everything they started (reconcilers, horses, ffmpeg).

        SIGTERM asks RQ for a warm shutdown (an idle worker exits at once, stopping its
        reconciler); a busy one gets a second SIGTERM, RQ's cold shutdown, which kills its
        work horse. Whatever of the process tree is left after that is killed by pid: RQ
        puts each horse in a session of its own, so killing the worker's group is not enough.
        """
        tree = {pid for proc in self.workers for pid in descendants(proc.pid)}
        alive = [p for p in self.workers if p.poll() is None]
        for proc in alive:
            proc.send_signal(signal.SIGTERM)
        for signum, wait in ((signal.SIGTERM, 3.0), (None, 15.0)):
            deadline = time.monotonic() + wait
            while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
                time.sleep(0.1)
            if signum is not None:
                for proc in alive:
                    if proc.poll() is None:
                        proc.send_signal(signum)
        tree |= {pid for proc in self.workers for pid in descendants(proc.pid)}
        for proc in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.workers = []

    def upload(self, path: Path) -> dict[str, Any]:
        with open(path, "rb") as fh:
            resp = self.client.post("/api/v1/videos", data={"file": (fh, path.name)},
                                    content_type="multipart/form-data")
        if resp.status_code != 201:
            raise RuntimeError(f"upload answered {resp.status_code}: {resp.data[:500]!r}")
        return resp.get_json()

    def run(self, video_id: str) -> dict[str, Any]:
        url = f"/api/v1/videos/{video_id}/reprocess"
        posted = time.perf_counter()
        resp = self.client.post(url)
        t0, wall0 = time.perf_counter(), time.time()
        if resp.status_code != 202:
            raise RuntimeError(f"reprocess answered {resp.status_code}: {resp.data[:500]!r}")
        task_id = resp.get_json()["task_id"]
        self.task_ids.append(task_id)
        polls = 0
        while True:
            state = self.client.get(url).get_json()
            polls += 1
            if state["task_id"] == task_id and state["status"] in ("completed", "failed",
                                                                   "cancelled"):
                break
            if time.perf_counter() - t0 > RUN_TIMEOUT:
                raise RuntimeError(f"not done after {RUN_TIMEOUT} s: {state}")
            time.sleep(POLL)
        seconds, wall1 = time.perf_counter() - t0, time.time()
        if state["status"] != "completed":
            raise RuntimeError(f"task {state['status']}: {json.dumps(state)[:2000]}\n"
                               f"{self.worker_logs()}")
        return ({"seconds": seconds, "post_s": round(t0 - posted, 4), "polls": polls}
                | analyse(state, wall0, wall1) | {"outputs": self.outputs(video_id)})

    def outputs(self, video_id: str) -> dict[str, Any]:
        listed = {a["name"]: a["size_bytes"]
                  for a in self.client.get(f"/api/v1/videos/{video_id}/artifacts").get_json()}
        resp = self.client.get(f"/api/v1/videos/{video_id}/artifacts/transcript.json")
        words = len(resp.get_json()["text"].split())
        resp.close()
        return {"artifacts": len(listed), "transcript_words": words,
                "preview_bytes": listed.get("preview.mp4")}

    def cleanup(self) -> None:
        try:
            self.stop_workers()
        finally:
            if self.redis is not None:
                self._clean_redis()
                self.redis.close()

    def _clean_redis(self) -> None:
        keys: set[bytes] = set()
        for pattern in [f"*{self.queue}*", *(f"*{t}*" for t in self.task_ids)]:
            keys.update(self.redis.scan_iter(match=pattern, count=1000))
        if keys:
            self.redis.delete(*keys)
        for name in self.worker_names:
            self.redis.srem("rq:workers", f"rq:worker:{name}")
        self.redis.srem("rq:queues", f"rq:queue:{self.queue}")


def analyse(state: dict[str, Any], wall0: float, wall1: float) -> dict[str, Any]:
    """Per-step times and idle gaps, in seconds after the trigger (the task's created_at)."""
    created = ts(state["created_at"])
    subs = {s["name"]: s for s in state["subtasks"]}
    steps = {}
    for name in STEPS:
        s = subs[name]
        start, end = ts(s["started_at"]) - created, ts(s["finished_at"]) - created
        steps[name] = {"start": round(start, 3), "end": round(end, 3),
                       "seconds": round(end - start, 3), "attempt": s["attempt"]}
    last_end = max(s["end"] for s in steps.values())
    # Which worker ran what: a step continues the lane whose last step had ended when it
    # started (within 50 ms), else it opens a lane of its own.
    lanes: list[list[str]] = []
    idle: dict[str, float] = {}
    for name in sorted(steps, key=lambda n: steps[n]["start"]):
        lane = next((ln for ln in lanes
                     if steps[ln[-1]]["end"] <= steps[name]["start"] + 0.05), None)
        before = steps[lane[-1]]["end"] if lane else 0.0
        idle[f"idle_before_{name}_s"] = round(steps[name]["start"] - before, 3)
        if lane is None:
            lanes.append([name])
        else:
            lane.append(name)
    lane_info = [{"steps": ln, "busy_s": round(sum(steps[n]["seconds"] for n in ln), 3),
                  "ends_at": steps[ln[-1]]["end"]} for ln in lanes]
    return {
        "steps": steps,
        "gaps": {
            "trigger_to_first_start_s": round(min(s["start"] for s in steps.values()), 3),
            "extract_audio_to_transcribe_s": round(
                steps["transcribe"]["start"] - steps["extract_audio"]["end"], 3),
            **{key: idle[key] for key in sorted(idle)},
            "task_finished_after_last_step_s": round(
                ts(state["finished_at"]) - created - last_end, 3),
            "seen_completed_after_last_step_s": round(wall1 - created - last_end, 3),
            "task_created_before_202_s": round(wall0 - created, 3),
        },
        "lanes": lane_info,
        "critical_lane": max(lane_info, key=lambda ln: ln["ends_at"])["steps"],
        "cpu_lanes_busy_share": round(sum(ln["busy_s"] for ln in lane_info)
                                      / (WORKERS * (wall1 - created)), 3),
    }


# --------------------------------------------------------------------------- experiments


def single_pass_command(src: Path, out: Path, probe: Any, threads: int) -> list[str]:
    """One ffmpeg decode feeding preview, sprite and WAV (what steps.py could do)."""
    import ffmpeg

    from webapp.services import ffrun
    from webapp.services.media.thumbnails import plan_storyboard

    plan = plan_storyboard(probe.duration, probe.width, probe.height)
    pick = f"lt(selected_n,{plan.count})*gte(t-start_t+0.001,selected_n*{plan.interval!r})"
    source = ffmpeg.input(str(src))
    video = source["v:0"].split()
    preview = video[0].filter("scale", -2, "trunc(min(ih,480)/2)*2")
    sprite = (video[1].filter("select", pick).filter("scale", plan.tile_width, plan.tile_height)
              .filter("tile", f"{plan.columns}x{plan.rows}"))
    outputs = ffmpeg.merge_outputs(
        ffmpeg.output(preview, source["a:0"], str(out / "preview.mp4"), vcodec="libx264",
                      preset="veryfast", crf=28, pix_fmt="yuv420p", threads=threads,
                      movflags="+faststart", acodec="aac", **{"b:a": "128k"}),
        sprite.output(str(out / "storyboard.jpg"), vframes=1, **{"q:v": 4}),
        source["a:0"].output(str(out / "audio.wav"), ac=1, ar=16000, acodec="pcm_s16le",
                             f="wav"),
    )
    return ffrun.command(outputs, reporting=False)


def _timed_runs(cmd: list[str], runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        _check(cmd)
        times.append(time.perf_counter() - t0)
    return spread(times)


def _lane(commands: list[tuple[str, list[str]]], t0: float) -> dict[str, Any]:
    steps = {}
    for name, cmd in commands:
        started = time.perf_counter()
        _check(cmd)
        steps[name] = {"start": round(started - t0, 3),
                       "seconds": round(time.perf_counter() - started, 3)}
    return {"steps": steps, "ends_at": round(time.perf_counter() - t0, 3)}


def experiments(hand: ByHand, src: Path, probe: Any, work: Path, runs: int) -> dict[str, Any]:
    """Time, outside vidpipe, what code changes would give (see the module docstring)."""
    out: dict[str, Any] = {}
    log("experiment: whisper alone (fresh process) at 1, 2 and 4 threads")
    sweep: dict[str, Any] = {}
    with disturbance(sweep):
        for _ in range(runs):
            for threads in (1, 2, 4):
                done = json.loads(_check(hand.whisper_command(threads)).strip().splitlines()[-1])
                for k, v in done.items():
                    sweep.setdefault(str(threads), {}).setdefault(k, []).append(round(v, 3))
    out["whisper_threads_alone"] = {
        k: ({f"{m}_median": round(statistics.median(v), 3) for m, v in row.items()} | row
            if k != "cpu" else row) for k, row in sweep.items()}

    log("experiment: one decode pass for preview + sprite + WAV")
    single = work / "single-pass"
    single.mkdir()
    cmd = single_pass_command(src, single, probe, threads=0)
    out["single_decode_pass"] = {"command": cmd}
    with disturbance(out["single_decode_pass"]):
        out["single_decode_pass"]["seconds"] = _timed_runs(cmd, runs)

    log("experiment: storyboard from keyframes only (-skip_frame nokey)")
    board = list(hand.commands["storyboard"])
    board[board.index("-i"):board.index("-i")] = ["-skip_frame", "nokey"]
    out["storyboard_keyframes_only"] = {"command": board}
    with disturbance(out["storyboard_keyframes_only"]):
        out["storyboard_keyframes_only"]["seconds"] = _timed_runs(board, runs)

    log("experiment: two lanes by hand, longest step first (transcode | the rest)")
    rest = [("extract_audio", hand.commands["extract_audio"]),
            ("transcribe", hand.whisper_command()),
            ("poster", hand.commands["poster"]), ("storyboard", hand.commands["storyboard"])]
    trials = []
    for _ in range(runs):
        cpu: dict[str, Any] = {}
        with disturbance(cpu):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                first = pool.submit(_lane, [("transcode", hand.commands["transcode"])], t0)
                second = pool.submit(_lane, rest, t0)
                lanes = {"transcode_lane": first.result(), "other_lane": second.result()}
            trials.append({"seconds": round(time.perf_counter() - t0, 3)} | lanes)
        trials[-1] |= cpu
    out["two_lanes_longest_first"] = {
        "seconds": spread([t["seconds"] for t in trials]), "trials": trials,
        "meaning": "what vidpipe's 2 workers would do if transcode were enqueued before "
                   "thumbnails (longest job first), minus queue overhead",
    }
    return out


def parse_variants(text: str) -> list[dict[str, str]]:
    variants = []
    for chunk in filter(None, (c.strip() for c in text.split(";"))):
        env = dict(item.split("=", 1) for item in chunk.split(","))
        if set(env) - VARIANT_KEYS:
            raise SystemExit(f"BENCH_VARIANTS may only set {sorted(VARIANT_KEYS)}: {chunk}")
        variants.append(env)
    return variants


# --------------------------------------------------------------------------- main


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    steps = {n: round(statistics.median(r["steps"][n]["seconds"] for r in runs), 3)
             for n in STEPS}
    gaps = {g: round(statistics.median(r["gaps"][g] for r in runs), 3) for g in runs[0]["gaps"]}
    median_run = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return {"seconds": spread([r["seconds"] for r in runs]), "step_median_s": steps,
            "gap_median_s": gaps, "lanes_of_median_run": median_run["lanes"],
            "other_processes_cpu_s": [r["cpu"]["other_processes_s"] for r in runs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--explore", action="store_true",
                        default=os.environ.get("BENCH_EXPLORE", "") not in ("", "0"))
    args = parser.parse_args(argv)
    # Stopped by a signal, still clean up (workers, temp dir, Redis keys) in the finally
    # below; a background job may have been started with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    from webapp.services import whisper_models, workers
    from webapp.services.media.probe import probe as probe_media
    from webapp.services.transcription import resolve_model_path

    log("preparing the 2-minute 720p speech video (cached in bench/.cache)")
    src = benchmedia.speech_video(int(os.environ.get("BENCH_VIDEO_SECONDS", "120")))
    probe = probe_media(src)
    # As the service resolves WHISPER_THREADS=0: the cores shared among its WORKERS.
    whisper_threads = (int(os.environ.get("WHISPER_THREADS", "0") or 0)
                       or workers.split_cores(WORKERS))
    ffmpeg_threads = int(os.environ.get("FFMPEG_THREADS", "0") or 0)
    model_name = os.environ.get("WHISPER_MODEL", "") or whisper_models.DEFAULT
    work = Path(tempfile.mkdtemp(prefix="vidpipe-bench-pipeline-"))
    stack = Stack(work)
    try:
        hand = ByHand(work, src, probe, resolve_model_path(model_name), whisper_threads,
                      ffmpeg_threads)
        stack.start()
        stack.start_workers()
        video = stack.upload(src)
        log(f"video {video['id']}: {probe.duration:.1f} s {probe.width}x{probe.height}; "
            f"{RUNS} runs each, alternating")
        vid_runs, hand_runs = [], []
        budget, discarded = [RETRIES], []
        for i in range(RUNS):
            order = ("vidpipe", "by hand") if i % 2 == 0 else ("by hand", "vidpipe")
            for which in order:
                if which == "vidpipe":
                    vid_runs.append(undisturbed(lambda: stack.run(video["id"]),
                                                f"run {i + 1} vidpipe", budget, discarded))
                else:
                    hand_runs.append(undisturbed(hand.run, f"run {i + 1} by hand", budget,
                                                 discarded))

        variants = []
        extra: dict[str, Any] = {}
        if args.explore:
            explore_budget = [RETRIES]
            for env in parse_variants(os.environ.get("BENCH_VARIANTS", DEFAULT_VARIANTS)):
                stack.start_workers(env)
                runs = [undisturbed(lambda: stack.run(video["id"]), f"variant {env}",
                                    explore_budget, discarded)
                        for _ in range(VARIANT_RUNS)]
                variants.append({"env": env} | summarize(runs) | {"runs": runs})
            extra = experiments(hand, src, probe, work, VARIANT_RUNS)
    finally:
        stack.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    a = statistics.median(r["seconds"] for r in vid_runs)
    b = statistics.median(r["seconds"] for r in hand_runs)
    ratio = a / b
    vid = summarize(vid_runs)
    hand_steps = {n: round(statistics.median(r["steps"][n] for r in hand_runs), 3)
                  for n in hand_runs[0]["steps"]}
    whisper_split = {k: round(statistics.median(r["whisper_process"][k] for r in hand_runs), 3)
                     for k in hand_runs[0]["whisper_process"]}
    for v in variants:
        v["ratio_to_by_hand"] = round(v["seconds"]["median"] / b, 3)
    details = {
        "video": {"path": os.path.relpath(src, PROJECT_ROOT), "duration_s": probe.duration,
                  "size": f"{probe.width}x{probe.height}", "fps": probe.frame_rate,
                  "codecs": f"{probe.video_codec}/{probe.audio_codec}",
                  "bytes": src.stat().st_size},
        "settings": {"workers": WORKERS, "whisper_model": model_name,
                     "WHISPER_THREADS": whisper_threads, "FFMPEG_THREADS": ffmpeg_threads,
                     "poll_interval_s": POLL, "redis": REDIS_URL},
        "ratio": round(ratio, 3),
        "vidpipe": vid,
        "by_hand": {"seconds": spread([r["seconds"] for r in hand_runs]),
                    "other_processes_cpu_s": [r["cpu"]["other_processes_s"] for r in hand_runs],
                    "step_median_s": hand_steps, "whisper_process_median_s": whisper_split},
        "step_slowdown_vs_by_hand": {
            "extract_audio": round(vid["step_median_s"]["extract_audio"]
                                   / hand_steps["extract_audio"], 2),
            "transcribe": round(vid["step_median_s"]["transcribe"]
                                / hand_steps["transcribe"], 2),
            "thumbnails": round(vid["step_median_s"]["thumbnails"]
                                / (hand_steps["poster"] + hand_steps["storyboard"]), 2),
            "transcode": round(vid["step_median_s"]["transcode"] / hand_steps["transcode"], 2),
        },
        "by_hand_commands": {k: shown(v, work) for k, v in hand.commands.items()}
        | {"transcribe": "python transcribe_wav.py MODEL audio.wav transcript.json THREADS"},
        "runs": {"vidpipe": vid_runs, "by_hand": hand_runs},
    }
    details["discarded_disturbed_runs"] = discarded
    if variants:
        details["variants"] = variants
    if extra:
        for key in ("single_decode_pass", "storyboard_keyframes_only"):
            extra[key]["command"] = shown(extra[key]["command"], work)
        extra["single_decode_pass"]["same_three_commands_by_hand_median_s"] = round(
            hand_steps["extract_audio"] + hand_steps["storyboard"] + hand_steps["transcode"], 3)
        extra["storyboard_keyframes_only"]["storyboard_by_hand_median_s"] = (
            hand_steps["storyboard"])
        details["experiments"] = extra
    notes = explain(ratio, vid, hand_steps, whisper_split, variants, extra)
    still = sum(r["disturbed"] for r in vid_runs + hand_runs)
    if discarded or still:
        notes += (f" The machine was shared: {len(discarded)} run(s) during which other "
                  f"processes took > {MAX_OTHER_CPU:.0%} of the CPU were repeated"
                  + (f", and {still} kept run(s) are still disturbed." if still else "."))
    Result(
        name="pipeline",
        title="Pipeline vs raw tools (2-min 720p speech video)",
        target="ratio ≤ 1.0",
        measured=f"ratio {ratio:.2f} (vidpipe {a:.1f} s vs by hand {b:.1f} s, "
                 f"median of {RUNS})",
        met=ratio <= 1.0,
        details=details,
        notes=notes,
    ).write()
    return 0


def explain(ratio: float, vid: dict[str, Any], hand: dict[str, float],
            whisper: dict[str, float], variants: list[dict[str, Any]],
            extra: dict[str, Any]) -> str:
    s, g = vid["step_median_s"], vid["gap_median_s"]
    wall = vid["seconds"]["median"]
    lanes = sorted(vid["lanes_of_median_run"], key=lambda ln: -ln["ends_at"])
    lane_text = " beside ".join(
        f"{' then '.join(ln['steps'])} (ends at {ln['ends_at']:.1f} s"
        + (", the critical path)" if i == 0 else ")") for i, ln in enumerate(lanes))
    idle = sum(v for k, v in g.items() if k.startswith("idle_before_"))
    parts = [
        f"vidpipe's {WORKERS} workers run {len(lanes)} lanes at once (the median run): "
        f"{lane_text}; by hand the five commands run in a row "
        f"({' + '.join(f'{k} {v:.1f}' for k, v in hand.items())} s).",
        f"On 2 shared cores the overlapped steps take transcode {s['transcode']:.1f} s "
        f"(alone {hand['transcode']:.1f} s), transcribe {s['transcribe']:.1f} s (a fresh "
        f"whisper process alone: {hand['transcribe']:.1f} s), thumbnails "
        f"{s['thumbnails']:.1f} s (poster + storyboard alone: "
        f"{hand['poster'] + hand['storyboard']:.1f} s).",
        f"Queue overhead is small: {g['trigger_to_first_start_s']:.2f} s from trigger to "
        f"first start, {g['extract_audio_to_transcribe_s']:.2f} s between extract_audio and "
        f"transcribe, {idle:.2f} s of workers waiting before steps in all, "
        f"{g['seen_completed_after_last_step_s']:.2f} s until the poll sees 'completed'.",
        f"Each transcribe job runs in a fresh RQ work horse that imports faster-whisper and "
        f"loads the model again ({whisper.get('import_s', 0):.2f} s + "
        f"{whisper.get('load_s', 0):.2f} s in a fresh process).",
        f"Transcode is {s['transcode'] / wall:.0%} of the wall time.",
    ]
    if ratio > 1.0:
        parts.append("Ratio > 1: the overlap of the two lanes gains less than the contention "
                     "for the 2 cores costs; docs/PERFORMANCE.md section 1 says what would "
                     "close it.")
    if variants:
        best = min(variants, key=lambda v: v["seconds"]["median"])
        parts.append(f"Best settings variant: {best['env']} at "
                     f"{best['seconds']['median']:.1f} s (ratio "
                     f"{best['ratio_to_by_hand']:.2f}).")
    if extra:
        one = extra["single_decode_pass"]
        lanes = extra["two_lanes_longest_first"]["seconds"]["median"]
        key = extra["storyboard_keyframes_only"]["seconds"]["median"]
        parts.append(
            f"Measured outside vidpipe: one ffmpeg decode for WAV + sprite + preview "
            f"{one['seconds']['median']:.1f} s vs {one['same_three_commands_by_hand_median_s']:.1f}"
            f" s as three commands; the storyboard from keyframes only {key:.1f} s vs "
            f"{hand['storyboard']:.1f} s; transcode in one lane and the rest in the other "
            f"(longest job first) {lanes:.1f} s; whisper alone in a fresh process at 1/2/4 "
            f"threads: " + "/".join(
                f"{extra['whisper_threads_alone'][t]['transcribe_s_median']:.1f}"
                for t in ("1", "2", "4")) + " s of transcription.")
    return " ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
