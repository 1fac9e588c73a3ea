"""Processing API: trigger (202), conflicts (409), force, cancel, progress, Redis outage, race."""

from __future__ import annotations

import threading

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from sqlalchemy import select

from tests import mediagen
from tests.helpers import assert_json_error, progress_of, subtasks, upload_ok
from webapp import create_app
from webapp.config import STEPS, Settings
from webapp.models import ProcessingTask


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return mediagen.make_video(tmp_path_factory.mktemp("m") / "clip.mp4", duration=2.0)


@pytest.fixture
def video_id(client, clip) -> str:
    return upload_ok(client, clip)["id"]


def job_status(redis_conn, task_id: str, step: str) -> JobStatus:
    return Job.fetch(f"{task_id}-{step}", connection=redis_conn).get_status()


def test_progress_before_any_run_is_the_initial_state(client, video_id):
    state = progress_of(client, video_id)
    assert state["task_id"] is None and state["status"] == "pending"
    assert state["progress"] == 0 and state["eta_seconds"] is None
    assert [(s["name"], s["status"], s["progress"]) for s in state["subtasks"]] == [
        (name, "pending", 0) for name in STEPS]
    assert sum(s["weight"] for s in state["subtasks"]) == 100


@pytest.mark.parametrize("mode", ["run_sync", "reprocess"])
def test_trigger_answers_202_and_enqueues_the_steps(client, settings, redis_conn, video_id, mode):
    resp = client.post(f"/api/v1/videos/{video_id}/{mode}")
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["video_id"] == video_id and body["status"] == "queued" and body["message"]
    assert body["progress_url"] == f"/api/v1/videos/{video_id}/reprocess"
    assert resp.headers["Location"].endswith(body["progress_url"])
    state = progress_of(client, video_id)
    assert (state["task_id"], state["status"], state["mode"]) == (body["task_id"], "queued", mode)
    queue = Queue(settings.queue_name, connection=redis_conn)
    assert sorted(queue.job_ids) == sorted(
        f"{body['task_id']}-{s}" for s in ("extract_audio", "thumbnails", "transcode"))
    assert job_status(redis_conn, body["task_id"], "transcribe") == JobStatus.DEFERRED


def test_second_trigger_is_409_naming_the_active_task(client, video_id):
    first = client.post(f"/api/v1/videos/{video_id}/run_sync").get_json()
    for mode in ("run_sync", "reprocess"):
        body = assert_json_error(client.post(f"/api/v1/videos/{video_id}/{mode}"), 409)
        assert body["task_id"] == first["task_id"]
        assert first["task_id"] in body["message"]


@pytest.mark.parametrize("how", ["query", "json"])
def test_force_replaces_the_active_task(client, redis_conn, db_session, video_id, how):
    first = client.post(f"/api/v1/videos/{video_id}/run_sync").get_json()
    if how == "query":
        resp = client.post(f"/api/v1/videos/{video_id}/reprocess?force=true")
    else:
        resp = client.post(f"/api/v1/videos/{video_id}/reprocess", json={"force": True})
    assert resp.status_code == 202
    second = resp.get_json()
    assert second["task_id"] != first["task_id"]
    old = db_session.get(ProcessingTask, first["task_id"])
    assert old.status == "cancelled"
    assert {s.status for s in old.subtasks} == {"cancelled"}
    for step in STEPS:
        assert job_status(redis_conn, first["task_id"], step) == JobStatus.CANCELED
    assert progress_of(client, video_id)["task_id"] == second["task_id"]


def test_force_without_an_active_task_just_starts(client, video_id, db_session):
    resp = client.post(f"/api/v1/videos/{video_id}/run_sync?force=true")
    assert resp.status_code == 202
    started = resp.get_json()["task_id"]
    # The run started is the video's one task, queued; nothing was there to cancel.
    assert progress_of(client, video_id)["task_id"] == started
    tasks = db_session.scalars(select(ProcessingTask).where(
        ProcessingTask.video_id == video_id)).all()
    assert [(t.id, t.status) for t in tasks] == [(started, "queued")]


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"query_string": {"force": "maybe"}}, 422),
        ({"json": {"force": "maybe"}}, 422),
        ({"json": {"forse": True}}, 422),
        ({"query_string": {"forse": "true"}}, 422),
        ({"data": "{not json", "content_type": "application/json"}, 400),
    ],
)
def test_bad_trigger_parameters_are_rejected(client, db_session, video_id, kwargs, status):
    resp = client.post(f"/api/v1/videos/{video_id}/run_sync", **kwargs)
    assert_json_error(resp, status)
    if "forse" in str(kwargs):  # a misspelt option is named, not ignored
        location = "query" if "query_string" in kwargs else "json"
        assert resp.get_json()["errors"] == {location: {"forse": ["Unknown field."]}}
    assert db_session.query(ProcessingTask).count() == 0


def test_a_query_parameter_given_twice_is_422_naming_it(client, db_session, video_id):
    """webargs reads the first of two values and drops the other: `?force=true&force=false`
    started a forced run, `?status=failed&status=cancelled` listed only the failed videos.
    Each is a 422 naming the parameter; no run starts."""
    for method, url in [
        (client.post, f"/api/v1/videos/{video_id}/run_sync?force=true&force=false"),
        (client.post, f"/api/v1/videos/{video_id}/reprocess?language=de&language=fr"),
        (client.get, "/api/v1/videos?status=failed&status=cancelled"),
        (client.get, "/api/v1/videos?page=1&page=2"),
        (client.get, "/api/v1/search?q=weather&q=report"),
    ]:
        body = assert_json_error(method(url), 422)
        name = url.split("?")[1].split("=")[0]
        assert body["message"] == f"query parameter `{name}`: sent 2 times: send it once", url
        assert body["errors"] == {"query": {name: ["Sent 2 times: send it once."]}}, url
    assert db_session.query(ProcessingTask).count() == 0
    assert client.get("/api/v1/videos?status=failed&sort=name").status_code == 200


def test_an_id_that_is_no_uuid_is_the_same_404_on_every_route(client):
    """The progress said "video <the id> not found", echoing an id of any length (a few
    KB), where every other route says what ids are."""
    long_id = "a" * 300
    for method, path in (("get", ""), ("delete", ""), ("get", "/artifacts"),
                         ("get", "/transcript.txt"), ("get", "/reprocess"),
                         ("post", "/run_sync"), ("post", "/cancel")):
        resp = getattr(client, method)(f"/api/v1/videos/{long_id}{path}")
        body = assert_json_error(resp, 404)
        assert body["message"] == "no video has this id (ids are UUIDs)", (method, path)


def test_an_id_in_upper_case_is_a_404_that_says_so_on_every_route(client, video_id):
    """This service's ids are lowercase UUIDs; Swift's `uuidString` (and some .NET code)
    writes a UUID in upper case, and such a client got "no video has this id (ids are
    UUIDs)" for a UUID it had been given. Still a 404 (an id names one path; traversal
    tests keep it so), saying what to send; nothing is started or deleted."""
    upper = video_id.upper()
    for method, path in (("get", ""), ("delete", ""), ("get", "/artifacts"),
                         ("get", "/artifacts/poster.jpg"), ("get", "/transcript.txt"),
                         ("get", "/reprocess"), ("post", "/run_sync"), ("post", "/reprocess"),
                         ("post", "/cancel")):
        resp = getattr(client, method)(f"/api/v1/videos/{upper}{path}")
        body = assert_json_error(resp, 404)
        assert body["message"] == (
            "no video has this id: ids are UUIDs written in lower case, and this one is in "
            f"upper case ({video_id} in lower case)"), (method, path)
    assert client.get(f"/api/v1/videos/{video_id}").get_json()["processing"]["task_id"] is None


def test_a_triggers_503_documents_its_retry_after(client):
    """The queue (or the database) not answering is a 503 with Retry-After (seconds); the
    OpenAPI said only "Service Unavailable", so a generated client did not know to wait."""
    paths = client.get("/api/openapi.json").get_json()["paths"]
    for mode in ("run_sync", "reprocess"):
        answer = paths[f"/api/v1/videos/{{video_id}}/{mode}"]["post"]["responses"]["503"]
        header = answer["headers"]["Retry-After"]
        assert header["required"] is True and header["schema"]["type"] == "integer", mode
        assert "nothing was started" in answer["description"], mode


def test_a_json_field_given_twice_is_422_naming_it(client, db_session, video_id):
    """As a query parameter given twice: Python's json keeps the last of two values
    without a word, so `{"force": true, "force": false}` started a run that was not forced
    (RFC 8259 4: such an object's meaning is unpredictable). 422 naming it; no run starts."""
    for mode in ("run_sync", "reprocess"):
        resp = client.post(f"/api/v1/videos/{video_id}/{mode}",
                           data=b'{"force": true, "language": "de", "force": false}',
                           content_type="application/json")
        body = assert_json_error(resp, 422)
        assert body["message"] == "JSON field `force`: sent 2 times: send it once", mode
        assert body["errors"] == {"json": {"force": ["Sent 2 times: send it once."]}}, mode
    assert db_session.query(ProcessingTask).count() == 0
    resp = client.post(f"/api/v1/videos/{video_id}/run_sync", data=b'{"force": true}',
                       content_type="application/json")
    assert resp.status_code == 202, resp.get_json()


def test_cancel_stops_the_active_task(client, redis_conn, video_id):
    assert_json_error(client.post(f"/api/v1/videos/{video_id}/cancel"), 409)
    task_id = client.post(f"/api/v1/videos/{video_id}/run_sync").get_json()["task_id"]
    resp = client.post(f"/api/v1/videos/{video_id}/cancel")
    assert resp.status_code == 200
    state = resp.get_json()
    assert (state["task_id"], state["status"]) == (task_id, "cancelled")
    assert {s["status"] for s in state["subtasks"]} == {"cancelled"}
    assert all(job_status(redis_conn, task_id, s) == JobStatus.CANCELED for s in STEPS)
    assert_json_error(client.post(f"/api/v1/videos/{video_id}/cancel"), 409)
    assert client.post(f"/api/v1/videos/{video_id}/run_sync").status_code == 202


def test_audio_only_video_skips_picture_steps(client, tmp_path):
    audio = mediagen.make_audio_only(tmp_path / "a.m4a", "hello there")
    vid = upload_ok(client, audio)["id"]
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    subs = subtasks(progress_of(client, vid))
    assert subs["thumbnails"]["status"] == subs["transcode"]["status"] == "skipped"
    assert subs["thumbnails"]["error"] == "no video stream"
    assert progress_of(client, vid)["progress"] == 40.0


def test_triggers_with_redis_down_are_503_and_leave_no_task(settings, db_session, clip):
    down = create_app(Settings.from_env(redis_url="redis://127.0.0.1:1/0")).test_client()
    vid = upload_ok(down, clip)["id"]
    body = assert_json_error(down.post(f"/api/v1/videos/{vid}/run_sync"), 503)
    assert "Redis" in body["message"]
    assert db_session.query(ProcessingTask).count() == 0
    assert progress_of(down, vid)["status"] == "pending"


@pytest.mark.parametrize("how_far", ["started", "completed"])
def test_a_trigger_whose_queue_failed_after_a_worker_took_a_step_keeps_its_task(
        client, settings, video_id, db_session, monkeypatch, how_far):
    """The jobs reached Redis, but Redis could not say so (its answer lost, then unreachable
    when asked), and a worker started a step of the new task meanwhile, even published its
    outputs. Undoing the trigger deleted the task, and with it the video's publications
    that named it (ON DELETE CASCADE): the task stays, and the trigger stands (202)."""
    from webapp.db import session_factory
    from webapp.models import Publication
    from webapp.services import progress, queue
    from webapp.services.errors import QueueUnavailable

    sessions = session_factory(settings.database_url)
    enqueue_steps = queue.enqueue_steps

    def landed_unconfirmed(connection, settings_, task_id, vid, *args, **kwargs):
        enqueue_steps(connection, settings_, task_id, vid, *args, **kwargs)
        with sessions() as session:  # a worker takes the thumbnails
            attempt = progress.start_subtask(session, task_id, "thumbnails")
            assert attempt == 1
            if how_far == "completed":
                assert progress.complete_subtask(session, task_id, "thumbnails", attempt,
                                                 video_id=vid,
                                                 folder=f"runs/{task_id}/thumbnails.1")
        raise QueueUnavailable("the job queue (Redis) is unavailable; try again in a moment")

    monkeypatch.setattr(queue, "enqueue_steps", landed_unconfirmed)
    resp = client.post(f"/api/v1/videos/{video_id}/run_sync",
                       json={"language": "de", "translate": True})
    assert resp.status_code == 202, resp.get_json()
    task_id = resp.get_json()["task_id"]
    task = db_session.get(ProcessingTask, task_id)
    assert task is not None and task.status in ("queued", "running")  # its other steps wait
    thumbnails = subtasks(progress_of(client, video_id))["thumbnails"]
    assert thumbnails["status"] == ("completed" if how_far == "completed" else "running")
    published = db_session.scalars(select(Publication.task_id).where(
        Publication.video_id == video_id)).all()
    assert published == ([task_id] if how_far == "completed" else [])
    video = client.get(f"/api/v1/videos/{video_id}").get_json()
    assert (video["requested_language"], video["translate"]) == ("de", True)  # the run's


def test_a_trigger_whose_queue_failed_before_any_step_started_is_undone(
        client, settings, video_id, db_session, monkeypatch):
    """The same failure with no step started: the trigger is undone (503, no task), its
    options with it, whether its jobs reached Redis or not (none of them can start a step
    of a task that is gone)."""
    from webapp.services import queue
    from webapp.services.errors import QueueUnavailable

    enqueue_steps = queue.enqueue_steps

    def landed_unconfirmed(*args, **kwargs):
        enqueue_steps(*args, **kwargs)
        raise QueueUnavailable("the job queue (Redis) is unavailable; try again in a moment")

    monkeypatch.setattr(queue, "enqueue_steps", landed_unconfirmed)
    resp = client.post(f"/api/v1/videos/{video_id}/run_sync",
                       json={"language": "de", "translate": True})
    assert_json_error(resp, 503)
    assert db_session.query(ProcessingTask).count() == 0
    video = client.get(f"/api/v1/videos/{video_id}").get_json()
    assert (video["requested_language"], video["translate"]) == ("auto", False)


def test_a_trigger_refused_with_503_changes_none_of_the_videos_options(settings, clip):
    """A 503 says "try again": the language and translate the refused trigger gave are not
    stored on the video (they are when the trigger is accepted)."""
    down = create_app(Settings.from_env(redis_url="redis://127.0.0.1:1/0")).test_client()
    vid = upload_ok(down, clip)["id"]
    for mode in ("run_sync", "reprocess"):
        for how in ({"query_string": {"language": "de", "translate": "true"}},
                    {"json": {"language": "de", "translate": True}}):
            assert_json_error(down.post(f"/api/v1/videos/{vid}/{mode}", **how), 503)
            video = down.get(f"/api/v1/videos/{vid}").get_json()
            assert (video["requested_language"], video["translate"]) == ("auto", False), how


def _deleted_meanwhile(app, video_id: str) -> None:
    """A DELETE of the video from another client, answered before this returns (a real
    request in its own thread, as a concurrent one would be)."""
    answers = []
    thread = threading.Thread(target=lambda: answers.append(
        app.test_client().delete(f"/api/v1/videos/{video_id}").status_code))
    thread.start()
    thread.join(30)
    assert answers == [204]


def test_a_cancel_whose_video_is_deleted_meanwhile_is_not_a_500(app, client, video_id,
                                                                 monkeypatch):
    """Once the cancel has committed, a DELETE may remove the video and its tasks before the
    cancel reads the task back for its answer."""
    from webapp.services import queue

    assert client.post(f"/api/v1/videos/{video_id}/run_sync").status_code == 202
    stop_jobs = queue.stop_jobs

    def stop_then_delete(connection, task_id):
        stop_jobs(connection, task_id)
        _deleted_meanwhile(app, video_id)

    monkeypatch.setattr(queue, "stop_jobs", stop_then_delete)
    resp = client.post(f"/api/v1/videos/{video_id}/cancel")
    assert_json_error(resp, 404)


def test_a_trigger_whose_video_is_deleted_meanwhile_is_404_not_409(app, client, video_id,
                                                                    monkeypatch, db_session):
    """A DELETE between the trigger's read of the video and its insert: the video is gone,
    which is a 404, not a 409 about an active task that does not exist."""
    from webapp.services import progress

    insert = progress.insert_task_rows
    calls = []

    def delete_then_insert(session, row, subtasks):
        if not calls:
            _deleted_meanwhile(app, video_id)
        calls.append(row["id"])
        return insert(session, row, subtasks)

    monkeypatch.setattr(progress, "insert_task_rows", delete_then_insert)
    body = assert_json_error(client.post(f"/api/v1/videos/{video_id}/run_sync"), 404)
    assert "task_id" not in body or body["task_id"] is None
    assert db_session.query(ProcessingTask).count() == 0


def test_twenty_simultaneous_triggers_give_exactly_one_202(app, video_id, db_session):
    barrier = threading.Barrier(20)
    results: list[tuple[int, dict]] = []

    def trigger(mode: str) -> None:
        client = app.test_client()
        barrier.wait()
        resp = client.post(f"/api/v1/videos/{video_id}/{mode}")
        results.append((resp.status_code, resp.get_json()))

    threads = [threading.Thread(target=trigger, args=("run_sync" if i % 2 else "reprocess",))
               for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(code for code, _ in results)
    assert codes == [202] + [409] * 19, codes
    winner = next(body["task_id"] for code, body in results if code == 202)
    assert {body["task_id"] for code, body in results if code == 409} == {winner}
    assert db_session.query(ProcessingTask).count() == 1
