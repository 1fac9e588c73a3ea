"""The ETA (webapp/services/eta.py) on constructed task and subtask rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from webapp.config import DEFAULT_WEIGHTS, STEPS
from webapp.services import eta, progress

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sub(name: str, status: str = "pending", progress: float = 0.0, started: float | None = None,
        finished: float | None = None, reused: bool = False) -> SimpleNamespace:
    """A subtask row as progress._tasks_of makes it (times in seconds after T0)."""
    return SimpleNamespace(
        name=name, position=STEPS.index(name), weight=DEFAULT_WEIGHTS[name], status=status,
        progress=100.0 if status == "completed" else progress, attempt=1 if started else 0,
        reused=reused, error=None,
        started_at=None if started is None else at(started),
        finished_at=None if finished is None else at(finished))


def task(status: str = "running", updated: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(id="t", video_id="v", mode="run_sync", status=status, version=1,
                           created_at=T0, started_at=T0, finished_at=None, error=None,
                           updated_at=at(updated))


def rows(**steps: SimpleNamespace) -> list[SimpleNamespace]:
    """All four steps, pending unless given."""
    return [steps.get(name) or sub(name) for name in STEPS]


def left(subs: list[SimpleNamespace], now: float, status: str = "running") -> float | None:
    return eta.seconds_left(task(status, now), subs, at(now))


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_no_eta_for_a_task_that_ended(status):
    subs = rows(transcode=sub("transcode", "running", 50, started=0))
    assert left(subs, 10, status) is None


def test_no_eta_before_any_step_measured_anything():
    assert left(rows(), 0, "queued") is None
    subs = rows(extract_audio=sub("extract_audio", "running", 0, started=0),
                transcode=sub("transcode", "running", 0, started=0))
    assert left(subs, 1.0) is None


def test_no_eta_while_a_step_has_barely_started():
    """Seen in bench/eta.py: 0.1 % of the preview after 1.5 s made the ETA 1930 s of a
    26 s run; "not known yet" is the honest answer until a step's pace means something."""
    subs = rows(extract_audio=sub("extract_audio", "completed", started=0, finished=0.7),
                transcode=sub("transcode", "running", 0.1, started=0.2))
    assert left(subs, 1.5) is None
    subs[STEPS.index("transcode")].progress = 1.0
    assert left(subs, 1.5) is not None


def test_reused_and_skipped_steps_neither_count_as_done_nor_as_speed():
    """run_sync kept audio and transcript, and there is no picture to take thumbnails of:
    the old estimate called the task 77.5 % done after 10 s and said 2.9 s were left,
    where the preview alone needs 30 s more."""
    subs = rows(extract_audio=sub("extract_audio", "completed", finished=0, reused=True),
                transcribe=sub("transcribe", "completed", finished=0, reused=True),
                thumbnails=sub("thumbnails", "skipped", finished=0),
                transcode=sub("transcode", "running", 25, started=0))
    assert left(subs, 10) == pytest.approx(30.0)
    total = progress.weighted_total((s.weight, s.status, s.progress) for s in subs)
    assert total == pytest.approx(77.5)  # what the old extrapolation divided by


def test_a_pace_measured_beside_another_step_counts_the_time_shared():
    # Preview and thumbnails shared the machine for 4 s, then the preview ran alone for 6:
    # 8 s of the machine to itself for 25 %, so 24 s more (30 s if sharing were ignored).
    subs = rows(extract_audio=sub("extract_audio", "skipped"),
                transcribe=sub("transcribe", "skipped"),
                thumbnails=sub("thumbnails", "completed", started=0, finished=4),
                transcode=sub("transcode", "running", 25, started=0))
    assert left(subs, 10) == pytest.approx(24.0)


def test_steps_side_by_side_get_through_one_second_of_work_alone_per_second():
    # Both ran side by side for 10 s: 5 s alone each. The transcription (50 %) needs 5 s
    # alone more, the preview (20 %) 20: 25 s in all, whether the transcription ends
    # after 10 s shared and the preview goes on alone, or they ran one after the other.
    subs = rows(extract_audio=sub("extract_audio", "completed", finished=0, reused=True),
                transcribe=sub("transcribe", "running", 50, started=0),
                thumbnails=sub("thumbnails", "skipped"),
                transcode=sub("transcode", "running", 20, started=0))
    assert left(subs, 10) == pytest.approx(5 + 20)


def test_steps_not_started_take_their_weight_at_the_pace_seen_so_far():
    # One step ran: 20 s for 30 weight units. The other 70 units follow at that pace.
    subs = rows(transcode=sub("transcode", "running", 50, started=0))
    assert left(subs, 10) == pytest.approx(round(10 + 70 * 20 / 30, 1))
    # Preview [0, 1], audio [0, 2] and thumbnails [1, 2] ran two at a time: 0.5, 1 and
    # 0.5 s alone; 0.07 s alone per unit (0.5 + 2 + 1 s projected for 50 units). Left:
    # 1 s of audio, 0.5 of thumbnails, and the transcription, 50 × 0.07 = 3.5 s.
    subs = rows(extract_audio=sub("extract_audio", "running", 50, started=0),
                thumbnails=sub("thumbnails", "running", 50, started=1),
                transcode=sub("transcode", "completed", started=0, finished=1))
    assert left(subs, 2) == pytest.approx(1 + 0.5 + 3.5)


def test_a_step_whose_parent_failed_is_not_waited_for():
    subs = rows(extract_audio=sub("extract_audio", "failed", started=0, finished=1),
                transcode=sub("transcode", "running", 50, started=0))
    subs[STEPS.index("extract_audio")].progress = 30.0
    # The preview had 4.5 s alone for 50 %: 4.5 s more; then the thumbnails, 10 units at
    # 9 s / 30 units. The transcription never runs.
    assert left(subs, 5) == pytest.approx(4.5 + 3.0)


def test_a_running_step_at_zero_is_estimated_from_its_weight_and_never_negative():
    # Audio [0, 1] and preview [0, 3] at 50 %, transcription [1, 3] at 0 %, two at a time:
    # 0.5 s alone for the audio, 1.5 s for the preview (3 s projected): 0.0875 s per unit.
    # Left: the preview's 1.5 s, the transcription's 4.375 − 1 s, the thumbnails' 0.875.
    subs = rows(extract_audio=sub("extract_audio", "completed", started=0, finished=1),
                transcribe=sub("transcribe", "running", 0, started=1),
                transcode=sub("transcode", "running", 50, started=0))
    assert left(subs, 3) == pytest.approx(5.75, abs=0.05)
    # Long overdue: the transcription is "any moment now", not a negative time; then the
    # thumbnails take 10 units at 2 s / 40 units.
    subs[STEPS.index("transcode")] = sub("transcode", "completed", started=0, finished=3)
    assert left(subs, 60) == pytest.approx(0.5)


def test_the_progress_view_shows_the_eta_as_of_the_tasks_last_change():
    subs = rows(transcode=sub("transcode", "running", 25, started=0),
                extract_audio=sub("extract_audio", "skipped"),
                transcribe=sub("transcribe", "skipped"),
                thumbnails=sub("thumbnails", "completed", started=0, finished=2))
    row = task("running", updated=10)
    view = progress._view(row, subs)
    assert view.eta_seconds == pytest.approx(27.0)  # 9 s alone for 25 %
    # The same rows give the same view whenever they are read: nothing reads the clock.
    assert progress._view(row, subs) == view
    assert progress.estimate_eta(row, subs, at(20)) == pytest.approx(57.0)

