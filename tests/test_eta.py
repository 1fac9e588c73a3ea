"""The ETA (webapp/services/eta.py) on constructed task and subtask rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from webapp.config import DEFAULT_WEIGHTS, STEPS
from webapp.services import eta, progress
from webapp.services.progress.views import _view

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
# The steps' cost shares (eta.COSTS): audio, transcription, thumbnails, preview.
AUDIO, SPEECH, THUMBS, PREVIEW = (eta.COSTS[name] for name in STEPS)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sub(name: str, status: str = "pending", progress: float = 0.0, started: float | None = None,
        finished: float | None = None, reused: bool = False,
        first: tuple[float, float] | None = None,
        expected: float | None = None) -> SimpleNamespace:
    """A subtask row as progress.queries._tasks_of makes it (times in seconds after T0); `first` is
    its first progress report, (seconds, percent)."""
    return SimpleNamespace(
        name=name, position=STEPS.index(name), weight=DEFAULT_WEIGHTS[name], status=status,
        progress=100.0 if status == "completed" else progress, attempt=1 if started else 0,
        reused=reused, error=None,
        started_at=None if started is None else at(started),
        finished_at=None if finished is None else at(finished),
        first_progress_at=None if first is None else at(first[0]),
        first_progress=None if first is None else first[1], expected_seconds=expected)


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


def test_no_eta_from_a_first_report_alone():
    """One report is a position, not a pace (seen in bench/eta.py: 0.1 % of the preview
    after 1.5 s of ffmpeg's start-up made the ETA 1930 s of a 26 s run)."""
    subs = rows(extract_audio=sub("extract_audio", "skipped"),
                transcribe=sub("transcribe", "skipped"),
                thumbnails=sub("thumbnails", "skipped"),
                transcode=sub("transcode", "running", 0.1, started=0.2, first=(1.5, 0.1)))
    assert left(subs, 1.5) is None
    # Nor from a pace over less than MIN_MEASURED percent of the work.
    subs[STEPS.index("transcode")].progress = 0.1 + eta.MIN_MEASURED / 2
    assert left(subs, 2.0) is None


def test_a_pace_is_measured_from_the_first_report_leaving_the_start_up_out():
    # The preview started at 0, said 1 % at 2 s (ffmpeg's start-up), 21 % at 4 s: 20 % in
    # 2 s, so the 79 % left take 7.9 s more (measured from its start: 15 s).
    subs = rows(extract_audio=sub("extract_audio", "skipped"),
                transcribe=sub("transcribe", "skipped"),
                thumbnails=sub("thumbnails", "skipped"),
                transcode=sub("transcode", "running", 21, started=0, first=(2, 1)))
    assert left(subs, 4) == pytest.approx(7.9)


def test_a_young_pace_is_blended_with_what_the_steps_cost_predicts():
    """Thumbnails took 1 s alone; by the cost shares the preview would take PREVIEW /
    THUMBS s, and being at 5 % it needs 95 % of that more. Its own pace, 4 % in its first
    1 s since the first report (24 s in all), counts for 4 / TRUST of the estimate, the
    cost's prediction for the rest."""
    subs = rows(extract_audio=sub("extract_audio", "skipped"),
                transcribe=sub("transcribe", "skipped"),
                thumbnails=sub("thumbnails", "completed", started=0, finished=1),
                transcode=sub("transcode", "running", 5, started=1, first=(1, 1)))
    own = 4 / eta.TRUST
    total = own * (1 + 1 * 95 / 4) + (1 - own) * (1 + 0.95 * PREVIEW / THUMBS)
    assert left(subs, 2) == pytest.approx(round(total - 1, 1))
    # Past TRUST percent the step's own pace alone counts: 20 % in 2 s, 79 % in 7.9 more.
    subs[STEPS.index("transcode")].progress = 21
    assert left(subs, 3) == pytest.approx(7.9)


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


def test_steps_not_started_take_their_cost_at_the_pace_seen_so_far():
    # One step ran: 20 s projected for its cost units. The other steps' units follow at
    # that pace (not at the weights': they say how the total is shown, not how long).
    subs = rows(transcode=sub("transcode", "running", 50, started=0))
    others = AUDIO + SPEECH + THUMBS
    assert left(subs, 10) == pytest.approx(round(10 + others * 20 / PREVIEW, 1))
    # Preview [0, 1], audio [0, 2] and thumbnails [1, 2] ran two at a time: 0.5, 1 and
    # 0.5 s alone, the two running ones half done: 0.5 + 2 + 1 s for their cost units.
    # Left: 1 s of audio, 0.5 of thumbnails, and the transcription's units at that pace.
    subs = rows(extract_audio=sub("extract_audio", "running", 50, started=0),
                thumbnails=sub("thumbnails", "running", 50, started=1),
                transcode=sub("transcode", "completed", started=0, finished=1))
    assert left(subs, 2) == pytest.approx(
        round(1 + 0.5 + SPEECH * 3.5 / (AUDIO + THUMBS + PREVIEW), 1))


def test_a_step_whose_parent_failed_is_not_waited_for():
    subs = rows(extract_audio=sub("extract_audio", "failed", started=0, finished=1),
                transcode=sub("transcode", "running", 50, started=0))
    subs[STEPS.index("extract_audio")].progress = 30.0
    # The preview had 4.5 s alone for 50 %: 4.5 s more; then the thumbnails, 2 cost units
    # at 9 s per the preview's units. The transcription never runs.
    assert left(subs, 5) == pytest.approx(round(4.5 + THUMBS * 9 / PREVIEW, 1))


def test_a_running_step_at_zero_is_estimated_from_its_cost_and_never_negative():
    # Audio [0, 1] and preview [0, 3] at 50 %, transcription [1, 3] at 0 %, two at a time:
    # 0.5 s alone for the audio, 1.5 s for the preview (3 s projected): 3.5 s for their cost
    # units. Left: the preview's 1.5 s, the transcription's units less its 1 s alone, the
    # thumbnails' units.
    subs = rows(extract_audio=sub("extract_audio", "completed", started=0, finished=1),
                transcribe=sub("transcribe", "running", 0, started=1),
                transcode=sub("transcode", "running", 50, started=0))
    per_unit = 3.5 / (AUDIO + PREVIEW)
    assert left(subs, 3) == pytest.approx(1.5 + SPEECH * per_unit - 1 + THUMBS * per_unit,
                                          abs=0.05)
    # Long overdue: the transcription is "any moment now", not a negative time; then the
    # thumbnails take their units at 3.5 s per the audio's and preview's.
    subs[STEPS.index("transcode")] = sub("transcode", "completed", started=0, finished=3)
    assert left(subs, 60) == pytest.approx(round(THUMBS * 3.5 / (AUDIO + PREVIEW), 1))


def test_the_progress_view_shows_the_eta_as_of_the_tasks_last_change():
    subs = rows(transcode=sub("transcode", "running", 25, started=0),
                extract_audio=sub("extract_audio", "skipped"),
                transcribe=sub("transcribe", "skipped"),
                thumbnails=sub("thumbnails", "completed", started=0, finished=2))
    row = task("running", updated=10)
    view = _view(row, subs)
    assert view.eta_seconds == pytest.approx(27.0)  # 9 s alone for 25 %
    # The same rows give the same view whenever they are read: nothing reads the clock.
    assert _view(row, subs) == view
    assert progress.estimate_eta(row, subs, at(20)) == pytest.approx(57.0)



def test_with_history_a_queued_task_has_an_eta_at_once():
    """What the steps took on this installation (calibration.py) sizes them before any
    measures its own pace: a queued task knows how long its steps will take."""
    subs = rows(**{name: sub(name, expected=seconds) for name, seconds in
                   {"extract_audio": 1.0, "transcribe": 20.0, "thumbnails": 2.0,
                    "transcode": 30.0}.items()})
    assert left(subs, 0, "queued") == pytest.approx(53.0)
    subs[1] = sub("transcribe", "skipped")
    assert left(subs, 0, "queued") == pytest.approx(33.0)


def test_history_carries_a_step_through_its_first_seconds_then_its_own_pace_takes_over():
    """A silent video's preview, its thumbnails done: ffmpeg still reaching its speed reads
    slow (2 % in its first second), history says 30 s alone; by 10 % of its own work
    measured, its own pace alone counts."""
    thumbs = sub("thumbnails", "completed", started=0, finished=1, expected=1.0)
    gone = {"extract_audio": sub("extract_audio", "skipped"),
            "transcribe": sub("transcribe", "skipped")}
    early = rows(thumbnails=thumbs, **gone, transcode=sub(
        "transcode", "running", 3.0, started=0, first=(1.0, 1.0), expected=30.0))
    # 2 % in 1.5 s alone (0.5 s shared, 1 s alone since its first report): 50 s in all by
    # its own pace; by history, 97 % of 30 s more; 2 % of the 10 % trusted: one fifth its
    # own.
    own = 1.0 + 97 / 2 * 1.0 + 0.5
    history = 1.5 + 0.97 * 30.0
    assert left(early, 2.0) == pytest.approx(0.2 * own + 0.8 * history - 1.5, rel=0.01)
    late = rows(thumbnails=thumbs, **gone, transcode=sub(
        "transcode", "running", 41.0, started=0, first=(1.0, 1.0), expected=30.0))
    assert left(late, 11.0) == pytest.approx(10.0 * 59 / 40, rel=0.01)  # 4 %/s alone


def test_a_step_without_history_is_sized_from_the_ones_with_it():
    """A new whisper model has no history yet: its cost share at the speed the history of
    the other steps implies (eta.COSTS), until the task measures something."""
    subs = rows(extract_audio=sub("extract_audio", expected=1.0),
                transcribe=sub("transcribe"),
                thumbnails=sub("thumbnails", expected=2.0),
                transcode=sub("transcode", expected=53.0))
    per_unit = 56.0 / (AUDIO + THUMBS + PREVIEW)
    assert left(subs, 0, "queued") == pytest.approx(56.0 + SPEECH * per_unit, abs=0.05)


def test_without_history_the_reference_costs_of_the_media_size_the_steps():
    """A new installation: the preview measured 4 s alone for a 20 s video; the reference
    machine's fixed + per-second costs (eta.PRIOR) say how long the transcription takes
    beside that, for this length of media (whisper's model load weighs on short videos)."""
    def costed(name, units, **kw):
        row = sub(name, **kw)
        row.cost_key, row.cost_units = ("transcribe/base" if name == "transcribe" else name,
                                        units)
        return row

    def prior(kind, units):
        fixed, per_unit = eta.PRIOR[kind]
        return fixed + per_unit * units

    for seconds in (20.0, 120.0):
        subs = [costed("extract_audio", seconds, status="skipped"),
                costed("transcribe", seconds),
                costed("thumbnails", seconds, status="skipped"),
                costed("transcode", seconds, status="completed", started=0, finished=4)]
        speed = 4.0 / prior("transcode", seconds)
        assert left(subs, 4) == pytest.approx(
            round(prior("transcribe/base", seconds) * speed, 1), abs=0.05)
    # Translating too costs more.
    subs[1].cost_key = "transcribe/base+translate"
    assert left(subs, 4) == pytest.approx(
        round(prior("transcribe/base", 120.0) * 1.5 * speed, 1), abs=0.05)


def test_a_steps_measured_position_counts_before_its_pace_does():
    """Whisper's first report on a 36 s video comes when 89 % of it is done (one window):
    no pace yet, but the rest is 11 % of the expected work, not what the expected length
    leaves after the time it ran."""
    subs = rows(extract_audio=sub("extract_audio", "completed", started=0, finished=0.5,
                                  expected=0.5),
                transcribe=sub("transcribe", "running", 89.0, started=0.5, first=(12.0, 89.0),
                               expected=9.0),
                thumbnails=sub("thumbnails", "skipped"),
                transcode=sub("transcode", "skipped"))
    assert left(subs, 12.0) == pytest.approx(round(0.11 * 9.0, 1))


def test_the_eta_benchmark_scores_the_finish_a_client_counts_down_to():
    """bench/eta.py judges eta_at, the finish the API states and the page counts down to.
    eta_seconds is counted from the task's last change, so a sample read 6 s after that
    change and scored as "read time + eta_seconds" was 6 s late for an exact estimate."""
    from bench import eta as bench_eta

    # Read at 10 s, the task last changed at 4 s, its eta 6 s: eta_at is 10 s, the finish.
    exact = {"t": 10.0, "updated": 4.0, "status": "running", "own": 50.0, "shown": 50.0,
             "eta": 6.0, "eta_at": 10.0}
    unknown = exact | {"t": 9.0, "eta": None, "eta_at": None}
    scored = bench_eta.judge([exact, unknown], finish=10.0)
    assert scored["errors"] == [0.0, None]
    assert (scored["judged"], scored["within"], scored["without_eta"]) == (2, 1, 1)
    # The old scoring is still there, as its own column: 6 s late of a 10 s run.
    assert bench_eta.judge([exact], 10.0, bench_eta.read_plus_eta)["errors"] == [0.6]
