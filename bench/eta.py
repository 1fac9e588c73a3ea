"""ETA accuracy: does `eta_at` predict when a task really ends?

For each of three media (bench/media.py: 36 s and 120 s 1280x720 speech videos, and a 90 s
one without audio, whose audio steps are skipped) the video is uploaded and `POST
.../run_sync` triggers a task, on the real stack of bench/pipeline.py: a fresh SQLite
database, a private queue on BENCH_REDIS_URL, the Flask app in this process (test client)
and 2 `python -m jobs.worker` processes. `GET .../reprocess` is sampled every 0.5 s until
the task ends. Before them a 20 s speech video runs the same way: the installation's first
video, whose steps have no history yet (webapp/services/calibration.py); it is judged and
reported apart, not part of the target. Each later video's steps are sized by what the
videos before it cost.

Definitions, all in seconds since the trigger (the moment before the POST):
    F    the real finish: the task's finished_at;
    t_i  when sample i was read; eta_i its eta_seconds; at_i its eta_at (the task's last
         change, updated_at, plus eta_i: the finish a client counts down to, the page too);
    error_i = (at_i - F) / F, the predicted finish's error as a share of the run;
    p_i  the progress of the work that runs: Σ weight × progress / Σ weight over the
         steps neither skipped nor reused. For the speech videos this is the total the
         API shows; for the silent one the shown total counts the two skipped audio steps
         as done and starts at 60 %, before any step has reported anything.
A sample is judged when the task is still active and p_i > 25 %; it is within bounds when
|error_i| <= 0.25 (a judged sample without an ETA counts as out of bounds). Target: every
judged sample of every medium within bounds. Reported per medium: the worst error and the
share of judged samples within bounds; the same judged by the shown total; the same
scored as t_i + eta_i (what this benchmark scored before eta_at existed: late by
t_i - updated_at, since eta_seconds is counted from the last change, not from the read);
and the estimate vidpipe used before (elapsed × (100 - shown) / shown, as of the task's
updated_at), replayed on the same samples.

    .venv/bin/python -m bench.eta      # ~2 minutes, plus making the media once (~2 min)
    .venv/bin/python -m bench.eta --replay bench/results/eta.json
        # the estimate as the code now computes it, on the subtask rows a run recorded

Environment: BENCH_REDIS_URL (default redis://127.0.0.1:6379/13); BENCH_ETA_MEDIA, a
comma-separated list of kind:seconds with kind speech or silent (default
"speech:36,speech:120,silent:90"), and BENCH_ETA_WARMUP (the first video; "speech:20", or
empty for none), for quick trials only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench import media as benchmedia
from bench.common import Result
from bench.pipeline import Stack, disturbance
from webapp.config import PROJECT_ROOT, STEPS

SAMPLE = 0.5
FROM_PROGRESS = 25.0
BOUND = 0.25
RUN_TIMEOUT = 900.0
MEDIA = os.environ.get("BENCH_ETA_MEDIA", "speech:36,speech:120,silent:90")
# Processed first, on the new installation, and judged apart from the target: the first
# video an installation ever runs has no history of what its steps cost.
WARMUP = os.environ.get("BENCH_ETA_WARMUP", "speech:20")
ACTIVE = ("queued", "running")
ENDED = ("completed", "failed", "cancelled")


def log(message: str) -> None:
    print(f"[eta] {message}", flush=True)


def ts(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value).timestamp()


def make_media(spec: str) -> tuple[str, Path]:
    kind, _, seconds = spec.partition(":")
    makers: dict[str, Callable[[int], Path]] = {"speech": benchmedia.speech_video,
                                                "silent": benchmedia.silent_video}
    label = f"{seconds} s 720p {'speech' if kind == 'speech' else 'no audio'}"
    return label, makers[kind](int(seconds))


class Sampler:
    """Reads the progress view, and the task row's updated_at the view is computed at."""

    def __init__(self, stack: Stack) -> None:
        from sqlalchemy import select

        from webapp.db import get_engine
        from webapp.models import ProcessingTask, SubTask

        self.stack = stack
        self.engine = get_engine(stack.env["DATABASE_URL"])
        self.query = select(ProcessingTask.updated_at)
        self.task = ProcessingTask
        self.rows_query = select(SubTask).order_by(SubTask.position)
        self.subtask = SubTask

    def updated_at(self, task_id: str) -> float:
        with self.engine.connect() as conn:
            stmt = self.query.where(self.task.id == task_id)
            return conn.execute(stmt).scalar_one().timestamp()  # an aware UTC datetime

    def rows(self, task_id: str, origin: float) -> list[list[Any]]:
        """The task's subtask rows as the ETA reads them (times since the trigger), so that
        an estimate can be replayed on the samples: [name, status, progress, reused,
        started, finished, first_progress_at, first_progress, expected_seconds, cost_key,
        cost_units]."""
        def rel(value: datetime | None) -> float | None:
            return None if value is None else round(value.timestamp() - origin, 3)
        with self.engine.connect() as conn:
            subs = conn.execute(self.rows_query.where(self.subtask.task_id == task_id)).all()
        return [[s.name, s.status, round(s.progress, 2), s.reused, rel(s.started_at),
                 rel(s.finished_at), rel(s.first_progress_at), s.first_progress,
                 s.expected_seconds, s.cost_key, s.cost_units] for s in subs]

    def run(self, video_id: str) -> dict[str, Any]:
        """Trigger run_sync, sample until the task ends; times in seconds since the trigger."""
        client = self.stack.client
        url = f"/api/v1/videos/{video_id}/reprocess"
        trigger = time.time()
        resp = client.post(f"/api/v1/videos/{video_id}/run_sync")
        if resp.status_code != 202:
            raise RuntimeError(f"run_sync answered {resp.status_code}: {resp.data[:500]!r}")
        task_id = resp.get_json()["task_id"]
        self.stack.task_ids.append(task_id)
        samples, due = [], time.monotonic()
        while True:
            state = client.get(url).get_json()
            at = time.time()
            samples.append({"t": round(at - trigger, 3), "status": state["status"],
                            "shown": state["progress"], "own": own_progress(state),
                            "eta": state["eta_seconds"],
                            "eta_at": _rel(state["eta_at"], trigger),
                            "steps": [round(s["progress"], 1) for s in state["subtasks"]],
                            "updated": round(self.updated_at(task_id) - trigger, 3),
                            "rows": self.rows(task_id, trigger),
                            "started": _rel(state["started_at"], trigger)})
            if state["status"] in ENDED:
                break
            if at - trigger > RUN_TIMEOUT:
                raise RuntimeError(f"not done after {RUN_TIMEOUT} s: {state}")
            due += SAMPLE
            time.sleep(max(0.0, due - time.monotonic()))
        if state["status"] != "completed":
            raise RuntimeError(f"task {state['status']}: {state}\n{self.stack.worker_logs()}")
        steps = {s["name"]: {"status": s["status"], "reused": s.get("reused", False),
                             "start": _rel(s["started_at"], trigger),
                             "end": _rel(s["finished_at"], trigger)}
                 for s in state["subtasks"]}
        return {"finish_s": _rel(state["finished_at"], trigger), "steps": steps,
                "samples": samples}


def own_progress(state: dict[str, Any]) -> float:
    """The total progress over the steps that run in the task (not skipped, not reused)."""
    steps = [s for s in state["subtasks"] if s["status"] != "skipped" and not s["reused"]]
    weight = sum(s["weight"] for s in steps)
    return round(sum(s["weight"] * s["progress"] for s in steps) / weight, 2) if weight else 0.0


def _rel(value: str | None, origin: float) -> float | None:
    stamp = ts(value)
    return None if stamp is None else round(stamp - origin, 3)


def old_eta(sample: dict[str, Any]) -> float | None:
    """What vidpipe showed before: the task's elapsed time extrapolated over its total, as
    of the task's last change (reused and skipped steps counted as done)."""
    p, started = sample["shown"], sample["started"]
    if started is None or p <= 0 or sample["updated"] <= started:
        return None
    return round((sample["updated"] - started) * (100.0 - p) / p, 1)


def eta_at(sample: dict[str, Any]) -> float | None:
    """The finish a sample predicts: its eta_at (seconds since the trigger), what a client
    counts down to."""
    return sample["eta_at"]


def read_plus_eta(sample: dict[str, Any]) -> float | None:
    """The finish as this benchmark scored it before eta_at: when the sample was read plus
    its eta_seconds (late by the time since the task's last change)."""
    return None if sample["eta"] is None else sample["t"] + sample["eta"]


def read_plus_old_eta(sample: dict[str, Any]) -> float | None:
    """The finish the estimate vidpipe showed before predicted: read time plus it (there was
    no eta_at then)."""
    old = old_eta(sample)
    return None if old is None else sample["t"] + old


def judge(samples: list[dict[str, Any]], finish: float,
          predicted: Callable[[dict[str, Any]], float | None] = eta_at,
          total: str = "own") -> dict[str, Any]:
    """Errors of the predicted finish (`predicted`: seconds since the trigger; eta_at by
    default) of the samples whose `total` progress ("own": of the steps that run; "shown":
    the task's) is past FROM_PROGRESS."""
    judged = [s for s in samples if s["status"] in ACTIVE and s[total] > FROM_PROGRESS]
    errors = []
    for s in judged:
        at = predicted(s)
        errors.append(None if at is None else (at - finish) / finish)
    known = [e for e in errors if e is not None]
    within = sum(1 for e in known if abs(e) <= BOUND)
    worst = max(known, key=abs) if known else None
    return {"judged": len(judged), "within": within,
            "within_share": round(within / len(judged), 3) if judged else None,
            "worst_error": None if worst is None else round(worst, 3),
            "without_eta": len(errors) - len(known),
            "first_judged_t": judged[0]["t"] if judged else None,
            "errors": [None if e is None else round(e, 3) for e in errors]}


def measure(stack: Stack, label: str, path: Path) -> dict[str, Any]:
    from webapp.services.media.probe import probe as probe_media

    probe = probe_media(path)
    video = stack.upload(path)
    log(f"{label}: {probe.duration:.1f} s, audio {probe.has_audio}; run_sync ...")
    cpu: dict[str, Any] = {}
    with disturbance(cpu):
        run = Sampler(stack).run(video["id"])
    finish = run["finish_s"]
    now = judge(run["samples"], finish)
    read_plus = judge(run["samples"], finish, read_plus_eta)
    before = judge(run["samples"], finish, read_plus_old_eta)
    shown = judge(run["samples"], finish, total="shown")
    log(f"{label}: finished after {finish:.1f} s; {now['judged']} samples past "
        f"{FROM_PROGRESS:.0f} %, worst error {_pct(now['worst_error'])}, within ±25 %: "
        f"{_pct(now['within_share'])} (read + eta_seconds: worst "
        f"{_pct(read_plus['worst_error'])}; old estimate: worst {_pct(before['worst_error'])}, "
        f"within {_pct(before['within_share'])}); other processes took "
        f"{cpu['cpu']['other_processes_s']} of {cpu['cpu']['cores_x_wall_s']} CPU s")
    return {"medium": label, "path": os.path.relpath(path, PROJECT_ROOT),
            "duration_s": probe.duration, "has_audio": probe.has_audio,
            "finish_s": finish, "steps": run["steps"], "eta": now, "old_eta": before,
            "eta_judged_from_shown_total": shown, "read_plus_eta_seconds": read_plus,
            "samples": [[s["t"], s["shown"], s["own"], s["eta"], old_eta(s), s["eta_at"],
                         *s["steps"]] for s in run["samples"]],
            "samples_columns": ["t_s", "progress_shown", "progress_own", "eta_s",
                                "old_eta_s", "eta_at_s", *(f"{name}_progress" for name in STEPS)],
            "rows": [[s["t"], s["updated"], s["rows"]] for s in run["samples"]],
            "rows_columns": ["t_s", "task_updated_s", "subtasks (see Sampler.rows)"]} | cpu


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.0f} %" if value < 0 else f"{value:.0%}"


def replay(path: Path) -> None:
    """Judge the ETA the code now computes on a recorded run's subtask rows (each sample's,
    as of its task's updated_at, as the progress view does)."""
    from types import SimpleNamespace

    from webapp.services import eta

    origin = datetime.fromtimestamp(1e9).astimezone()

    def at(seconds: float | None) -> datetime | None:
        return None if seconds is None else origin + timedelta(seconds=seconds)

    details = json.loads(path.read_text())["details"]
    first = details.get("first_video_of_the_installation")
    for medium in ([first] if first else []) + details["media"]:
        samples = []
        for (t, updated, rows), sample in zip(medium["rows"], medium["samples"], strict=True):
            subs = [SimpleNamespace(name=r[0], status=r[1], progress=r[2], reused=r[3],
                                    started_at=at(r[4]), finished_at=at(r[5]),
                                    first_progress_at=at(r[6]), first_progress=r[7],
                                    expected_seconds=r[8], weight=0.0,
                                    cost_key=(r[9:10] or [None])[0],
                                    cost_units=(r[10:11] or [None])[0]) for r in rows]
            status = "running" if any(s.started_at for s in subs) else "queued"
            done = all(s.status in ("completed", "skipped", "failed", "cancelled")
                       for s in subs)
            task = SimpleNamespace(status="completed" if done else status)
            seconds = eta.seconds_left(task, subs, at(updated))
            samples.append({"t": t, "status": task.status, "own": sample[2],
                            "eta_at": None if seconds is None else updated + seconds})
        judged = judge(samples, medium["finish_s"])
        log(f"{medium['medium']}: worst {_signed(judged['worst_error'])}, "
            f"{_share(judged['within_share'])} within; errors {judged['errors']}")


def main() -> int:
    if sys.argv[1:2] == ["--replay"]:
        replay(Path(sys.argv[2]))
        return 0
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    log("preparing the media (cached in bench/.cache)")
    media = [make_media(spec.strip()) for spec in MEDIA.split(",") if spec.strip()]
    first = make_media(WARMUP.strip()) if WARMUP.strip() else None
    work = Path(tempfile.mkdtemp(prefix="vidpipe-bench-eta-"))
    stack = Stack(work)
    results = []
    try:
        stack.start()
        stack.start_workers()
        cold = None
        if first is not None:
            log("the installation's first video (no history yet; not part of the target):")
            cold = measure(stack, *first)
        for label, path in media:
            results.append(measure(stack, label, path))
        learnt = step_costs(stack)
    finally:
        stack.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    write(results, learnt, cold)
    return 0


def step_costs(stack: Stack) -> dict[str, list[list[float]]]:
    """What the installation learnt from these runs (webapp/services/calibration.py): per
    kind of step, [units of media, seconds alone] of each run."""
    from sqlalchemy import select

    from webapp.db import get_engine
    from webapp.models import StepCost

    with get_engine(stack.env["DATABASE_URL"]).connect() as conn:
        rows = conn.execute(select(StepCost).order_by(StepCost.id)).all()
    learnt: dict[str, list[list[float]]] = {}
    for r in rows:
        learnt.setdefault(r.key, []).append([round(r.units, 2), round(r.seconds, 3)])
    log(f"learnt step costs ([units, seconds alone] per run): {learnt}")
    return learnt


def write(results: list[dict[str, Any]], learnt: dict[str, list[list[float]]],
          cold: dict[str, Any] | None) -> None:
    met = all(r["eta"]["within_share"] == 1.0 for r in results)
    parts = [f"{r['medium']}: worst {_signed(r['eta']['worst_error'])}, "
             f"{_share(r['eta']['within_share'])} within" for r in results]
    old = [f"{_signed(r['old_eta']['worst_error'])}" for r in results]
    Result(
        name="eta",
        title="ETA accuracy after 25 % progress (run_sync, 2 workers, 3 media)",
        target="predicted finish within ±25 % of the real one, every sample",
        measured=f"{'; '.join(parts)} (old estimate's worst: {', '.join(old)})",
        met=met,
        details={
            "definition": "error = (eta_at - F) / F, eta_at and F (the task's "
                          "finished_at) in seconds since the trigger; judged: samples of "
                          f"an active task with total progress > {FROM_PROGRESS:.0f} %; "
                          f"within bounds: |error| <= {BOUND}",
            "sample_interval_s": SAMPLE,
            "workers": 2,
            "step_costs_learnt": learnt,
            "first_video_of_the_installation": cold,
            "media": results,
        },
        notes="The old estimate is replayed on the same samples (elapsed since the task "
              "started, as of its updated_at, extrapolated over the total progress; scored "
              "as t plus it). read_plus_eta_seconds scores each sample's t + eta_seconds "
              "instead, as this benchmark did before eta_at.",
    ).write()


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.1f} %"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f} %"


if __name__ == "__main__":
    raise SystemExit(main())
