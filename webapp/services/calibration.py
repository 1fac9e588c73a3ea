"""What each kind of step costs on this installation, learnt from its completed runs.

The ETA of a step that has not measured its own pace yet (not started, or in its first
seconds, while ffmpeg or whisper is still reaching its speed) used to be guessed from the
steps measured in the same task. A short task has nothing measured worth the name when
it matters: the preview of a silent video, whose thumbnails end one second in, was sized
from those thumbnails. But a kind of step costs about the same every time on one machine
for the same amount of media: a 720p preview, a whisper model on speech. So every
completed step that ran records the seconds of the machine it had to itself (its time
"alone", eta.time_alone) and the units of media it worked on, in `step_costs` (the last
SAMPLES runs of each kind); and every new task's steps get, when it is made, the seconds
alone they are expected to take (`subtasks.expected_seconds`), from a straight line fitted
to those runs: a fixed part (starting ffmpeg, loading the whisper model) plus a part per
unit. The ETA stays a function of the task's own rows.

Kinds and units:
- `transcode`: seconds of media × (pixels of a frame / 1280×720, + AUDIO_UNITS when the
  video has sound): decoding and scaling grow with the frame, the encoded preview does not,
  and encoding the sound (AAC) costs the same whatever the frame;
- `thumbnails`, `extract_audio`: seconds of media;
- `transcribe/<model>` (`+translate` with the translate pass): seconds of media. Whisper's
  cost depends on the model above all; speech against silence changes it too (the VAD skips
  silence), which the installation's own recent videos follow.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import Select, bindparam, delete, select
from sqlalchemy.orm import Session

from webapp.models import StepCost, SubTask

# Runs of each kind kept: recent enough to follow a changed machine, enough to fit a line.
SAMPLES = 20
# Frames are counted against 1280×720 (a unit is a second of 720p video).
FRAME_720P = 1280 * 720
# What a second of sound adds to a preview, in seconds of 720p picture: the previews of 720p
# speech videos cost 0.126 s alone per second, of the same picture without sound 0.094 (ETA
# benchmark, docs/PERFORMANCE.md section 8): 0.34 more. Without it a silent video's preview,
# sized by the speech videos before it, was expected 35 % too long.
AUDIO_UNITS = 0.34
# A fixed part is fitted only over runs whose sizes differ by at least this factor;
# else the runs say nothing about it and the cost is taken as proportional to the units.
SPREAD = 1.5


class Media(Protocol):
    """What the costs of a run depend on: a Video, or a row of its columns."""

    duration: float | None
    width: int | None
    height: int | None
    has_audio: bool


def step_costs(video: Media, whisper_model: str,
               translate: bool) -> dict[str, tuple[str, float]]:
    """Step -> (its kind, the units of media it works on) for a run of `video`; steps whose
    media is not known (no duration) are left out."""
    seconds = video.duration
    if not seconds or seconds <= 0:
        return {}
    frame = (video.width or 0) * (video.height or 0)
    model = _model_name(whisper_model)
    return {
        "extract_audio": ("extract_audio", seconds),
        "transcribe": (f"transcribe/{model}{'+translate' if translate else ''}", seconds),
        "thumbnails": ("thumbnails", seconds),
        "transcode": ("transcode", seconds * ((frame / FRAME_720P if frame else 1.0)
                                              + (AUDIO_UNITS if video.has_audio else 0.0))),
    }


def _model_name(whisper_model: str) -> str:
    """`base`, `tiny.en`, or a model folder's name (a path's last part)."""
    return Path(whisper_model.rstrip("/")).name[:60] or whisper_model[:60]


# Built once per number of kinds (a run has 4), run on the session's connection: every
# trigger reads it (see processing._TRIGGER_VIDEO). An "expanding" IN would be rendered
# again at every execution.
_COSTS = StepCost.__table__


@functools.cache
def _history(kinds: int) -> Select:
    return select(_COSTS.c.key, _COSTS.c.units, _COSTS.c.seconds).where(
        _COSTS.c.key.in_([bindparam(f"key{i}") for i in range(kinds)]))


def expected_seconds(session: Session,
                     costs: Mapping[str, tuple[str, float]]) -> dict[str, float]:
    """Step -> seconds alone it is expected to take, for the steps whose kind has history."""
    keys = sorted({key for key, _ in costs.values()})
    if not keys:
        return {}
    runs: dict[str, list[tuple[float, float]]] = {}
    for key, units, seconds in session.connection().execute(
            _history(len(keys)), {f"key{i}": key for i, key in enumerate(keys)}):
        runs.setdefault(key, []).append((units, seconds))
    return {step: round(fit(runs[key], units), 3)
            for step, (key, units) in costs.items() if key in runs}


def fit(runs: Iterable[tuple[float, float]], units: float) -> float:
    """Seconds for `units`, from (units, seconds) of earlier runs: least squares over
    seconds = fixed + per_unit × units, with both parts at least 0; proportional
    (fixed 0) where the runs' sizes are too alike to tell a fixed part."""
    runs = [(u, s) for u, s in runs if u > 0 and s >= 0]
    if not runs:
        return 0.0
    n = len(runs)
    mean_u = sum(u for u, _ in runs) / n
    mean_s = sum(s for _, s in runs) / n
    proportional = sum(s for _, s in runs) / sum(u for u, _ in runs) * units
    if max(u for u, _ in runs) < SPREAD * min(u for u, _ in runs):
        return proportional
    var = sum((u - mean_u) ** 2 for u, _ in runs)
    per_unit = sum((u - mean_u) * (s - mean_s) for u, s in runs) / var
    fixed = mean_s - per_unit * mean_u
    if per_unit < 0:  # longer media took less time: no trend to follow, the mean is best
        return mean_s
    if fixed < 0:
        return proportional
    return fixed + per_unit * units


def record(session: Session, sub: SubTask, alone: float, now: datetime) -> None:
    """Record what a completed step cost, in the caller's transaction, keeping the last
    SAMPLES runs of its kind. Steps without a kind (rows from before, unknown duration)
    record nothing."""
    if not sub.cost_key or not sub.cost_units or sub.cost_units <= 0 or alone <= 0:
        return
    session.add(StepCost(key=sub.cost_key, units=sub.cost_units, seconds=round(alone, 3),
                         recorded_at=now))
    session.flush()
    kept = (select(StepCost.id).where(StepCost.key == sub.cost_key)
            .order_by(StepCost.id.desc()).limit(SAMPLES))
    session.execute(delete(StepCost).where(StepCost.key == sub.cost_key,
                                           StepCost.id.not_in(kept))
                    .execution_options(synchronize_session=False))
