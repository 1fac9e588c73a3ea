"""How long a running task still needs, from the steps that really run (a pure function)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from webapp.models import ACTIVE_STATUSES
from webapp.services.queue import ENQUEUE_ORDER, NEEDS

# Steps whose work is over in this task, or that will never start in it.
_ENDED = ("completed", "failed", "cancelled")


def seconds_left(task: Any, subtasks: Sequence[Any], now: datetime) -> float | None:
    """Seconds until `task` ends, as seen at `now`; None while nothing tells yet.

    `task` and `subtasks` are rows (ORM objects or plain rows with the same attributes);
    nothing else is read, the clock included, so the same rows and `now` always give the
    same answer (the progress view passes the task's `updated_at`: an unchanged task keeps
    its ETA, and a poll may answer 304).

    The model:
    1. Only steps that run in this task count. A reused step (run_sync kept its output)
       and a skipped one take no time and say nothing about speed; a failed or cancelled
       one will not run again, nor will a step waiting for it.
    2. A running step at p % after e seconds (since its started_at) needs e × (100 − p) / p
       more: its own average rate, which includes the slowdown from the steps beside it.
    3. A step not started yet, or still at 0 %, is expected to take its weight × the
       seconds per unit of weight seen in this task so far (completed steps: how long they
       took; running ones: how long their rate says they will take). Weights are the
       configured relative costs, so this is as good as they are; it matters mostly
       early on, since a step's own rate replaces it as soon as the step reports progress.
    4. Steps run side by side, one per worker, and as many workers are assumed as steps
       are running now (at least one): each waiting step goes, in the queue's order, to
       the worker that frees first, not before its parent step (transcribe needs
       extract_audio) has ended. The task ends when its last step does.
    Not modelled: a step speeding up when the steps beside it end and free the CPU (the
    ETA errs high while they share it), and workers that are idle now but would take a
    waiting step.
    """
    if task.status not in ACTIVE_STATUSES or now is None:
        return None
    steps = [s for s in subtasks if not s.reused and s.status != "skipped"]
    per_weight = _seconds_per_weight(steps, now)
    if per_weight is None:
        return None
    ends = {s.name: 0.0 for s in steps if s.status in _ENDED}  # seconds from now
    workers = []
    for step in steps:
        if step.status == "running":
            ends[step.name] = _running_left(step, now, per_weight)
            workers.append(ends[step.name])
    doomed = {s.name for s in steps if s.status in ("failed", "cancelled")}
    waiting = [s for s in steps if s.status == "pending" and NEEDS.get(s.name) not in doomed]
    _schedule(sorted(waiting, key=_queue_position), ends, workers or [0.0], per_weight)
    return round(max(ends.values(), default=0.0), 1)


def _elapsed(step: Any, now: datetime) -> float:
    if step.started_at is None:
        return 0.0
    return max(0.0, (now - step.started_at).total_seconds())


def _seconds_per_weight(steps: Sequence[Any], now: datetime) -> float | None:
    """Seconds per unit of weight, over the steps of this task that measured something."""
    spent = weight = 0.0
    for step in steps:
        if step.status == "completed" and step.started_at and step.finished_at:
            seconds = max(0.0, (step.finished_at - step.started_at).total_seconds())
        elif step.status == "running" and step.progress > 0 and _elapsed(step, now) > 0:
            seconds = _elapsed(step, now) * 100.0 / step.progress
        else:
            continue
        spent, weight = spent + seconds, weight + step.weight
    return spent / weight if weight > 0 else None


def _running_left(step: Any, now: datetime, per_weight: float) -> float:
    elapsed, done = _elapsed(step, now), min(100.0, step.progress)
    if done > 0 and elapsed > 0:
        return elapsed * (100.0 - done) / done
    return max(0.0, step.weight * per_weight - elapsed)


def _queue_position(step: Any) -> int:
    return ENQUEUE_ORDER.index(step.name) if step.name in ENQUEUE_ORDER else len(ENQUEUE_ORDER)


def _schedule(waiting: list[Any], ends: dict[str, float], workers: list[float],
              per_weight: float) -> None:
    """Add to `ends` when each waiting step (in queue order) would end on `workers`
    (the times, from now, they become free)."""
    free = sorted(workers)
    todo = list(waiting)
    while todo:
        worker = free.pop(0)

        def start(step: Any, worker: float = worker) -> float:
            parent = NEEDS.get(step.name)
            if any(other.name == parent for other in todo):
                return math.inf  # its parent is not even scheduled yet
            return max(worker, ends.get(parent, 0.0) if parent else 0.0)

        # Ready ones in queue order first (min keeps the first of equal starts).
        step = min(todo, key=start)
        todo.remove(step)
        ends[step.name] = start(step) + step.weight * per_weight
        bisect.insort(free, ends[step.name])
