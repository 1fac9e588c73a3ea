"""What each kind of step costs on this installation, learnt from its completed runs.

The ETA of a step that has not measured its own pace yet (not started, or in its first
seconds, while ffmpeg or whisper is still reaching its speed) used to be guessed from the
steps measured in the same task. A short task has nothing measured worth the name when
it matters: the preview of a silent video, whose thumbnails end one second in, was sized
from those thumbnails. But a step costs about the same per second of media every time on
one machine: a 720p preview, a whisper model on speech. So every completed step that ran
records the seconds of the machine it had to itself (its time "alone", eta.time_alone)
per unit of its media, in `step_costs`, a moving average per kind of step; and every new
task's steps get, when it is made, the seconds alone they are expected to take
(`subtasks.expected_seconds`). The ETA stays a function of the task's own rows.

Kinds and units:
- `transcode`: seconds of media × (pixels of a frame / 1280×720): decoding and scaling grow
  with the frame, the encoded preview does not;
- `thumbnails`, `extract_audio`: seconds of media;
- `transcribe/<model>` (`+translate` with the translate pass): seconds of media. Whisper's
  cost depends on the model above all; speech against silence changes it too (the VAD skips
  silence), which a moving average over the installation's own videos follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from webapp.models import StepCost, SubTask, Video

# The moving average: the mean of the first WINDOW runs, then each new run counts 1/WINDOW.
WINDOW = 4
# Frames are counted against 1280×720 (a unit is a second of 720p video).
FRAME_720P = 1280 * 720


def step_costs(video: Video, whisper_model: str,
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
        "transcode": ("transcode", seconds * (frame / FRAME_720P if frame else 1.0)),
    }


def _model_name(whisper_model: str) -> str:
    """`base`, `tiny.en`, or a model folder's name (a path's last part)."""
    return Path(whisper_model.rstrip("/")).name[:60] or whisper_model[:60]


def expected_seconds(session: Session,
                     costs: Mapping[str, tuple[str, float]]) -> dict[str, float]:
    """Step -> seconds alone it is expected to take, for the steps whose kind has history."""
    keys = {key for key, _ in costs.values()}
    if not keys:
        return {}
    rates = dict(session.execute(
        select(StepCost.key, StepCost.seconds_per_unit).where(StepCost.key.in_(keys))).all())
    return {step: round(rates[key] * units, 3)
            for step, (key, units) in costs.items() if key in rates}


def record(session: Session, sub: SubTask, alone: float, now: datetime) -> None:
    """Add a completed step's seconds alone to its kind's average, in the caller's
    transaction (which already holds the task's lock: see progress._touch_task). Steps
    without a kind (rows from before, unknown duration) record nothing."""
    if not sub.cost_key or not sub.cost_units or sub.cost_units <= 0 or alone <= 0:
        return
    rate = alone / sub.cost_units
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    first = session.execute(
        insert(StepCost).values(key=sub.cost_key, seconds_per_unit=rate, samples=1,
                                updated_at=now)
        .on_conflict_do_nothing(index_elements=["key"]).returning(StepCost.key))
    if first.first() is not None:  # the kind's first run (rowcount is -1 with psycopg here)
        return
    row = session.execute(select(StepCost.seconds_per_unit, StepCost.samples)
                          .where(StepCost.key == sub.cost_key).with_for_update()).one()
    average = row.seconds_per_unit + (rate - row.seconds_per_unit) / min(row.samples + 1, WINDOW)
    session.execute(
        update(StepCost).where(StepCost.key == sub.cost_key)
        .values(seconds_per_unit=average, samples=row.samples + 1, updated_at=now)
        .execution_options(synchronize_session=False))
