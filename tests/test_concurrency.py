"""Concurrency: a minute of random triggers, forced triggers and cancels against a real
gunicorn web process and two real RQ workers, then the task lifecycle's invariants.

The load ends with a forced reprocess of every video, cancelled while one of its steps
runs (so that the end state always holds killed attempts). Issue 9's invariants, checked
on what really happened: at most one active task per video
(sampled every 0.5 s during the run), 409 only where it means "a task is active", every
active task ends once the load stops, every published output belongs to a completed step
and is complete and downloadable byte for byte, disk use is only the published sets, and
no process of the web server or the workers is left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from tests import mediagen
from tests.cleanup import kill_sessions, purge_queue, wait_sessions_gone
from tests.conftest import start_worker, stop_worker
from tests.helpers import free_port, http_request, http_upload, wait_for
from webapp.config import PROJECT_ROOT, STEPS, Settings
from webapp.db import dispose, session_factory
from webapp.models import ACTIVE_STATUSES, ProcessingTask, Publication, SubTask
from webapp.services.storage import STEP_OUTPUTS, Storage

LOAD_SECONDS = 60  # the random load
THREADS = 8
VIDEOS = 3
SAMPLE_EVERY = 0.5  # seconds between two reads of the active tasks
# Once the load stops, every active task must end within this. Tasks whose jobs vanished
# are enqueued again by a reconciler once 30 s old (jobs/reconciler.py, GRACE).
DRAIN_SECONDS = 90
FINAL_SECONDS = 90  # a last run_sync of every video completes within this
CLEAN_SECONDS = 20  # left-over folders are gone / processes have exited within this
START_SECONDS = 30  # a step of a new task starts within this, once the load has stopped
# The deadlines above plus start-up (web, workers, uploads) and teardown, with a margin.
TIMEOUT = (LOAD_SECONDS + VIDEOS * START_SECONDS + DRAIN_SECONDS + FINAL_SECONDS
           + 3 * CLEAN_SECONDS + 120)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(TIMEOUT)]

# (endpoint, force): plain triggers most often, so that tasks also get to run.
ACTIONS = ((("run_sync", False),) * 3 + (("reprocess", False),) * 2
           + (("run_sync", True), ("reprocess", True)) + (("cancel", False),) * 2)
PAUSES = (0.05, 0.2, 0.5, 1.0, 2.0, 3.0)  # between two requests of a thread, seconds
NON_EMPTY = {"audio.wav", "preview.mp4", "poster.jpg", "storyboard.jpg"}
# How long a write may wait for SQLite's lock between taking its timestamp and committing.
STAMP_SLACK = timedelta(seconds=12)


# -- HTTP --------------------------------------------------------------------------------

@contextmanager
def web_server(tmp_path: Path, port: int | None = None,
               **env: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """The web process as `make run` starts it (gunicorn with the project's config), in a
    session of its own, with `env` added to its environment, on `port` (default: a free
    one); stopped (SIGTERM, then SIGKILL) on exit."""
    port = port or free_port()
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "HOST": "127.0.0.1", "PORT": str(port), **env})
    try:
        host = env.get("HOST", "127.0.0.1")  # a loopback address: tests listen on no other
        wait_for(lambda: proc.poll() is not None or _healthy(port, host), timeout=60,
                 interval=0.2, what="gunicorn answering /healthz")
        assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


def _healthy(port: int, host: str = "127.0.0.1") -> bool:
    # With a Host it answers to: 127.0.0.2 is not one of its names unless allowed.
    try:
        return http_request(port, "GET", "/healthz", timeout=5, host=host,
                            headers={"Host": f"localhost:{port}"})[0] == 200
    except OSError:
        return False


# -- the load ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    action: str  # run_sync, reprocess or cancel
    video: str
    force: bool
    sent: float  # time.monotonic() before sending
    answered: float  # time.monotonic() once answered
    sent_wall: datetime
    answered_wall: datetime
    status: int  # 0: no answer (the error is in body)
    body: dict


def send(port: int, action: str, video: str, force: bool) -> Call:
    path = f"/api/v1/videos/{video}/{action}" + ("?force=true" if force else "")
    sent, sent_wall = time.monotonic(), datetime.now(UTC)
    try:
        status, raw = http_request(port, "POST", path)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"raw": raw[:300].decode(errors="replace")}
    except OSError as exc:
        status, body = 0, {"error": repr(exc)}
    return Call(action, video, force, sent, time.monotonic(), sent_wall, datetime.now(UTC),
                status, body)


class Load:
    """THREADS threads sending random actions on random videos until stopped."""

    def __init__(self, port: int, videos: list[str], seed: int) -> None:
        self.port, self.videos = port, videos
        self.calls: list[Call] = []
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(random.Random(seed + i),))
                         for i in range(THREADS)]

    def _run(self, rng: random.Random) -> None:
        while not self.stop.is_set():
            action, force = rng.choice(ACTIONS)
            self.calls.append(send(self.port, action, rng.choice(self.videos), force))
            self.stop.wait(rng.choice(PAUSES))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(90)


@dataclass(frozen=True)
class Sample:
    started: float  # time.monotonic() before the query
    ended: float  # and after it
    active: dict[str, list[str]]  # video id -> its active task ids


class Sampler:
    """Reads the active tasks from the database every SAMPLE_EVERY seconds, in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.sessions = session_factory(settings.database_url)
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY):
            started = time.monotonic()
            try:
                with self.sessions() as session:
                    rows = session.execute(select(ProcessingTask.video_id, ProcessingTask.id)
                                           .where(ProcessingTask.status.in_(ACTIVE_STATUSES)))
                    active: dict[str, list[str]] = {}
                    for video_id, task_id in rows:
                        active.setdefault(video_id, []).append(task_id)
            except Exception as exc:  # a read that fails is a finding too
                self.errors.append(repr(exc))
                continue
            self.samples.append(Sample(started, time.monotonic(), active))

    def certainly_active(self, video: str, start: float, end: float) -> set[str]:
        """Tasks of the video that were active during all of [start, end]: seen active in a
        sample taken before `start` and in one taken after `end` (an ended task never
        becomes active again)."""
        before = {t for s in self.samples if s.ended <= start for t in s.active.get(video, [])}
        after = {t for s in self.samples if s.started >= end for t in s.active.get(video, [])}
        return before & after

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()
        self._thread.join(30)


# -- the checks --------------------------------------------------------------------------

@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        self.problems.append(what)


def check_answers(calls: list[Call], sampler: Sampler, tasks: dict[str, ProcessingTask],
                  found: Findings) -> None:
    """Every answer is 202 (trigger), 200 (cancel) or 409, and 409 only when it can be."""
    for call in calls:
        what = f"{call.action}{' forced' if call.force else ''} of {call.video}"
        expected = {200, 409} if call.action == "cancel" else {202, 409}
        if call.status not in expected or (call.force and call.status == 409):
            found.add(f"{what} answered {call.status}: {call.body}")
            continue
        plain_202 = call.action != "cancel" and call.status == 202 and not call.force
        cancel_409 = call.action == "cancel" and call.status == 409
        if plain_202 or cancel_409:  # then no other task was active all along
            own = {call.body.get("task_id")}
            busy = sampler.certainly_active(call.video, call.sent, call.answered) - own
            if busy:
                found.add(f"{what} answered {call.status} while {busy} was active: {call.body}")
        if call.status == 409 and call.action != "cancel":
            check_conflict(call, what, tasks, found)
        elif call.status in (200, 202):
            check_accepted(call, what, tasks, found)


def check_accepted(call: Call, what: str, tasks: dict[str, ProcessingTask],
                   found: Findings) -> None:
    """A 202 names the new task of this video (queued; completed when run_sync has
    nothing to do); a cancel's 200 shows the video's task it cancelled."""
    task = tasks.get(call.body.get("task_id") or "")
    expected = {"cancel": {"cancelled"}, "reprocess": {"queued"}}.get(
        call.action, {"queued", "completed"})
    if (task is None or task.video_id != call.video
            or call.body.get("status") not in expected):
        found.add(f"{what} answered {call.status} with {call.body}")


def check_conflict(call: Call, what: str, tasks: dict[str, ProcessingTask],
                   found: Findings) -> None:
    """A trigger's 409 names the video's task that was active while it was answered."""
    task = tasks.get(call.body.get("task_id") or "")
    if task is None or task.video_id != call.video:
        found.add(f"{what}: 409 names no task of this video: {call.body}")
        return
    # Timestamps are taken before their transaction commits, which may wait for a lock.
    if task.created_at > call.answered_wall + STAMP_SLACK or (
            task.finished_at is not None and task.finished_at < call.sent_wall - STAMP_SLACK):
        found.add(f"{what}: 409 names task {task.id} that was not active then "
                  f"({task.created_at} - {task.finished_at}, asked {call.sent_wall})")


def check_samples(sampler: Sampler, found: Findings) -> None:
    for sample in sampler.samples:
        for video, ids in sample.active.items():
            if len(ids) > 1:
                found.add(f"{len(ids)} active tasks of video {video} at once: {ids}")
    if sampler.errors:
        found.add(f"{len(sampler.errors)} reads of the active tasks failed: {sampler.errors[:3]}")


def check_publications(session, storage: Storage, videos: list[str], found: Findings) -> None:
    """Every published output belongs to a completed step of a task of its video, with
    the same attempt, and its folder holds every output of the step."""
    pubs = session.scalars(select(Publication)).all()
    for pub in pubs:
        where = f"published {pub.step} of {pub.video_id} ({pub.folder})"
        task = session.get(ProcessingTask, pub.task_id)
        sub = session.scalar(select(SubTask).where(SubTask.task_id == pub.task_id,
                                                   SubTask.name == pub.step))
        if task is None or task.video_id != pub.video_id or sub is None:
            found.add(f"{where}: not a step of a task of this video")
            continue
        if (sub.status, sub.attempt) != ("completed", pub.attempt) or sub.reused:
            found.add(f"{where}: its step is {sub.status}, attempt {sub.attempt} "
                      f"(reused: {sub.reused}), not completed attempt {pub.attempt}")
        if pub.folder != storage.attempt_folder(pub.task_id, pub.step, pub.attempt):
            found.add(f"{where}: not the folder of its attempt")
        folder = storage.folder_path(pub.video_id, pub.folder)
        for name in STEP_OUTPUTS[pub.step]:
            path = folder / name
            if not path.is_file() or (name in NON_EMPTY and path.stat().st_size == 0):
                found.add(f"{where}: {name} missing or empty")
    published = {(p.video_id, p.step) for p in pubs}
    missing = {(v, s) for v in videos for s in STEPS} - published
    if missing:
        found.add(f"not published after the final runs: {sorted(missing)}")


def check_downloads(port: int, session, storage: Storage, videos: list[str],
                    found: Findings) -> int:
    """Every listed artifact is the published file: 200 and the same bytes as on disk.
    Returns how many were downloaded."""
    pubs = {(p.video_id, p.step): p for p in session.scalars(select(Publication))}
    count = 0
    for video in videos:
        status, raw = http_request(port, "GET", f"/api/v1/videos/{video}/artifacts")
        listed = json.loads(raw) if status == 200 else []
        expected = {n for s in STEPS for n in STEP_OUTPUTS[s] if (video, s) in pubs}
        if status != 200 or {a["name"] for a in listed} != expected:
            found.add(f"artifacts of {video}: {status} {[a['name'] for a in listed]}")
        for item in listed:
            pub = pubs.get((video, item["step"]))
            if pub is None or item["task_id"] != pub.task_id:
                found.add(f"{video}/{item['name']}: listed from task {item['task_id']}, "
                          f"published: {pub and pub.task_id}")
                continue
            status, data = http_request(port, "GET", item["url"])
            disk = (storage.folder_path(video, pub.folder) / item["name"]).read_bytes()
            count += 1
            if status != 200 or data != disk:
                found.add(f"{video}/{item['name']}: {status}, {len(data)} bytes downloaded, "
                          f"{len(disk)} on disk")
    return count


def leftover_folders(settings: Settings, videos: list[str]) -> dict[str, list[str]]:
    """Output folders on disk that are not published, by video."""
    storage = Storage(settings.media_root)
    with session_factory(settings.database_url)() as session:
        published = {(p.video_id, p.folder) for p in session.scalars(select(Publication))}
    left = {v: [f for f in storage.output_folders(v) if (v, f) not in published]
            for v in videos}
    return {v: folders for v, folders in left.items() if folders}


def check_disk(settings: Settings, videos: list[str], when: str, found: Findings) -> None:
    """Once no task is active, a video's runs/ holds its published folders only."""
    try:
        wait_for(lambda: not leftover_folders(settings, videos), timeout=CLEAN_SECONDS,
                 interval=0.5, what="only published folders on disk")
    except AssertionError:
        left = leftover_folders(settings, videos)
        found.add(f"{when}: folders that are not published are left on disk: {left}; "
                  f"their steps: {steps_of_folders(settings, left)}")


def steps_of_folders(settings: Settings, left: dict[str, list[str]]) -> list[str]:
    """What the database says about the attempts whose folders these are."""
    found = []
    with session_factory(settings.database_url)() as session:
        for folder in (f for folders in left.values() for f in folders):
            _, task_id, step_attempt = folder.split("/")
            step = step_attempt.split(".")[0]
            task = session.get(ProcessingTask, task_id)
            sub = session.scalar(select(SubTask).where(SubTask.task_id == task_id,
                                                       SubTask.name == step))
            found.append(f"{folder}: task {task and task.status}, step "
                         f"{sub and (sub.status, sub.attempt, sub.error)}")
    return found


# -- the run -----------------------------------------------------------------------------

def active_tasks(settings: Settings) -> list[str]:
    with session_factory(settings.database_url)() as session:
        tasks = session.scalars(select(ProcessingTask)
                                .where(ProcessingTask.status.in_(ACTIVE_STATUSES))).all()
        return [f"{t.id} of {t.video_id} {t.status}: "
                + ", ".join(f"{s.name} {s.status}#{s.attempt}" for s in t.subtasks)
                for t in tasks]


def wait_until_idle(settings: Settings, timeout: float, when: str, found: Findings) -> bool:
    """Every active task ends within `timeout`; False (and a finding) if not."""
    try:
        wait_for(lambda: not active_tasks(settings), timeout=timeout, interval=0.5,
                 what="no active task")
        return True
    except AssertionError:
        found.add(f"{when}: tasks still active after {timeout} s: {active_tasks(settings)}")
        return False


def final_runs(port: int, settings: Settings, videos: list[str], found: Findings) -> None:
    """A plain run_sync of every video completes: the system still works after the load,
    and afterwards every step of every video has a published output."""
    tasks = {}
    for video in videos:
        status, raw = http_request(port, "POST", f"/api/v1/videos/{video}/run_sync")
        if status != 202:
            found.add(f"final run_sync of {video}: {status} {raw[:300]!r}")
            continue
        tasks[video] = json.loads(raw)["task_id"]
    if not wait_until_idle(settings, FINAL_SECONDS, "final runs", found):
        return
    with session_factory(settings.database_url)() as session:
        for video, task_id in tasks.items():
            task = session.get(ProcessingTask, task_id)
            if task.status != "completed":
                found.add(f"final run of {video}: {task.status} ({task.error})")


def task_summary(settings: Settings) -> tuple[dict[str, ProcessingTask], dict[str, int]]:
    """Every task by id; how many ended in each status, and how many steps a worker ran
    to completion (not reused)."""
    with session_factory(settings.database_url)() as session:
        tasks = {t.id: t for t in session.scalars(select(ProcessingTask))}
        steps_run = len(session.scalars(select(SubTask.id).where(
            SubTask.status == "completed", SubTask.reused.is_(False))).all())
        session.expunge_all()
    counts: dict[str, int] = {"steps run": steps_run}
    for task in tasks.values():
        counts[task.status] = counts.get(task.status, 0) + 1
    return tasks, counts


def check_failed_tasks(tasks: dict[str, ProcessingTask], found: Findings) -> None:
    """Good media and a healthy database: nothing in this run has a reason to fail."""
    failed = [f"{t.id}: {t.error}" for t in tasks.values() if t.status == "failed"]
    if failed:
        found.add(f"{len(failed)} task(s) failed: {failed[:5]}")


def report(calls: list[Call], counts: dict[str, int], downloads: int, backend: str) -> None:
    answers: dict[str, int] = {}
    for call in calls:
        key = f"{call.action}{'+force' if call.force else ''} {call.status}"
        answers[key] = answers.get(key, 0) + 1
    print("CONCURRENCY", json.dumps({"database": backend, "requests": len(calls),
                                     "answers": dict(sorted(answers.items())),
                                     "tasks": counts, "downloads": downloads}))


@pytest.fixture
def media(tmp_path) -> list[bytes]:
    """Three short videos with sound (every step runs), of different lengths."""
    return [mediagen.make_video(tmp_path / f"clip{i}.mp4", duration=2.0 + i).read_bytes()
            for i in range(VIDEOS)]


def test_random_triggers_forces_and_cancels_keep_every_invariant(settings, media, tmp_path,
                                                                  redis_conn):
    found = Findings()
    sessions: list[int] = []
    videos: list[str] = []
    try:
        with ExitStack() as stack:
            port, web = stack.enter_context(web_server(tmp_path))
            sessions.append(web.pid)
            for _ in range(2):
                worker = start_worker()
                sessions.append(worker.pid)
                stack.callback(stop_worker, worker)
            videos = [http_upload(port, data, f"clip{i}.mp4") for i, data in enumerate(media)]
            run_load(port, settings, videos, found)
        # The web process, the workers, their reconcilers, horses and tools all exit.
        left = wait_sessions_gone(sessions, CLEAN_SECONDS)
        if left:
            found.add(f"processes left after teardown: {left}")
    finally:
        kill_sessions(sessions)
        task_ids: list[str] = []
        with suppress(SQLAlchemyError):  # the queue's keys go even if the database fails
            task_ids = list(task_summary(settings)[0])
        purge_queue(redis_conn, settings.queue_name, task_ids)
        dispose(settings.database_url)
    assert not found.problems, "\n".join(found.problems)


def running_step(settings: Settings, task_id: str) -> str | None:
    with session_factory(settings.database_url)() as session:
        return session.scalar(select(SubTask.name).where(SubTask.task_id == task_id,
                                                         SubTask.status == "running"))


def cancel_while_running(port: int, settings: Settings, video: str,
                         found: Findings) -> list[Call]:
    """End the load on a video with what a random end may or may not bring: a forced
    reprocess, cancelled while one of its steps runs (its work-horse is killed)."""
    forced = send(port, "reprocess", video, True)
    task_id = forced.body.get("task_id")
    if forced.status != 202 or not task_id:
        return [forced]  # check_answers reports it
    try:
        wait_for(lambda: running_step(settings, task_id), timeout=START_SECONDS,
                 interval=0.05, what=f"a step of task {task_id} running")
    except AssertionError as exc:
        found.add(str(exc))
        return [forced]
    return [forced, send(port, "cancel", video, False)]


def run_load(port: int, settings: Settings, videos: list[str], found: Findings) -> None:
    """The load with the sampler, then every check that needs the processes alive."""
    seed = random.randrange(1 << 30)
    print(f"random seed {seed}")
    with Sampler(settings) as sampler:
        with Load(port, videos, seed) as load:
            time.sleep(LOAD_SECONDS)  # the load runs in its threads meanwhile
        for video in videos:
            load.calls.extend(cancel_while_running(port, settings, video, found))
        idle = wait_until_idle(settings, DRAIN_SECONDS, "after the load", found)
    tasks, counts = task_summary(settings)
    check_samples(sampler, found)
    check_answers(load.calls, sampler, tasks, found)
    check_failed_tasks(tasks, found)
    if idle:
        check_disk(settings, videos, "after the load", found)
        final_runs(port, settings, videos, found)
        check_disk(settings, videos, "after the final runs", found)
    storage = Storage(settings.media_root)
    with session_factory(settings.database_url)() as session:
        check_publications(session, storage, videos, found)
        downloads = check_downloads(port, session, storage, videos, found)
    report(load.calls, counts, downloads, settings.database_url.split(":")[0])
