"""Webhooks: the end of every run posted to WEBHOOK_URL, signed, at least once
(webapp/services/webhooks.py, jobs/webhooks.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from jobs import webhooks as sender_module
from jobs.webhooks import Sender
from tests import mediagen
from tests.conftest import start_worker, stop_worker
from tests.helpers import free_port, progress_of, upload_ok, wait_for
from webapp import create_app
from webapp.config import ConfigError, Settings
from webapp.db import session_factory
from webapp.models import WebhookEvent
from webapp.services import progress, webhooks

SECRET = "webhook-secret-for-tests-0123456789"


class Receiver:
    """A webhook receiver on loopback: records each post; answers `statuses` in turn (the
    last one from then on)."""

    def __init__(self, statuses=(200,), port: int | None = None) -> None:
        self.posts: list[dict] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append({"headers": dict(self.headers), "body": body})
                status = (receiver.statuses.pop(0) if len(receiver.statuses) > 1
                          else receiver.statuses[0])
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/vidpipe"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict]:
        return [json.loads(p["body"]) for p in self.posts]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hooked(settings, receiver, monkeypatch):
    """The test's settings with webhooks on, in the environment too (for workers)."""
    monkeypatch.setenv("WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    yield replace(settings, webhook_url=receiver.url, webhook_secret=SECRET)
    webhooks.configure(Settings())  # off again for the tests after this one


def verify(post: dict, secret: str = SECRET) -> dict:
    """What a receiver does: check the signature over the time and the body; the event."""
    parts = dict(item.split("=", 1) for item in post["headers"]["X-Vidpipe-Signature"].split(","))
    signed = f"{parts['t']}.".encode() + post["body"]
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected), "the signature does not match"
    assert abs(int(parts["t"]) - time.time()) < 120
    event = json.loads(post["body"])
    assert post["headers"]["X-Vidpipe-Event-Id"] == event["id"]
    assert post["headers"]["X-Vidpipe-Event-Type"] == event["type"]
    assert post["headers"]["Content-Type"] == "application/json"
    return event


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return mediagen.make_speech_video(tmp_path_factory.mktemp("m") / "hook.mp4",
                                      "The webhook says when it is done.", size="320x180")


def test_a_run_that_ends_is_posted_once_signed(hooked, receiver, clip):
    """Completed by a real worker (its reconciler's sender posts it), a run with nothing
    left to do (ended as it began) and a cancelled run: one signed post each, in the order
    they ended, each naming its task and where to read it."""
    client = create_app(hooked).test_client()
    vid = upload_ok(client, clip)["id"]
    worker = start_worker()
    try:
        first = client.post(f"/api/v1/videos/{vid}/run_sync").get_json()["task_id"]
        wait_for(lambda: len(receiver.posts) >= 1, timeout=240, what="the first post")
        assert progress_of(client, vid)["status"] == "completed"
        again = client.post(f"/api/v1/videos/{vid}/run_sync")  # all done: ends at once
        assert again.status_code == 202 and again.get_json()["status"] == "completed"
        wait_for(lambda: len(receiver.posts) >= 2, timeout=30, what="the second post")
    finally:
        stop_worker(worker)
    third = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    assert client.post(f"/api/v1/videos/{vid}/cancel").status_code in (200, 202)
    # No worker runs now: a sender in this process posts the cancellation.
    sender = Sender(hooked, session_factory(hooked.database_url))
    assert sender.send_due() == 1
    assert sender.send_due() == 0  # delivered: never posted again
    events = [verify(post) for post in receiver.posts]
    assert [(e["type"], e["data"]["task_id"]) for e in events] == [
        ("task.completed", first), ("task.completed", again.get_json()["task_id"]),
        ("task.cancelled", third)]
    done = events[0]["data"]
    assert done["video_id"] == vid and done["status"] == "completed" and done["error"] is None
    assert [(s["name"], s["status"]) for s in done["subtasks"]] == [
        ("extract_audio", "completed"), ("transcribe", "completed"),
        ("thumbnails", "completed"), ("transcode", "completed")]
    assert done["links"]["progress"] == f"/api/v1/videos/{vid}/reprocess"
    assert client.get(done["links"]["artifacts"]).status_code == 200
    assert events[2]["data"]["status"] == "cancelled" and events[2]["data"]["error"]
    assert len({e["id"] for e in events}) == 3


def test_a_failed_run_is_posted_with_its_steps_errors(hooked, receiver, clip, db_session):
    client = create_app(hooked).test_client()
    vid = upload_ok(client, clip)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    for step in ("extract_audio", "thumbnails", "transcode"):
        attempt = progress.start_subtask(db_session, task_id, step)
        progress.finish_subtask(db_session, task_id, step, "failed", f"{step} broke",
                                attempt=attempt)
    progress.finish_subtask(db_session, task_id, "transcribe", "cancelled",
                            "its input failed")
    assert Sender(hooked, session_factory(hooked.database_url)).send_due() == 1
    event = verify(receiver.posts[0])
    assert event["type"] == "task.failed" and event["data"]["status"] == "failed"
    assert event["data"]["error"] == ("failed: extract_audio, thumbnails, transcode; "
                                      "not run: transcribe")
    assert {s["name"]: s["error"] for s in event["data"]["subtasks"]}["transcode"] == \
        "transcode broke"


def test_a_receiver_that_is_down_gets_the_event_later(hooked, clip, monkeypatch, caplog):
    """Not answering, then answering 500, then 200: the event is kept, tried again after
    its pause each time, and delivered on the third try; every failure is one log line."""
    # 2 s: "not due before its pause" is looked at right after the failure, which a
    # loaded machine can delay by a few tenths of a second
    monkeypatch.setattr(sender_module, "PAUSES", (2.0,))
    client = create_app(hooked).test_client()
    vid = upload_ok(client, clip)["id"]
    client.post(f"/api/v1/videos/{vid}/reprocess")
    client.post(f"/api/v1/videos/{vid}/cancel")
    sessions = session_factory(hooked.database_url)
    down = replace(hooked, webhook_url=f"http://127.0.0.1:{free_port()}/hooks")  # nothing there
    with caplog.at_level("WARNING", logger="jobs.webhooks"):
        assert Sender(down, sessions).send_due() == 1
        with sessions() as session:
            event = session.scalars(select(WebhookEvent)).one()
            assert (event.attempts, event.delivered_at) == (1, None)
            assert event.last_error.startswith("the connection failed")
        assert Sender(down, sessions).send_due() == 0  # not due before its pause
        time.sleep(2.1)
        flaky = Receiver((500, 200), port=free_port())
        try:
            sender = Sender(replace(hooked, webhook_url=flaky.url), sessions)
            assert sender.send_due() == 1
            time.sleep(2.1)
            assert sender.send_due() == 1
        finally:
            flaky.close()
    assert [verify(p)["type"] for p in flaky.posts] == ["task.cancelled"] * 2
    with sessions() as session:
        event = session.scalars(select(WebhookEvent)).one()
        assert event.attempts == 3 and event.delivered_at is not None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "answered 500; trying again in 2 s" in warnings[1], warnings


def test_senders_side_by_side_post_each_event_once(hooked, receiver, clip):
    client = create_app(hooked).test_client()
    for n in range(6):
        vid = upload_ok(client, clip, name=f"v{n}.mp4")["id"]
        client.post(f"/api/v1/videos/{vid}/reprocess")
        client.post(f"/api/v1/videos/{vid}/cancel")
    sessions = session_factory(hooked.database_url)
    stop = threading.Event()
    senders = [threading.Thread(target=Sender(hooked, sessions).run,
                                args=(lambda: True, stop)) for _ in range(3)]
    for thread in senders:
        thread.start()
    try:
        wait_for(lambda: len(receiver.posts) >= 6, timeout=30, what="six posts")
        time.sleep(1.5)  # three more looks each: nothing is posted again
    finally:
        stop.set()
        for thread in senders:
            thread.join(10)
    ids = [verify(p)["id"] for p in receiver.posts]
    assert len(ids) == 6 and len(set(ids)) == 6


def test_an_event_undelivered_for_a_day_is_given_up(hooked, clip, monkeypatch, caplog):
    monkeypatch.setattr(sender_module, "GIVE_UP", sender_module.timedelta(0))
    client = create_app(hooked).test_client()
    vid = upload_ok(client, clip)["id"]
    client.post(f"/api/v1/videos/{vid}/reprocess")
    client.post(f"/api/v1/videos/{vid}/cancel")
    sessions = session_factory(hooked.database_url)
    flaky = Receiver((503,), port=free_port())
    try:
        with caplog.at_level("ERROR", logger="jobs.webhooks"):
            assert Sender(replace(hooked, webhook_url=flaky.url), sessions).send_due() == 1
    finally:
        flaky.close()
    with sessions() as session:
        event = session.scalars(select(WebhookEvent)).one()
        assert (event.next_attempt_at, event.delivered_at) == (None, None)
        assert event.last_error == "answered 503"
    assert "answered 503; given up after 1 tries" in caplog.text
    with sessions() as session:  # deleted once older than KEEP
        assert sender_module.prune(session, event.created_at + sender_module.KEEP
                                   + sender_module.timedelta(seconds=1)) == 1
        session.commit()
        assert session.scalars(select(WebhookEvent)).all() == []


def test_without_webhook_url_no_event_is_written(settings, client, clip, db_session):
    vid = upload_ok(client, clip)["id"]
    client.post(f"/api/v1/videos/{vid}/reprocess")
    assert client.post(f"/api/v1/videos/{vid}/cancel").status_code in (200, 202)
    assert db_session.scalars(select(WebhookEvent)).all() == []


@pytest.mark.parametrize(("env", "message"), [
    ({"WEBHOOK_URL": "https://example.com/hook"}, "WEBHOOK_URL needs WEBHOOK_SECRET"),
    ({"WEBHOOK_URL": "ftp://example.com/hook", "WEBHOOK_SECRET": SECRET},
     "WEBHOOK_URL must be an http:// or https:// address"),
    ({"WEBHOOK_URL": "example.com/hook", "WEBHOOK_SECRET": SECRET},
     "WEBHOOK_URL must be an http:// or https:// address"),
    ({"WEBHOOK_SECRET": SECRET}, "WEBHOOK_SECRET is set but WEBHOOK_URL is not"),
    ({"WEBHOOK_URL": "https://example.com/hook", "WEBHOOK_SECRET": "short"},
     "WEBHOOK_SECRET is 5 characters long, too short"),
])
def test_webhook_settings_that_cannot_work_stop_start_up(monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env().validate()


def test_a_receiver_that_trickles_its_answer_holds_the_sender_no_longer_than_its_deadline(
        hooked, clip, monkeypatch):
    """A receiver that answers a byte every half second: each read comes within the read
    timeout, so the post went on for as long as the receiver did (minutes, or for good),
    and every other event waited behind it. The whole post has a deadline; the event is
    tried again later, saying why."""
    import socket

    monkeypatch.setattr(sender_module, "DEADLINE", 2.0)
    client = create_app(hooked).test_client()
    vid = upload_ok(client, clip)["id"]
    client.post(f"/api/v1/videos/{vid}/reprocess")
    client.post(f"/api/v1/videos/{vid}/cancel")
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()
    answer = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"." * 40  # 65 bytes, a byte every 0.5 s: 32 s
    sent: list[int] = []

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in answer:
                if done.is_set():
                    return
                try:
                    conn.send(bytes([byte]))
                except OSError:  # the sender hung up
                    return
                sent.append(byte)
                time.sleep(0.5)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    sessions = session_factory(hooked.database_url)
    slow = replace(hooked, webhook_url=f"http://127.0.0.1:{server.getsockname()[1]}/hooks")
    started = time.monotonic()
    try:
        assert Sender(slow, sessions).send_due() == 1
        took = time.monotonic() - started
        trickled = len(sent)
    finally:
        done.set()
        thread.join(5)
        server.close()
    # Whatever the machine's speed: the sender gave up while the receiver still trickled.
    assert trickled < len(answer), "the post lasted as long as the receiver's answer"
    # At its 2 s DEADLINE: 3 × leaves a loaded machine (the database's writes too) room.
    assert took < 3 * sender_module.DEADLINE, f"the post took {took:.1f} s"
    with sessions() as session:
        event = session.scalars(select(WebhookEvent)).one()
    assert (event.attempts, event.delivered_at) == (1, None)
    assert event.last_error == "no whole answer within 2 s"
    assert event.next_attempt_at is not None  # tried again later


def test_an_event_waiting_for_its_next_try_when_the_clock_goes_back_is_not_held_for_hours(
        hooked, receiver, clip):
    """An event due again in a few seconds when the clock was set back two hours (an NTP
    correction, a host that ran ahead) was due two hours later by the clock now. No pause
    puts an event more than an hour ahead: one further ahead is due; one within its pause
    still waits for it."""
    from datetime import timedelta

    from sqlalchemy import update

    from webapp.models import utcnow

    client = create_app(hooked).test_client()
    vid = upload_ok(client, clip)["id"]
    client.post(f"/api/v1/videos/{vid}/reprocess")
    client.post(f"/api/v1/videos/{vid}/cancel")
    sessions = session_factory(hooked.database_url)

    def due_in(delay: timedelta) -> None:
        with sessions() as session:
            session.execute(update(WebhookEvent).values(next_attempt_at=utcnow() + delay))
            session.commit()

    due_in(timedelta(seconds=30))  # a pause: not yet
    assert Sender(hooked, sessions).send_due() == 0
    due_in(timedelta(hours=2, seconds=5))  # set before the clock went back two hours
    assert Sender(hooked, sessions).send_due() == 1
    assert [verify(p)["type"] for p in receiver.posts] == ["task.cancelled"]
    with sessions() as session:
        assert session.scalars(select(WebhookEvent)).one().delivered_at is not None
