"""Workers: /healthz and the UI say whether any serves the queue, and the reconciler beside
each never outlives it; a stopped worker stops its step and hands it back."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from rq.job import Job

from tests import mediagen, procs
from tests.conftest import PROJECT_ROOT, start_worker, stop_worker
from tests.helpers import free_port, progress_of, subtasks, upload_ok, wait_for
from webapp.services import queue
from webapp.services.workers import live_workers

pytestmark = pytest.mark.e2e
HX = {"HX-Request": "true"}
NO_WORKER = "No worker is running: queued tasks will wait until one starts (make worker)."


@pytest.fixture
def workers():
    """Start real worker processes (env overrides as keywords); all stopped at the end."""
    started: list[subprocess.Popen] = []

    def start(*args: str, module: str = "jobs.worker", **env: str) -> subprocess.Popen:
        started.append(start_worker(env, args, module))
        return started[-1]

    yield start
    for proc in started:
        stop_worker(proc)


def health(client) -> tuple[int, dict]:
    resp = client.get("/healthz")
    return resp.status_code, resp.get_json()


def banner(html: str) -> str | None:
    """The text of the no-worker banner, None when the page has none."""
    found = BeautifulSoup(html, "html.parser").select_one("#worker-banner")
    return " ".join(found.get_text().split()) if found else None


def panel_poll(client, vid: str, etag: str | None = None):
    headers = {**HX, **({"If-None-Match": etag} if etag else {})}
    return client.get(f"/videos/{vid}/panel?poll=1", headers=headers)


def test_healthz_counts_the_workers_of_its_queue_and_is_200_without_any(client, workers):
    assert health(client) == (200, {"status": "ok", "workers": 0,
                                    "checks": {"database": "ok", "redis": "ok", "media": "ok"}})
    mine = workers()
    workers(QUEUE_NAME="another-queue")  # serves another queue: not counted
    wait_for(lambda: health(client)[1]["workers"] == 1, timeout=30,
             what="/healthz counting the worker")
    code, body = health(client)
    assert (code, body["workers"]) == (200, 1), body
    # RQ registers a worker before it installs its signal handlers: stopped before it
    # listens, it dies without unregistering (and stays counted until its key expires).
    wait_for(lambda: "Listening on" in Path(mine.log_path).read_text(), timeout=30,
             what="the worker listening")
    stop_worker(mine)  # a worker that stops normally unregisters at once ...
    # ... and the web process counts again at most 2 s later (its count is cached)
    wait_for(lambda: health(client)[1]["workers"] == 0, timeout=5, what="the count drops")
    assert health(client) == (200, {"status": "ok", "workers": 0,
                                    "checks": {"database": "ok", "redis": "ok", "media": "ok"}})


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("workers")
    return {"long": mediagen.make_video(root / "long.mp4", duration=12.0, size="1280x720"),
            "short": mediagen.make_video(root / "short.mp4", duration=2.0)}


def test_pages_say_when_no_worker_serves_an_active_task(client, clips, workers):
    long_vid = upload_ok(client, clips["long"])["id"]
    vid = upload_ok(client, clips["short"])["id"]
    assert banner(client.get("/").get_data(as_text=True)) is None  # nothing waits yet
    for v in (long_vid, vid):
        assert client.post(f"/api/v1/videos/{v}/run_sync").status_code == 202

    assert banner(client.get(f"/videos/{vid}").get_data(as_text=True)) == NO_WORKER
    library = BeautifulSoup(client.get("/").get_data(as_text=True), "html.parser")
    watch = library.select_one("#worker-status[role=status] > #worker-banner")
    assert banner(str(library)) == NO_WORKER and watch is not None  # said in a live region
    assert (watch["hx-get"], watch["hx-trigger"], watch["hx-swap"]) == (
        "/worker-banner?shown=1", "every 5s", "outerHTML")  # and asked again
    assert client.get("/worker-banner?shown=1", headers=HX).status_code == 204  # unchanged
    first = panel_poll(client, vid)
    assert first.status_code == 200 and banner(first.get_data(as_text=True)) == NO_WORKER
    assert panel_poll(client, vid, first.headers["ETag"]).status_code == 304

    # A worker starts, busy with the long video first: `vid` is still queued, its task row
    # unchanged, yet its panel must drop the banner (a 304 would have kept it).
    workers()
    fresh = wait_for(lambda: (r := panel_poll(client, vid, first.headers["ETag"])).status_code
                     == 200 and r, timeout=30, what="the panel changing once a worker lives")
    page = BeautifulSoup(fresh.get_data(as_text=True), "html.parser")
    status = page.select_one("#progress-panel")["data-status"]
    assert status == "queued", (
        f"the panel changed only once the task was {status}: 304s kept a stale banner while "
        "it was queued (or the long video is too short to keep it queued)")
    assert banner(str(page)) is None
    # The library's watch hears it too: the empty watch in the banner's place, then 204s.
    gone = BeautifulSoup(client.get("/worker-banner?shown=1", headers=HX).get_data(
        as_text=True), "html.parser").select_one("#worker-watch")
    assert (gone["hx-get"], gone["hx-trigger"]) == ("/worker-banner?shown=0", "every 10s")
    assert client.get("/worker-banner?shown=0", headers=HX).status_code == 204

    wait_for(lambda: client.get(f"/api/v1/videos/{vid}/reprocess").get_json()["status"]
             == "completed", timeout=180, what="both videos processed")
    assert banner(client.get(f"/videos/{vid}").get_data(as_text=True)) is None


def test_a_finished_task_shows_no_banner_without_workers(client, clips, workers):
    vid = upload_ok(client, clips["short"])["id"]
    proc = workers()
    client.post(f"/api/v1/videos/{vid}/run_sync")
    wait_for(lambda: client.get(f"/api/v1/videos/{vid}/reprocess").get_json()["status"]
             == "completed", timeout=120, what="the video processed")
    stop_worker(proc)
    assert health(client)[1]["workers"] == 0
    assert banner(client.get(f"/videos/{vid}").get_data(as_text=True)) is None
    library = BeautifulSoup(client.get("/").get_data(as_text=True), "html.parser")
    assert banner(str(library)) is None
    # Nothing active: the live region is there, empty, and asks nothing.
    assert library.select_one("#worker-status[role=status]").decode_contents() == ""


# -- the reconciler process beside each worker ----------------------------------------------

def reconciler_of(worker: subprocess.Popen) -> int | None:
    return next((pid for pid in procs.children(worker.pid)
                 if "jobs.reconciler" in procs.cmdline(pid)), None)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("when", ["during its start-up", "after its start-up"])
def test_a_worker_killed_leaves_no_reconciler(settings, workers, when):
    worker = workers()
    # Python installs the SIGTERM handler once the reconciler is past its start-up.
    started = (lambda pid: True) if when == "during its start-up" else (
        lambda pid: procs.handles_signal(pid, signal.SIGTERM))
    reconciler = wait_for(lambda: (pid := reconciler_of(worker)) and started(pid) and pid,
                          timeout=30, interval=0.005, what="the worker's reconciler")
    try:
        past_start_up = procs.handles_signal(reconciler, signal.SIGTERM)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        assert past_start_up == (when == "after its start-up"), (
            "the kill did not come when this case says")
        wait_for(lambda: not procs.running(reconciler), timeout=10,
                 what=f"reconciler {reconciler} ending after its worker was killed")
    finally:
        procs.kill(reconciler)


# -- stopping a busy worker (Ctrl-C of `make run`) -------------------------------------------

@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ctrl_c_of_make_run_ends_every_process_with_status_0(settings, tmp_path):
    """honcho said "web.1 stopped (rc=-15)" and the same of each worker on every Ctrl-C, as
    for a crash: the status was the shell's that ran the Procfile's line (killed by the
    SIGTERM honcho sends to its group), not gunicorn's or the worker's, which both end
    cleanly (0). The Procfile's lines exec their program."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "PATH": f"{Path(sys.executable).parent}:"
           f"{os.environ['PATH']}", "SECRET_KEY": "k" * 32, "WEB_WORKERS": "1"}
    log = tmp_path / "honcho.log"
    with log.open("w") as out:
        honcho = subprocess.Popen([str(Path(sys.executable).parent / "honcho"), "start", "-f",
                                   "Procfile", "-c", "web=1,worker=1"], cwd=PROJECT_ROOT,
                                  stdout=out, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    try:
        wait_for(lambda: "Booting worker" in (text := log.read_text())
                 and "Listening on" in text, timeout=60, what="web and worker up")
        os.killpg(honcho.pid, signal.SIGINT)  # Ctrl-C: the terminal's whole foreground group
        honcho.wait(30)
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait(10)
        for session in re.findall(r"started \(pid=(\d+)\)", log.read_text()):
            for pid in procs.in_session(int(session)):  # honcho gives each its own session
                procs.kill(pid)
    said = log.read_text()
    assert "web.1 stopped (rc=0)" in said and "worker.1 stopped (rc=0)" in said, said[-3000:]
    # The worker's start and stop are one line each, vidpipe's; RQ wrote nine at INFO.
    assert f"INFO jobs.worker: Listening on queue {settings.queue_name} as worker " in said
    assert "INFO jobs.worker: stopping (SIGTERM)" in said, said[-3000:]
    assert "INFO rq." not in said, said[-3000:]
    assert "SIGKILL" not in said, said[-3000:]  # (honcho's own status is 130: Ctrl-C's)


def test_a_stopped_worker_stops_its_step_at_once_and_hands_it_back(client, settings,
                                                                   redis_conn, workers,
                                                                   tmp_path):
    """Ctrl-C of `make run`: honcho sends SIGTERM to each process's group, and SIGKILL 5 s
    later. RQ's warm shutdown waited for the step, so the SIGKILL came, killed the worker but
    not its horse (a group of its own): the step's ffmpeg went on with nobody to stop it,
    honcho logged "sending SIGKILL" ten times a second until it ended, and the step stayed
    "running". Now the worker stops its step at once and the step waits for the next worker,
    without using one of its tries."""
    clip = mediagen.make_video(tmp_path / "long.mp4", duration=60.0, size="1280x720")
    vid = upload_ok(client, clip)["id"]
    first = workers()
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    wait_for(lambda: (s := subtasks(progress_of(client, vid))["transcode"])["status"]
             == "running" and s["progress"] > 0, timeout=60, what="the preview encoding")

    os.killpg(first.pid, signal.SIGTERM)  # what honcho sends to the worker's process group
    assert first.wait(5) == 0, "the worker was still working after honcho's 5 s"
    wait_for(lambda: not procs.in_session(first.pid), timeout=2,
             what="no process of the worker left (its horse, ffmpeg, the reconciler)")
    log = Path(first.log_path).read_text()
    assert "stopping the running step (SIGTERM)" in log, log[-2000:]
    assert "failed" not in log and "Traceback" not in log, log[-2000:]

    state = progress_of(client, vid)
    transcode = subtasks(state)["transcode"]
    assert (transcode["status"], transcode["attempt"]) == ("pending", 1), transcode
    assert transcode["error"] == ("the worker was stopped (SIGTERM) while this step ran; it "
                                  "runs again on the next worker")
    # Nothing works for the task: it waits in the queue and says so (it said "running").
    assert state["status"] == "queued", state
    waiting_for_a_worker(client, vid, task_id)
    job = Job.fetch(queue.job_id(task_id, "transcode"), connection=redis_conn)
    assert job.get_status() == "queued"
    assert job.retries_left == settings.step_retries  # the stop was not one of its tries
    attempt_folder = settings.media_root / "videos" / vid / "runs" / task_id / "transcode.1"
    assert not attempt_folder.exists()

    second = workers()  # the next worker takes the step up again, and the task runs again
    again = wait_for(lambda: (s := progress_of(client, vid)) and any(
        sub["status"] == "running" for sub in s["subtasks"]) and s,
        timeout=60, what="a step running again on the next worker")
    assert again["status"] == "running", again
    assert again["started_at"] == state["started_at"]  # the run started once
    wait_for(lambda: progress_of(client, vid)["status"] == "completed", timeout=240,
             what="the task completing on the next worker")
    # Its log says each step's start and end once, in vidpipe's words; RQ's four lines a step
    # ("Job OK", "result is kept for 86400 seconds", ...) are for LOG_LEVEL=DEBUG.
    # (The line is written just after the commit that completes the task: waited for, as
    # on a loaded machine the test read the log first.)
    said = wait_for(lambda: (text := Path(second.log_path).read_text()) and (
        f"INFO jobs.runner: transcode of task {task_id} completed (attempt " in text) and text,
        timeout=60, what="the worker logging the transcode's end")
    assert f"INFO jobs.runner: transcode of task {task_id} started (attempt " in said, said
    assert "Job OK" not in said and "INFO rq." not in said, said[-3000:]
    transcode = subtasks(progress_of(client, vid))["transcode"]
    assert (transcode["status"], transcode["attempt"], transcode["error"]) == (
        "completed", 2, None), transcode


def test_a_worker_stopped_before_its_step_knew_its_attempt_hands_the_step_back(
        client, settings, redis_conn, workers, tmp_path):
    """A stop landing after the step was committed running but before its horse saved the
    attempt number into the job's meta (or when that save met a Redis error): the stop's
    fenced write, given no attempt, changed nothing, the step stayed running, and the job
    went back to the queue unable to take it over. The next worker's attempt was refused
    ("not run"), and the reconciler then failed the step ("its job finished without
    recording a result"): a stopped worker failed the run. The worker here never saves the
    attempt, and holds the step there (tests/forgetful_worker.py)."""
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=2.0)
    vid = upload_ok(client, clip)["id"]
    first = workers(module="tests.forgetful_worker")
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    log = Path(first.log_path)
    held = wait_for(lambda: re.search(r"holding (\w+) attempt (\d+)", log.read_text()),
                    timeout=60, what="the first worker holding a step")
    step = held.group(1)
    assert subtasks(progress_of(client, vid))[step]["status"] == "running"

    os.killpg(first.pid, signal.SIGTERM)  # what honcho sends to the worker's process group
    try:
        assert first.wait(5) == 0, log.read_text()[-3000:]
    except subprocess.TimeoutExpired:
        pytest.fail("the worker was still there 5 s after SIGTERM:\n" + log.read_text()[-3000:])
    assert "stopping the running step (SIGTERM)" in log.read_text(), log.read_text()[-3000:]
    job = Job.fetch(queue.job_id(task_id, step), connection=redis_conn)
    assert job.get_status() == "queued"
    assert job.retries_left == settings.step_retries  # the stop was not one of its tries

    workers(RECONCILE_INTERVAL="1")  # a reconciler quick to fail a step nobody runs
    ended = wait_for(lambda: (s := progress_of(client, vid))["status"] not in (
        "queued", "running") and s, timeout=180, what="the run ending on the next worker")
    held_step = subtasks(ended)[step]
    assert (ended["status"], held_step["status"], held_step["attempt"],
            held_step["error"]) == ("completed", "completed", 2, None), ended


def test_a_run_whose_workers_all_stop_between_two_steps_waits_for_a_worker(client, settings,
                                                                           workers):
    """Every worker stopped while idle, after one step of a run ended and before the next
    began (a worker that runs one job and exits: nothing to interrupt, no hook runs). The
    task said `running`, its page an ETA counting down ("about 1 s left"), for good, while
    nobody worked on it. It waits for a worker and says so, and the next worker finishes it.
    """
    vid = upload_ok(client, mediagen.make_video(settings.media_root.parent / "short.mp4",
                                                duration=2.0))["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    one_job = subprocess.run(  # the real worker (its hooks too) stopping after one job
        [sys.executable, "-c", "from jobs.worker import build_worker; "
         "from webapp.config import Settings; "
         "build_worker(Settings.from_env()).work(max_jobs=1)"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert one_job.returncode == 0, one_job.stderr[-3000:]

    state = progress_of(client, vid)
    steps = {name: s["status"] for name, s in subtasks(state).items()}
    assert sorted(steps.values()) == ["completed", "pending", "pending", "pending"], steps
    assert state["status"] == "queued", (
        f"nobody works on the task, yet it says {state['status']}: {steps}")
    done = state["progress"]
    assert done > 0
    page = BeautifulSoup(panel_poll(client, vid).get_data(as_text=True), "html.parser")
    assert page.select_one("#task-status").get_text() == "queued"
    assert banner(str(page)) == NO_WORKER
    eta = page.select_one("#eta").get_text()
    assert eta == "waiting for a worker" or eta.endswith(" of work once a worker takes it"), eta
    busy = client.post(f"/api/v1/videos/{vid}/reprocess")  # still the video's active run
    assert (busy.status_code, busy.get_json()["task_id"]) == (409, task_id), busy.get_json()

    workers()
    final = wait_for(lambda: (s := progress_of(client, vid))["status"] not in
                     ("queued", "running") and s, timeout=120, what="the run ending")
    assert (final["task_id"], final["status"], final["progress"]) == (task_id, "completed",
                                                                      100.0)
    assert final["started_at"] == state["started_at"]  # one run, started once


def waiting_for_a_worker(client, vid: str, task_id: str) -> None:
    """What a person and a client see of a task handed back by its stopped worker: queued,
    waiting for a worker, no step said to run on one; still active (a trigger is 409)."""
    page = BeautifulSoup(panel_poll(client, vid).get_data(as_text=True), "html.parser")
    assert page.select_one("#task-status").get_text() == "queued"
    assert banner(str(page)) == NO_WORKER
    eta = page.select_one("#eta").get_text()
    assert eta == "waiting for a worker" or eta.endswith(" of work once a worker takes it"), eta
    assert page.select_one("#status-transcode").get_text() == "pending"
    assert page.select_one("#worker-transcode") is None, "a waiting step said it ran on a worker"
    assert page.select_one("#btn-cancel").get("disabled") is None
    assert page.select_one("#btn-force").get("disabled") is None
    row = BeautifulSoup(client.get(f"/videos/{vid}/row", headers=HX).get_data(as_text=True),
                        "html.parser")
    assert row.select_one(".badge").get_text() == "queued"
    busy = client.post(f"/api/v1/videos/{vid}/reprocess")
    assert (busy.status_code, busy.get_json()["task_id"]) == (409, task_id), busy.get_json()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_told_to_stop_ends_at_once(settings, workers):
    """RQ stopped its listening thread after unsubscribing it; when the thread read the reply
    first, it waited 60 s for a new subscription and the worker with it (2 of 4 idle workers
    took a minute to end on SIGTERM; honcho's SIGKILL comes after 5 s)."""
    for _ in range(6):
        worker = workers()
        log = Path(worker.log_path)
        wait_for(lambda log=log: "Listening on" in log.read_text(), timeout=30,
                 what="the worker listening")
        time.sleep(0.5)  # its listening thread waiting for a command
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            # Within honcho's 5 s before its SIGKILL (the bug held it 60 s): well under a
            # second idle; 3 s was too tight for a loaded CI machine, where the worker's
            # interpreter ends among dozens of other processes.
            worker.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker was still there 5 s after SIGTERM")
        assert not procs.in_session(worker.pid)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_stopped_as_it_asks_for_a_job_ends_at_once_and_unregisters(settings, workers):
    """SIGTERM between the worker's BLMOVE (its wait for the next job) and the read of its
    answer: RQ's handler raised StopRequested there and left the BLMOVE pending on the
    connection, and the worker's goodbye (its unregistration) went behind it on the same
    connection, to wait the BLMOVE's 405 s. The worker hung until a SIGKILL and stayed
    counted by /healthz ("workers": 1) and the pages for 8 minutes. CI met it once, as a
    worker finished a run; here the gap is held open 2 s (tests/slow_dequeue_worker.py)."""
    worker = workers(module="tests.slow_dequeue_worker")
    log = Path(worker.log_path)
    wait_for(lambda: "BLMOVE sent" in log.read_text(), timeout=30,
             what="the worker asking for a job")
    worker.send_signal(signal.SIGTERM)
    try:
        assert worker.wait(5) == 0, log.read_text()[-3000:]
    except subprocess.TimeoutExpired:
        pytest.fail("the worker was still there 5 s after SIGTERM:\n" + log.read_text()[-3000:])
    connection = queue.connect(settings.redis_url)
    try:
        assert live_workers(connection, settings.queue_name) == 0, "it did not unregister"
    finally:
        connection.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ctrl_c_of_make_worker_ends_it_and_its_reconciler_without_a_traceback(settings, workers):
    """Ctrl-C in the terminal of `make worker` sends SIGINT to its whole process group, the
    worker's reconciler too, which printed a KeyboardInterrupt traceback as it went."""
    worker = workers()
    reconciler = wait_for(lambda: (pid := reconciler_of(worker))
                          and procs.handles_signal(pid, signal.SIGTERM) and pid,
                          timeout=30, interval=0.01, what="the worker's reconciler")
    log = Path(worker.log_path)
    wait_for(lambda: "Listening on" in log.read_text(), timeout=30, what="the worker listening")
    os.killpg(worker.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
    assert worker.wait(10) == 0
    wait_for(lambda: not procs.running(reconciler), timeout=10, what="the reconciler ending")
    assert "Traceback" not in log.read_text() and "KeyboardInterrupt" not in log.read_text(), (
        log.read_text()[-3000:])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("webhooks", [False, True], ids=["alone", "with-its-webhook-sender"])
def test_a_reconciler_signalled_again_as_it_ends_ends_without_a_traceback(settings, tmp_path,
                                                                          webhooks):
    """Ctrl-C of `make worker`: SIGINT reaches the reconciler, then its worker's SIGTERM as
    the worker stops, and the kernel's once the worker is gone. One of those arriving while
    the reconciler was already exiting raised a second SystemExit in logging's atexit flush:
    "Exception ignored in atexit callback" and a traceback in the worker's output (every
    time, with signals sent until it ends, as here)."""
    log = tmp_path / "reconciler.log"
    hooks = {"WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hooks",
             "WEBHOOK_SECRET": "a-webhook-secret-of-32-characters"} if webhooks else {}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jobs.reconciler"], cwd=PROJECT_ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **hooks})
    try:
        wait_for(lambda: procs.handles_signal(proc.pid, signal.SIGTERM), timeout=30,
                 interval=0.01, what="the reconciler past its start-up")
        procs.signal_storm(proc, signal.SIGINT, signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    output = log.read_text()
    assert "Traceback" not in output and "Exception ignored" not in output, output[-3000:]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_signalled_again_as_it_ends_ends_with_0_without_a_traceback(settings, workers):
    """Ctrl-C of `make worker` (SIGINT to the group), then more: a second Ctrl-C, a service
    manager's SIGTERM to the whole group. RQ's handler for a second signal raised SystemExit
    wherever the stopping worker was (its goodbye to Redis, Python's atexit callbacks), and
    one that came after Python had put the default handlers back ended the worker by
    SIGTERM: status -15, every time with signals sent until it ends, as here."""
    worker = workers()
    log = Path(worker.log_path)
    wait_for(lambda: "Listening on" in log.read_text(), timeout=30, what="the worker listening")
    reconciler = wait_for(lambda: (pid := reconciler_of(worker))
                          and procs.handles_signal(pid, signal.SIGTERM) and pid,
                          timeout=30, interval=0.01, what="the worker's reconciler")
    procs.signal_storm(worker, signal.SIGINT, signal.SIGTERM, group=True)
    assert worker.wait(5) == 0, log.read_text()[-3000:]
    wait_for(lambda: not procs.running(reconciler), timeout=10, what="the reconciler ending")
    said = log.read_text()
    assert "Traceback" not in said and "Exception ignored" not in said, said[-3000:]
    assert "stopping (SIGINT)" in said and "cold shut down" not in said, said[-3000:]


def test_a_run_queued_behind_others_gives_no_eta_until_its_turn(client, settings, workers):
    """Three runs triggered while the only worker is away: the third waits behind two. Its
    own steps take seconds (this installation knows what they cost), but when it ends
    depends on the two runs ahead, which nothing estimates: the API said "eta_seconds": 3.1
    and an eta_at 3 s away, a finish that was in fact after both other runs. It says how
    many runs are ahead instead, with no ETA, and a poll sees that count fall; the page
    says the work and the wait; once its turn comes it has an ETA again, and every run
    ends completed."""
    clip = mediagen.make_video(settings.media_root.parent / "short.mp4", duration=2.0)
    # The installation's first run, so that what the steps cost is known.
    first = upload_ok(client, clip, "first.mp4")["id"]
    assert client.post(f"/api/v1/videos/{first}/run_sync").status_code == 202
    worker = workers()
    wait_for(lambda: progress_of(client, first)["status"] == "completed", timeout=180,
             what="the first run completing")
    stop_worker(worker)

    vids = [upload_ok(client, clip, f"{n}.mp4")["id"] for n in ("a", "b", "c")]
    for vid in vids:
        assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    states = [progress_of(client, vid) for vid in vids]
    assert [(s["status"], s["runs_ahead"]) for s in states] == [
        ("queued", 0), ("queued", 1), ("queued", 2)]
    # The first in line: the time its steps take (nothing else is queued before it).
    assert states[0]["eta_seconds"] is not None and states[0]["eta_at"] is not None
    for state in states[1:]:
        assert (state["eta_seconds"], state["eta_at"]) == (None, None), state
    page = BeautifulSoup(panel_poll(client, vids[2]).get_data(as_text=True), "html.parser")
    assert page.select_one("#eta").get_text().endswith(
        " of work once a worker takes it, behind 2 other runs")

    # A run ahead ends: the third's unchanged task row no longer means an unchanged answer.
    url = f"/api/v1/videos/{vids[2]}/reprocess"
    etag = client.get(url).headers["ETag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.post(f"/api/v1/videos/{vids[0]}/cancel").status_code == 200
    resp = client.get(url, headers={"If-None-Match": etag})
    assert resp.status_code == 200 and resp.get_json()["runs_ahead"] == 1, resp.get_json()
    assert resp.headers["ETag"] != etag

    workers()
    seen_eta = wait_for(lambda: (s := progress_of(client, vids[2]))["status"] == "running"
                        and s["eta_at"] is not None and s, timeout=180,
                        what="the third run running with an ETA")
    assert seen_eta["runs_ahead"] == 0
    for vid in vids[1:]:
        final = wait_for(lambda vid=vid: (s := progress_of(client, vid))["status"] not in
                         ("queued", "running") and s, timeout=180, what="the runs ending")
        assert (final["status"], final["runs_ahead"], final["eta_seconds"]) == (
            "completed", 0, None)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_name_in_use_is_a_sentence_and_a_killed_workers_is_taken_over(settings,
                                                                               workers):
    """`--name` of a worker still working stopped the new one with RQ's ValueError and its
    traceback; so did the name of one killed (SIGKILL, the OOM killer), whose registration
    stays in Redis for minutes: a service manager restarting it failed until it expired."""
    name = f"twin-{os.getpid()}"
    first = workers("--name", name)
    log = Path(first.log_path)
    wait_for(lambda: "Listening on" in log.read_text(), timeout=30, what="the worker listening")

    def second() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobs.worker", "--burst", "--name", name],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                              check=False)

    refused = second()
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert (f"ERROR jobs.worker: vidpipe: a worker named '{name}' already serves the job "
            f"queue (pid {first.pid} on {socket.gethostname()}): give this one another "
            "--name, or stop that one; not starting" in refused.stderr), refused.stderr
    assert "Traceback" not in refused.stderr
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    again = second()
    assert again.returncode == 0, again.stderr[-2000:]
    assert (f"INFO jobs.worker: the worker named '{name}' before this one (pid {first.pid}) "
            "is gone without unregistering from the job queue: taking its name over"
            in again.stderr), again.stderr
    assert "Traceback" not in again.stderr
