"""How long a running task still needs, from the steps that really run (a pure function)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from webapp.models import ACTIVE_STATUSES
from webapp.services.queue import NEEDS

# A pace measured on less progress than this says nothing yet: the tools' start-up (up to
# seconds on a busy machine) dominates it, and ETAs of hours came out for 1-minute runs.
MIN_PROGRESS = 1.0


def seconds_left(task: Any, subtasks: Sequence[Any], now: datetime) -> float | None:
    """Seconds until `task` ends, as seen at `now`; None while nothing tells yet.

    `task` and `subtasks` are rows (ORM objects or plain rows with the same attributes);
    nothing else is read, the clock included, so the same rows and `now` always give the
    same answer (the progress view passes the task's `updated_at`: an unchanged task keeps
    its ETA, and a poll may answer 304).

    The model:
    0. No ETA while a running step has done more than nothing but less than MIN_PROGRESS
       (1 %): its pace is mostly its start-up, and would say hours where seconds remain.
    1. Only steps that run in this task count. A reused step (run_sync kept its output)
       and a skipped one take no time and say nothing about speed; a failed or cancelled
       one will not run again, nor will a step waiting for it.
    2. The steps of a task that run at the same time share the machine: while k of them
       run, each goes at 1/k of its pace alone. So a step's time "alone" so far is the
       integral of dt / k over its run (from the started_at/finished_at of all steps),
       and a step at p % after s seconds alone needs s × (100 − p) / p more.
    3. A step not started yet, or still at 0 %, needs its weight × the seconds alone per
       unit of weight seen in this task so far (completed steps: what they took; running
       ones: what their pace says they will take). Weights are the configured relative
       costs, so this is as good as they are; a step's own pace replaces it as soon as the
       step reports progress.
    4. Sharing the machine, the steps together get through one second of work alone per
       second, however many workers run them side by side, and a step that waits for its
       parent (transcribe for extract_audio) cannot leave the machine idle (its parent
       runs, alone if need be). So the task ends when the sum of the work left is done.
    Point 2 is nearly true where each step alone keeps the machine busy, as ffmpeg and
    whisper do on the 2-core machine this was measured on: there two workers finish a
    video only 13 % sooner than the same steps one after the other (docs/PERFORMANCE.md,
    section 1), so steps slow each other down about 1.5x, not 2x, and the ETA errs a
    little low while they share the machine (section 8 measures how much). With cores to
    spare they hardly slow each other and the ETA errs high. Work of other tasks on the
    same workers is not seen at all.
    """
    if task.status not in ACTIVE_STATUSES or now is None:
        return None
    steps = [s for s in subtasks if not s.reused and s.status != "skipped"]
    if any(s.status == "running" and 0 < s.progress < MIN_PROGRESS for s in steps):
        return None
    alone = _time_alone(steps, now)
    per_weight = _seconds_per_weight(steps, alone)
    if per_weight is None:
        return None
    doomed = {s.name for s in steps if s.status in ("failed", "cancelled")}
    running = sum(_work_left(s, alone[s.name], per_weight)
                  for s in steps if s.status == "running")
    waiting = sum(s.weight * per_weight for s in steps
                  if s.status == "pending" and NEEDS.get(s.name) not in doomed)
    return round(running + waiting, 1)


def _time_alone(steps: Sequence[Any], now: datetime) -> dict[str, float]:
    """Step name -> seconds of the machine it had to itself: ∫ dt / (steps running at t)."""
    spans = {}
    for step in steps:
        end = now if step.status == "running" else step.finished_at
        if step.started_at is not None and end is not None:
            spans[step.name] = (step.started_at, max(step.started_at, end))
    marks = sorted({t for span in spans.values() for t in span})
    alone = {step.name: 0.0 for step in steps}
    for a, b in zip(marks, marks[1:], strict=False):
        sharing = [name for name, (start, end) in spans.items() if start <= a and b <= end]
        for name in sharing:
            alone[name] += (b - a).total_seconds() / len(sharing)
    return alone


def _seconds_per_weight(steps: Sequence[Any], alone: dict[str, float]) -> float | None:
    """Seconds alone per unit of weight, over the steps of this task that measured any."""
    spent = weight = 0.0
    for step in steps:
        if step.status == "completed" and step.started_at and step.finished_at:
            seconds = alone[step.name]
        elif step.status == "running" and step.progress > 0 and alone[step.name] > 0:
            seconds = alone[step.name] * 100.0 / step.progress
        else:
            continue
        spent, weight = spent + seconds, weight + step.weight
    return spent / weight if weight > 0 else None


def _work_left(step: Any, alone: float, per_weight: float) -> float:
    """Seconds alone a running step still needs."""
    done = min(100.0, step.progress)
    if done > 0 and alone > 0:
        return alone * (100.0 - done) / done
    return max(0.0, step.weight * per_weight - alone)
