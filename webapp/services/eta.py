"""How long a running task still needs, from the steps that really run (a pure function)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from webapp.models import ACTIVE_STATUSES
from webapp.services.queue import NEEDS

# What a kind of step costs, in seconds alone, as fixed + per unit of media (the units of
# webapp/services/calibration.py), for an installation without its own history of that
# kind: fitted to the runs of the ETA benchmark on the reference machine (2 cores;
# docs/PERFORMANCE.md, section 8: 20 to 120 s of 720p speech). Only the shape is used: the
# seconds are scaled by how fast this task's measured steps went against it, so a machine
# twice as slow gets estimates twice as long once anything is measured. The fixed parts
# (starting ffmpeg, loading the whisper model) are what cost shares could not say: whisper
# costs 1.2× the preview on a 20 s video, 0.6× on a 120 s one.
PRIOR = {
    "extract_audio": (0.2, 0.001),
    "transcribe/base": (2.9, 0.068),
    "transcribe/tiny.en": (1.5, 0.033),  # about half of base (section 7: RTF 0.08 vs 0.16)
    "thumbnails": (0.55, 0.0015),
    "transcode": (0.9, 0.103),  # 0.138 a second of 720p with sound: 1.34 units
}
# A translate pass adds this share of the transcription (transcription.TRANSLATE_COST).
TRANSLATE_SHARE = 0.5
# For rows without units of media (tasks made before migration 0006, media of unknown
# length): each step's share of a 2-minute 720p speech video's work, from the same fit.
COSTS = {"extract_audio": 1.0, "transcribe": 37.0, "thumbnails": 2.5, "transcode": 59.0}
# A step's own pace is not believed before it has measured this many percent of its work
# (after its first report); until then it is blended with what its cost predicts.
TRUST = 10.0
# A pace measured over less than this (percent, after the first report) is not used at all.
MIN_MEASURED = 1.0


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
    2. The steps of a task that run at the same time share the machine: while k of them
       run, each goes at 1/k of its pace alone. So a step's time "alone" is the integral
       of dt / k over its run (from the started_at/finished_at of all steps).
    3. A running step's pace is measured from its first progress report
       (`first_progress_at`, `first_progress`), not from its start: ffmpeg's and whisper's
       start-up (up to seconds on a busy machine) is no measure of the work, and paces
       from the start said hours where seconds remained. A step that did p0 % at its first
       report and p % now, after s seconds alone since then, needs s × (100 − p) / (p − p0)
       seconds alone more.
    4. Every step also has an expected length: the seconds alone its kind took on this
       installation for media like this one (`expected_seconds`, written when the task was
       made: webapp/services/calibration.py); without that history, its cost on the
       reference machine (`_cost`: PRIOR for its kind and media) scaled by the seconds
       alone per such cost of the steps measured in this task (completed ones: what they
       took; running ones past TRUST %: what their pace says they will take), or of the
       steps with history. A step not started, or not measured yet, needs that; a running
       step's own pace takes over from it gradually, fully once it has measured TRUST % of
       its work. With history, even a queued task has an ETA (the time its steps take, not
       the wait for a free worker).
    5. Sharing the machine, the steps together get through one second of work alone per
       second, however many workers run them side by side, and a step that waits for its
       parent (transcribe for extract_audio) cannot leave the machine idle (its parent
       runs, alone if need be). So the task ends when the sum of the work left is done.
    Point 5 is nearly true where each step alone keeps the machine busy, as ffmpeg and
    whisper do on the 2-core machine this was measured on (docs/PERFORMANCE.md, section 8,
    measures how near). With cores to spare steps hardly slow each other and the ETA errs
    high. Work of other tasks on the same workers is not seen at all.
    """
    if task.status not in ACTIVE_STATUSES or now is None:
        return None
    steps = [s for s in subtasks if not s.reused and s.status != "skipped"]
    alone, paced = time_alone(steps, now)
    measured = _measured(steps, alone, paced)
    trusted = {name: m for name, m in measured.items() if m[1] >= TRUST} or measured
    per_cost = _per_cost(steps, trusted)
    doomed = {s.name for s in steps if s.status in ("failed", "cancelled")}
    left = 0.0
    for step in steps:
        if step.status not in ("running", "pending") or (
                step.status == "pending" and NEEDS.get(step.name) in doomed):
            continue
        expected = _expected(step, per_cost)
        if (step.status == "running" and expected is not None
                and getattr(step, "first_progress_at", None) is not None):
            # Where the step really is counts, not only how long it has run: the rest of
            # its work at the expected rate (whisper's first report may already say 89 %).
            expected = alone[step.name] + expected * (100.0 - min(100.0, step.progress)) / 100
        if step.status == "running" and step.name in measured:
            total, seen = measured[step.name]
            own = 1.0 if expected is None else min(1.0, seen / TRUST)
            expected = own * total + (1.0 - own) * (expected or 0.0)
        if expected is None:
            return None
        left += max(0.0, expected - alone[step.name]) if step.status == "running" else expected
    return round(left, 1)


def _expected(step: Any, per_cost: float | None) -> float | None:
    """The seconds alone a step is expected to take before its own pace tells: what its
    kind took on this installation, or else its cost share at the task's measured speed."""
    history = getattr(step, "expected_seconds", None)
    if history is not None:
        return history
    return None if per_cost is None else _cost(step) * per_cost


def _per_cost(steps: Sequence[Any], trusted: dict[str, tuple[float, float]]) -> float | None:
    """Seconds alone per second of reference cost (`_cost`): as measured in the task, or
    else as its steps' history expects; None while neither tells."""
    if trusted:
        return sum(total for total, _ in trusted.values()) / sum(
            _cost(step) for step in steps if step.name in trusted)
    known = [s for s in steps if getattr(s, "expected_seconds", None) is not None]
    if not known:
        return None
    return sum(s.expected_seconds for s in known) / sum(_cost(s) for s in known)


def _cost(step: Any) -> float:
    """What the step is expected to cost before anything is known of this installation
    (PRIOR for its kind and media; COSTS where its rows have no units), in seconds alone on
    the reference machine, only compared with other steps' costs."""
    key, units = getattr(step, "cost_key", None), getattr(step, "cost_units", None)
    if not key or not units:
        return COSTS.get(step.name, step.weight)
    kind, translated = key.removesuffix("+translate"), key.endswith("+translate")
    fixed, per_unit = PRIOR.get(kind) or PRIOR.get(step.name) or (
        PRIOR["transcribe/base"] if step.name == "transcribe" else (0.0, 0.1))
    return (fixed + per_unit * units) * (1.0 + TRANSLATE_SHARE if translated else 1.0)


def _paced_from(step: Any) -> tuple[datetime | None, float]:
    """When a step's pace is measured from, and its progress then (its first report; rows
    from before that was recorded: its start, at 0)."""
    first_at = getattr(step, "first_progress_at", None)
    if first_at is not None:
        return first_at, getattr(step, "first_progress", None) or 0.0
    return step.started_at, 0.0


def time_alone(steps: Sequence[Any], now: datetime) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of the machine each step had to itself, ∫ dt / (steps running at t): since
    its start, and since its pace is measured (_paced_from)."""
    spans, since = {}, {}
    for step in steps:
        end = now if step.status == "running" else step.finished_at
        if step.started_at is not None and end is not None:
            spans[step.name] = (step.started_at, max(step.started_at, end))
            since[step.name] = _paced_from(step)[0] or step.started_at
    marks = sorted({t for span in spans.values() for t in span} | set(since.values()))
    alone = {step.name: 0.0 for step in steps}
    paced = dict(alone)
    for a, b in zip(marks, marks[1:], strict=False):
        sharing = [name for name, (start, end) in spans.items() if start <= a and b <= end]
        for name in sharing:
            alone[name] += (b - a).total_seconds() / len(sharing)
            if a >= since[name]:
                paced[name] += (b - a).total_seconds() / len(sharing)
    return alone, paced


def _measured(steps: Sequence[Any], alone: dict[str, float],
              paced: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Step name -> (its whole length alone, as measured; how much of its work, in percent,
    that measure rests on), for the completed steps and the running ones with a pace."""
    measured = {}
    for step in steps:
        if step.status == "completed" and step.started_at and step.finished_at:
            measured[step.name] = (alone[step.name], 100.0)
        elif step.status == "running" and paced[step.name] > 0:
            seen = min(100.0, step.progress) - _paced_from(step)[1]
            if seen >= MIN_MEASURED:
                rest = paced[step.name] * (100.0 - min(100.0, step.progress)) / seen
                measured[step.name] = (alone[step.name] + rest, seen)
    return measured
