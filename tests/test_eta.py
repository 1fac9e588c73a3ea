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


def test_parallel_steps_end_with_the_longest_lane():
    # Preview at 20 % after 10 s: 40 s left. Transcription at 50 % after 4 s: 4 s left,
    # then its worker takes the thumbnails: (1 + 50 + 8) s over 90 weight units.
    subs = rows(extract_audio=sub("extract_audio", "completed", started=0, finished=1),
                transcribe=sub("transcribe", "running", 50, started=6),
                transcode=sub("transcode", "running", 20, started=0))
    assert left(subs, 10) == pytest.approx(40.0)
    # The same, but with long thumbnails: now the second lane ends last.
    subs[STEPS.index("thumbnails")].weight = 100
    per_weight = (1 + 50 + 8) / 90
    assert left(subs, 10) == pytest.approx(round(4 + 100 * per_weight, 1))


def test_one_worker_runs_the_waiting_steps_one_after_another():
    # One step running means one worker: 10 s left for it, then 70 weight units at the
    # preview's 20 s / 30 units.
    subs = rows(transcode=sub("transcode", "running", 50, started=0))
    assert left(subs, 10) == pytest.approx(round(10 + 70 * 20 / 30, 1))


def test_a_step_waits_for_its_parent_even_when_a_worker_is_free():
    # Thumbnails end in 1 s, the audio in 2 s: the transcription starts at 2, not 1.
    subs = rows(extract_audio=sub("extract_audio", "running", 50, started=0),
                thumbnails=sub("thumbnails", "running", 50, started=1),
                transcode=sub("transcode", "completed", started=0, finished=1))
    per_weight = (4 + 2 + 1) / 50  # projected audio 4 s, thumbnails 2 s, preview 1 s
    assert left(subs, 2) == pytest.approx(round(2 + 50 * per_weight, 1))


def test_a_step_whose_parent_failed_is_not_waited_for():
    subs = rows(extract_audio=sub("extract_audio", "failed", started=0, finished=1),
                transcode=sub("transcode", "running", 50, started=0))
    subs[STEPS.index("extract_audio")].progress = 30.0
    # Only the thumbnails remain besides the preview: 5 s + 10 units at 20 s / 30 units.
    assert left(subs, 5) == pytest.approx(round(5 + 10 * 10 / 30, 1))


def test_a_running_step_at_zero_is_estimated_from_its_weight_and_never_negative():
    subs = rows(extract_audio=sub("extract_audio", "completed", started=0, finished=1),
                transcribe=sub("transcribe", "running", 0, started=1),
                transcode=sub("transcode", "running", 50, started=0))
    # 0.175 s per unit (audio 1 s, preview 6 s, for 40 units): the transcription should
    # take 8.75 s, 2 of which are gone; the preview's worker does the thumbnails meanwhile.
    per_weight = (1 + 6) / 40
    assert left(subs, 3) == pytest.approx(round(50 * per_weight - 2, 1))
    # Long overdue: that step is "any moment now", not a negative time; the thumbnails
    # (1 s at 0.1 s per unit) follow on the only worker.
    subs[STEPS.index("transcode")] = sub("transcode", "completed", started=0, finished=3)
    assert left(subs, 60) == pytest.approx(1.0)


def test_the_progress_view_shows_the_eta_as_of_the_tasks_last_change():
    subs = rows(transcode=sub("transcode", "running", 25, started=0),
                extract_audio=sub("extract_audio", "skipped"),
                transcribe=sub("transcribe", "skipped"),
                thumbnails=sub("thumbnails", "completed", started=0, finished=2))
    row = task("running", updated=10)
    view = progress._view(row, subs)
    assert view.eta_seconds == pytest.approx(30.0)
    # The same rows give the same view whenever they are read: nothing reads the clock.
    assert progress._view(row, subs) == view
    assert progress.estimate_eta(row, subs, at(20)) == pytest.approx(60.0)
