"""The progress service: weighted totals, state transitions, monotonic progress, throttling."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import select

from jobs.attempt import AttemptWatch
from webapp.config import DEFAULT_WEIGHTS, STEPS
from webapp.db import session_factory
from webapp.models import ProcessingTask, SubTask, Video, utcnow
from webapp.services import progress


def make_video(session, **kw) -> Video:
    fields = dict(original_filename="clip.mp4", stored_name="source.mp4", size_bytes=10,
                  format_name="mov,mp4", duration=4.0, width=320, height=240,
                  has_audio=True, has_video=True)
    fields.update(kw)
    video = Video(**fields)
    session.add(video)
    session.commit()
    return video


def make_task(session, video, skipped=None, reused=()) -> ProcessingTask:
    task = progress.new_task(video, "run_sync", DEFAULT_WEIGHTS, skipped or {}, reused)
    session.add(task)
    session.commit()
    return task


def view(session, task_id) -> progress.ProgressView:
    session.expire_all()
    return progress.task_view(session.get(ProcessingTask, task_id))


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([(10, "pending", 0), (50, "pending", 0), (10, "pending", 0), (30, "pending", 0)], 0.0),
        ([(10, "completed", 0), (50, "running", 50), (10, "pending", 0), (30, "running", 10)],
         10 + 25 + 3),
        ([(10, "skipped", 0), (50, "skipped", 0), (10, "completed", 100),
          (30, "completed", 100)], 100.0),
        ([(1, "completed", 100), (1, "failed", 40)], 70.0),
        ([(1, "running", 100), (1, "completed", 100)], 99.99),  # 100 only when all are done
        ([], 0.0),
    ],
)
def test_weighted_total(parts, expected):
    assert progress.weighted_total(parts) == pytest.approx(expected)


def test_initial_view_lists_every_step_pending():
    v = progress.initial_view("vid", DEFAULT_WEIGHTS)
    assert (v.status, v.progress, v.task_id, v.eta_seconds) == ("pending", 0.0, None, None)
    assert [(s.name, s.status, s.progress, s.weight) for s in v.subtasks] == [
        (name, "pending", 0.0, DEFAULT_WEIGHTS[name]) for name in STEPS
    ]


def test_new_task_marks_skipped_and_reused_steps(db_session):
    video = make_video(db_session, has_video=False, width=None, height=None)
    task = make_task(db_session, video,
                     skipped={"thumbnails": "no video stream", "transcode": "no video stream"},
                     reused=["extract_audio"])
    v = view(db_session, task.id)
    states = {s.name: (s.status, s.reused) for s in v.subtasks}
    assert states == {"extract_audio": ("completed", True), "transcribe": ("pending", False),
                      "thumbnails": ("skipped", False), "transcode": ("skipped", False)}
    assert v.status == "queued"
    assert v.progress == 50.0  # 10 reused + 40 skipped out of 100


def test_task_with_nothing_to_run_is_completed_at_once(db_session):
    video = make_video(db_session)
    task = make_task(db_session, video, reused=STEPS)
    assert view(db_session, task.id).status == "completed"
    assert view(db_session, task.id).progress == 100.0


def test_run_of_a_task_moves_forward_and_completes(db_session):
    task = make_task(db_session, make_video(db_session))
    totals = []
    for step in STEPS:
        attempt = progress.start_subtask(db_session, task.id, step)
        assert attempt == 1
        assert view(db_session, task.id).status == "running"
        for pct in (20, 60, 40, 90):  # 40 arrives late and must not move progress back
            progress.report_progress(db_session, task.id, step, attempt, pct)
            totals.append(view(db_session, task.id).progress)
        sub = next(s for s in view(db_session, task.id).subtasks if s.name == step)
        assert (sub.status, sub.progress, sub.attempt) == ("running", 90.0, 1)
        assert progress.complete_subtask(db_session, task.id, step, attempt)
        totals.append(view(db_session, task.id).progress)
        # No step runs until a worker starts the next: the task waits for one, and says so.
        assert view(db_session, task.id).status == ("completed" if step == STEPS[-1]
                                                    else "queued")
    assert totals == sorted(totals)
    final = view(db_session, task.id)
    assert (final.status, final.progress, final.error) == ("completed", 100.0, None)
    assert final.finished_at is not None and final.started_at is not None
    assert all(s.finished_at >= s.started_at for s in final.subtasks)


def test_failed_step_fails_the_task_once_all_steps_ended(db_session):
    task = make_task(db_session, make_video(db_session))
    attempt = progress.start_subtask(db_session, task.id, "extract_audio")
    assert progress.finish_subtask(db_session, task.id, "extract_audio", "failed",
                                   "The audio could not be read.", attempt=attempt,
                                   detail="[aac] invalid data")
    # Other steps are still to come, and none runs: the task waits for a worker.
    waiting = view(db_session, task.id)
    assert (waiting.status, waiting.active) == ("queued", True)
    progress.finish_subtask(db_session, task.id, "transcribe", "cancelled",
                            "not run because extract_audio failed")
    for step in ("thumbnails", "transcode"):
        attempt = progress.start_subtask(db_session, task.id, step)
        progress.complete_subtask(db_session, task.id, step, attempt)
    final = view(db_session, task.id)
    assert final.status == "failed"
    # The task says which steps did not complete; each step says why, once.
    assert final.error == "failed: extract_audio; not run: transcribe"
    failed = next(s for s in final.subtasks if s.name == "extract_audio")
    assert (failed.error, failed.error_detail) == ("The audio could not be read.",
                                                   "[aac] invalid data")
    assert final.progress < 100


def test_a_task_whose_steps_are_all_handed_back_is_queued_until_a_worker_takes_one(
        db_session):
    """A worker stopped mid-step (Ctrl-C of `make run`) hands its step back; with no other
    step running, nothing works for the task: it says `queued`, not `running`, until the next
    worker starts a step. Its start time is the first start's, and it stays active."""
    task = make_task(db_session, make_video(db_session))
    preview = progress.start_subtask(db_session, task.id, "transcode")
    poster = progress.start_subtask(db_session, task.id, "thumbnails")
    started = view(db_session, task.id).started_at
    stopped = "the worker was stopped (SIGTERM) while this step ran"
    assert progress.retry_subtask(db_session, task.id, "thumbnails", stopped, poster)
    assert view(db_session, task.id).status == "running"  # the preview still runs
    assert progress.retry_subtask(db_session, task.id, "transcode", stopped, preview)
    waiting = view(db_session, task.id)
    assert (waiting.status, waiting.active) == ("queued", True)
    assert {s.name: (s.status, s.error) for s in waiting.subtasks}["transcode"] == (
        "pending", stopped)
    assert progress.active_task(db_session, waiting.video_id).id == task.id
    assert progress.start_subtask(db_session, task.id, "transcode") == preview + 1
    again = view(db_session, task.id)
    assert (again.status, again.started_at) == ("running", started)


def test_cancel_freezes_the_task_against_late_writes(db_session):
    task = make_task(db_session, make_video(db_session))
    attempt = progress.start_subtask(db_session, task.id, "transcode")
    progress.report_progress(db_session, task.id, "transcode", attempt, 30)
    assert progress.cancel_task(db_session, task.id, "cancelled by request")
    db_session.commit()
    assert not progress.cancel_task(db_session, task.id, "again")
    # a job that did not notice yet keeps reporting and finishing: every write is refused
    assert not progress.attempt_is_current(db_session, task.id, "transcode", attempt)
    progress.report_progress(db_session, task.id, "transcode", attempt, 80)
    assert not progress.complete_subtask(db_session, task.id, "transcode", attempt)
    assert not progress.start_subtask(db_session, task.id, "thumbnails")
    v = view(db_session, task.id)
    assert v.status == "cancelled"
    assert {s.status for s in v.subtasks} == {"cancelled"}
    assert next(s for s in v.subtasks if s.name == "transcode").progress == 30.0


def test_eta_from_progress_rate(db_session):
    from datetime import timedelta

    task = make_task(db_session, make_video(db_session))
    progress.start_subtask(db_session, task.id, "transcode")
    task = db_session.get(ProcessingTask, task.id)
    db_session.refresh(task)
    now = task.started_at + timedelta(seconds=30)
    assert progress.estimate_eta(task, task.subtasks, now) is None  # nothing measured yet
    progress.report_progress(db_session, task.id, "transcode", 1, 1.0)
    db_session.refresh(task)
    assert progress.estimate_eta(task, task.subtasks, now) is None  # a position, no pace
    progress.report_progress(db_session, task.id, "transcode", 1, 25.0)
    db_session.refresh(task)
    # Measured from the first report (moments after the start): 24 % in 30 s, so 93.75 s
    # more for the preview, then the cost units of the other steps at its 123.75 s per its
    # own units (eta.COSTS).
    from webapp.services import eta

    others = sum(eta.COSTS.values()) - eta.COSTS["transcode"]
    expected = 30 * 75 / 24 + others * (30 + 30 * 75 / 24) / eta.COSTS["transcode"]
    assert progress.estimate_eta(task, task.subtasks, now) == pytest.approx(expected, rel=0.01)


def test_an_attempts_first_progress_report_is_kept_and_a_new_attempt_forgets_it(db_session):
    task = make_task(db_session, make_video(db_session))
    attempt = progress.start_subtask(db_session, task.id, "transcode")
    for percent in (0.0, 3.0, 7.5):
        progress.report_progress(db_session, task.id, "transcode", attempt, percent)
    step = db_session.scalar(select(SubTask).where(SubTask.task_id == task.id,
                                                   SubTask.name == "transcode"))
    db_session.refresh(step)
    assert (step.progress, step.first_progress) == (7.5, 3.0)
    assert step.started_at <= step.first_progress_at
    assert progress.retry_subtask(db_session, task.id, "transcode", "the worker died", attempt)
    db_session.refresh(step)
    assert (step.first_progress_at, step.first_progress) == (None, None)
    attempt = progress.start_subtask(db_session, task.id, "transcode")
    progress.report_progress(db_session, task.id, "transcode", attempt, 2.0)
    db_session.refresh(step)
    assert step.first_progress == 2.0


def test_a_guessed_report_moves_the_step_but_is_not_its_first_measure(db_session):
    """Whisper's position grown at an assumed rate before its first window is a guess: it
    shows, but the ETA's pace starts at the first measured report."""
    task = make_task(db_session, make_video(db_session))
    attempt = progress.start_subtask(db_session, task.id, "transcribe")
    progress.report_progress(db_session, task.id, "transcribe", attempt, 12.0, measured=False)
    step = db_session.scalar(select(SubTask).where(SubTask.task_id == task.id,
                                                   SubTask.name == "transcribe"))
    db_session.refresh(step)
    assert (step.progress, step.first_progress_at, step.first_progress) == (12.0, None, None)
    progress.report_progress(db_session, task.id, "transcribe", attempt, 40.0)
    db_session.refresh(step)
    assert (step.progress, step.first_progress) == (40.0, 40.0)
    assert step.first_progress_at is not None


def test_late_writes_of_a_replaced_task_never_touch_the_new_one(db_session):
    video = make_video(db_session)
    old = make_task(db_session, video)
    old_attempt = progress.start_subtask(db_session, old.id, "transcode")
    assert progress.cancel_task(db_session, old.id, "replaced by a forced run")
    db_session.commit()
    new = make_task(db_session, video)
    attempt = progress.start_subtask(db_session, new.id, "transcode")
    progress.report_progress(db_session, new.id, "transcode", attempt, 10)
    # the old job, not yet stopped, keeps going
    progress.report_progress(db_session, old.id, "transcode", old_attempt, 95)
    assert not progress.finish_subtask(db_session, old.id, "transcode", "failed", "killed",
                                       attempt=old_attempt)
    assert not progress.retry_subtask(db_session, old.id, "transcode", "retrying", old_attempt)
    fresh = {s.name: s for s in view(db_session, new.id).subtasks}
    assert (fresh["transcode"].status, fresh["transcode"].progress) == ("running", 10.0)
    assert view(db_session, new.id).status == "running"
    assert view(db_session, old.id).status == "cancelled"


def test_completed_steps_teach_the_installation_what_the_next_run_will_cost(db_session):
    from datetime import timedelta

    from webapp.models import StepCost
    from webapp.services import calibration

    video = make_video(db_session, duration=60.0, width=640, height=360, has_audio=False)
    costs = calibration.step_costs(video, "base", translate=False)
    assert costs["transcribe"] == ("transcribe/base", 60.0)
    assert costs["transcode"] == ("transcode", 15.0)  # a quarter of 720p, no sound
    loud = make_video(db_session, duration=60.0, width=640, height=360)
    assert calibration.step_costs(loud, "base", translate=False)["transcode"] == (
        "transcode", pytest.approx(60.0 * (0.25 + calibration.AUDIO_UNITS)))
    assert calibration.expected_seconds(db_session, costs) == {}  # a new installation

    def run(video, seconds):
        """One task whose transcode runs alone for `seconds` (times moved back so)."""
        costs = calibration.step_costs(video, "base", translate=False)
        task = progress.new_task(video, "run_sync", DEFAULT_WEIGHTS, {}, ["extract_audio",
                                 "transcribe", "thumbnails"], costs=costs,
                                 expected=calibration.expected_seconds(db_session, costs))
        db_session.add(task)
        db_session.commit()
        attempt = progress.start_subtask(db_session, task.id, "transcode")
        step = db_session.scalar(select(SubTask).where(SubTask.task_id == task.id,
                                                       SubTask.name == "transcode"))
        step.started_at = utcnow() - timedelta(seconds=seconds)
        db_session.commit()
        assert progress.complete_subtask(db_session, task.id, "transcode", attempt)
        return {s.name: s for s in db_session.get(ProcessingTask, task.id).subtasks}

    first = run(video, 30.0)
    assert first["transcode"].expected_seconds is None
    assert first["extract_audio"].cost_key is None  # reused: costs nothing, teaches nothing
    recorded = db_session.scalars(select(StepCost).where(StepCost.key == "transcode")).all()
    assert [(r.units, r.seconds) for r in recorded] == [(15.0, pytest.approx(30.0, rel=0.01))]
    second = run(video, 60.0)  # 2 s per unit expected; it took 4
    assert second["transcode"].expected_seconds == pytest.approx(30.0, rel=0.01)
    # Two runs of the same size: the expectation is their mean, 3 s per unit.
    assert calibration.expected_seconds(db_session, costs) == {
        "transcode": pytest.approx(45.0, rel=0.01)}
    # It scales with the media: a 720p video of 10 s is 10 units.
    other = make_video(db_session, duration=10.0, width=1280, height=720, has_audio=False)
    assert calibration.expected_seconds(
        db_session, calibration.step_costs(other, "base", translate=False)) == {
        "transcode": pytest.approx(30.0, rel=0.01)}
    # Only the last SAMPLES runs of a kind are kept.
    for _ in range(calibration.SAMPLES):
        run(video, 15.0)
    recorded = db_session.scalars(select(StepCost).where(StepCost.key == "transcode")).all()
    assert len(recorded) == calibration.SAMPLES
    assert [r.seconds for r in recorded] == pytest.approx([15.0] * len(recorded), rel=0.01)
    # A video whose length is unknown has no expectation.
    assert calibration.step_costs(make_video(db_session, duration=None), "base", False) == {}


@pytest.mark.parametrize(("wall", "ran_for", "recorded"), [
    (3600.0, 30.0, [15.0]),  # the clock jumped an hour ahead during a 30 s step
    (30.0, 31.0, [15.0]),  # the clocks agree (a second of writes apart): the wall's share
    (-600.0, 30.0, []),  # set back ten minutes: its span says nothing, no sample
    (3600.0, None, [1800.0]),  # nothing to check the wall clock against: as before
])
def test_a_steps_cost_is_its_length_on_the_workers_clock_when_the_wall_clock_moved(
        db_session, wall, ran_for, recorded):
    """A step's cost, and every ETA of its kind after it, must not take in a jump of the
    wall clock: the share of its span the step had alone (here half: the thumbnails ran
    beside it all along) is applied to its length on the worker's monotonic clock."""
    from datetime import timedelta

    from webapp.models import StepCost
    from webapp.services import calibration

    video = make_video(db_session, duration=60.0, width=1280, height=720)
    costs = calibration.step_costs(video, "base", translate=False)
    task = progress.new_task(video, "run_sync", DEFAULT_WEIGHTS, {}, ["extract_audio",
                             "transcribe"], costs=costs, expected={})
    db_session.add(task)
    db_session.commit()
    attempts = {name: progress.start_subtask(db_session, task.id, name)
                for name in ("transcode", "thumbnails")}
    for step in db_session.scalars(select(SubTask).where(SubTask.task_id == task.id,
                                                          SubTask.status == "running")):
        step.started_at = utcnow() - timedelta(seconds=wall)
    db_session.commit()
    assert progress.complete_subtask(db_session, task.id, "transcode", attempts["transcode"],
                                     ran_for=ran_for)
    found = db_session.scalars(select(StepCost.seconds).where(StepCost.key == "transcode"))
    assert list(found) == pytest.approx(recorded, rel=0.01)


@pytest.mark.parametrize(("runs", "units", "expected"), [
    ([(10, 12.0), (40, 24.0)], 100, 48.0),  # 8 s fixed (model load) + 0.4 s a unit
    ([(10, 5.0), (10, 7.0)], 30, 18.0),  # sizes alike: proportional, 0.6 s a unit
    ([(10, 1.0), (40, 24.0)], 20, 10.0),  # a negative fixed part: proportional instead
    ([(10, 9.0), (40, 3.0)], 20, 6.0),  # longer took less: no trend, the mean
    ([], 10, 0.0),
])
def test_a_kinds_cost_is_a_fixed_part_and_a_part_per_unit(runs, units, expected):
    from webapp.services import calibration

    assert calibration.fit(runs, units) == pytest.approx(expected, rel=0.01)


def test_a_watch_says_nothing_of_its_attempt_completing_under_it(settings, db_session, caplog):
    """A worker on another host has the web app complete its attempt while the attempt's
    watch still ticks: a tick in between logged "attempt 1 is no longer wanted; stopping
    it" just before "completed on vm (attempt 1 ...)". Only an unwanted attempt is stopped."""
    task = make_task(db_session, make_video(db_session))
    attempt = progress.start_subtask(db_session, task.id, "transcode")
    watch = AttemptWatch(session_factory(settings.database_url), task.id, "transcode", attempt,
                         0.05)
    with caplog.at_level(logging.INFO, logger="jobs.attempt"), watch:
        assert progress.complete_subtask(db_session, task.id, "transcode", attempt)
        time.sleep(0.3)  # several ticks
    assert not watch.stop.is_set()
    assert "no longer wanted" not in caplog.text

    other = progress.start_subtask(db_session, task.id, "thumbnails")
    watch = AttemptWatch(session_factory(settings.database_url), task.id, "thumbnails", other,
                         0.05)
    with caplog.at_level(logging.INFO, logger="jobs.attempt"), watch:
        assert progress.cancel_task(db_session, task.id, "cancelled by request")
        db_session.commit()
        assert watch.stop.wait(60)  # a cancelled attempt is still stopped, and says so
    assert "thumbnails of task" in caplog.text and "no longer wanted" in caplog.text
