"""Shared helpers for benchmarks: repeated timing, summaries, and result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Result:
    """One benchmark's outcome, as written to bench/results/<name>.json."""

    name: str                 # module name, e.g. "pipeline"
    title: str                # what was measured, one line
    target: str               # the target in words, e.g. "ratio <= 1.0"
    measured: str             # the headline figure in words, e.g. "ratio 0.93 (median of 5)"
    met: bool | None          # None when there is no pass/fail target
    details: dict[str, Any] = field(default_factory=dict)
    notes: str = ""           # why a target is missed and what would close it

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        payload = asdict(self) | {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M"),
                                  "commit": commit()}
        payload["previous"] = previous(path, payload["commit"])
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"[{self.name}] {self.measured} — target {self.target}: "
              f"{'met' if self.met else 'MISSED' if self.met is False else 'reported'}")
        return path


def commit() -> str:
    """The code measured: HEAD's short hash, "+changes" when the work tree differs from it."""
    import subprocess

    root = RESULTS.parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, check=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def previous(path: Path, now: str) -> dict[str, Any] | None:
    """The result this one replaces, as the table shows it beside the new one: the last
    result of other code (a rerun of the same commit keeps the result before it)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if old.get("commit") == now and not now.endswith("+changes"):
        return old.get("previous")
    return {k: old.get(k) for k in ("measured", "met", "when", "commit")}


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and (for 3+ runs) the interquartile range."""
    out = {"median": statistics.median(values), "min": min(values), "max": max(values),
           "runs": len(values)}
    if len(values) >= 3:
        q = statistics.quantiles(values, n=4)
        out["iqr"] = q[2] - q[0]
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_task(database_url: str, settings: Any, video_id: str, step: str) -> str:
    """A task of `video_id` in which only `step` runs (the others skipped), enqueued for a
    worker; its id."""
    from webapp.config import STEPS
    from webapp.db import session_factory
    from webapp.models import Video
    from webapp.services import progress, queue

    with session_factory(database_url)() as session:
        video = session.get(Video, video_id)
        skipped = {s: "not part of this benchmark" for s in STEPS if s != step}
        task = progress.new_task(video, "reprocess", settings.weights, skipped)
        session.add(task)
        session.commit()
        queue.enqueue_steps(queue.connect(settings.redis_url), settings, task.id, video.id,
                            [step], video.duration)
        return task.id
