"""Cheap progress polling: ETag / 304 on the JSON progress and the polled HTMX fragments,
a constant (and small) number of queries per poll, and lists without one query per video."""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine
from werkzeug.test import Client
from werkzeug.wrappers import Response

from tests import browser
from tests.test_progress import make_task, make_video
from webapp.config import DEFAULT_WEIGHTS, STEPS
from webapp.db import statements_sent
from webapp.fastpoll import ProgressPolls
from webapp.models import ProcessingTask
from webapp.services import progress
from webapp.services.errors import NotFound
from webapp.ui import duration

PANEL, ROW = "/videos/{}/panel?poll=1", "/videos/{}/row"
PROGRESS = "/api/v1/videos/{}/reprocess"
HX = {"HX-Request": "true"}


def counted(settings):
    """The SQL statements the app sends while the block runs."""
    return statements_sent(settings.database_url)


@pytest.fixture
def running(db_session):
    """A video whose task runs: transcode at 30 %, extract_audio done."""
    video = make_video(db_session)
    task = make_task(db_session, video)
    progress.start_subtask(db_session, task.id, "extract_audio")
    progress.complete_subtask(db_session, task.id, "extract_audio", 1)
    progress.start_subtask(db_session, task.id, "transcode")
    progress.report_progress(db_session, task.id, "transcode", 1, 30)
    return video.id, task.id


def get(client, url: str, etag: str | None = None):
    return client.get(url, headers={**HX, **({"If-None-Match": etag} if etag else {})})


def assert_not_modified(resp, etag: str) -> None:
    assert resp.status_code == 304, (resp.status_code, resp.data[:200])
    assert resp.data == b""
    assert resp.headers["ETag"] == etag
    assert "no-cache" in resp.headers["Cache-Control"]


# -- the JSON progress --------------------------------------------------------------------

def test_progress_has_a_strong_etag_and_must_be_revalidated(client, running):
    video_id, task_id = running
    resp = client.get(PROGRESS.format(video_id))
    assert resp.status_code == 200 and resp.get_json()["task_id"] == task_id
    etag = resp.headers["ETag"]
    assert re.fullmatch(r'"[^"]+"', etag), etag  # strong: no W/
    assert resp.headers["Cache-Control"] == "no-cache, private"
    assert_not_modified(client.get(PROGRESS.format(video_id), headers={"If-None-Match": etag}),
                        etag)
    # a list of tags, a weak form of it, or * match too (If-None-Match compares weakly)
    for header in (f'"other", {etag}', f"W/{etag}", "*"):
        assert client.get(PROGRESS.format(video_id),
                          headers={"If-None-Match": header}).status_code == 304
    other = client.get(PROGRESS.format(video_id), headers={"If-None-Match": '"other"'})
    assert other.status_code == 200 and other.headers["ETag"] == etag


def test_same_etag_means_the_same_body(client, db_session, running):
    """A strong validator: nothing in the body depends on the time of the request (the ETA
    is the one as of the task's last change). `eta_at`, the time to count down to, is that
    change plus `eta_seconds`: the same between changes too, so a 304 keeps it."""
    video_id, task_id = running
    first = client.get(PROGRESS.format(video_id))
    state = first.get_json()
    assert state["eta_seconds"] is not None
    changed_at = db_session.get(ProcessingTask, task_id).updated_at
    assert datetime.fromisoformat(state["eta_at"]) == changed_at + timedelta(
        seconds=state["eta_seconds"])
    time.sleep(0.3)
    second = client.get(PROGRESS.format(video_id))
    assert second.headers["ETag"] == first.headers["ETag"]
    assert second.data == first.data
    assert_not_modified(client.get(PROGRESS.format(video_id),
                                   headers={"If-None-Match": first.headers["ETag"]}),
                        first.headers["ETag"])
    # A change moves it, from the new change; an ended run has neither.
    progress.report_progress(db_session, task_id, "transcode", 1, 60)
    moved = client.get(PROGRESS.format(video_id)).get_json()
    db_session.expire_all()
    changed_at = db_session.get(ProcessingTask, task_id).updated_at
    assert datetime.fromisoformat(moved["eta_at"]) == changed_at + timedelta(
        seconds=moved["eta_seconds"])
    progress.cancel_task(db_session, task_id, "stop")
    db_session.commit()
    ended = client.get(PROGRESS.format(video_id)).get_json()
    assert (ended["eta_seconds"], ended["eta_at"]) == (None, None)


def test_every_change_of_the_task_changes_the_etag(client, db_session, running):
    video_id, task_id = running
    url = PROGRESS.format(video_id)
    seen = [client.get(url).headers["ETag"]]

    def changed(action) -> dict:
        before = seen[-1]
        action()
        assert client.get(url, headers={"If-None-Match": before}).status_code == 200
        resp = client.get(url)
        assert resp.headers["ETag"] not in seen
        seen.append(resp.headers["ETag"])
        return resp.get_json()

    def unchanged(action) -> None:
        action()
        assert client.get(url, headers={"If-None-Match": seen[-1]}).status_code == 304

    state = changed(lambda: progress.report_progress(db_session, task_id, "transcode", 1, 45))
    assert {s["name"]: s["progress"] for s in state["subtasks"]}["transcode"] == 45
    unchanged(lambda: progress.report_progress(db_session, task_id, "transcode", 1, 40))  # late
    unchanged(lambda: progress.report_progress(db_session, task_id, "transcode", 1, 45))
    changed(lambda: progress.start_subtask(db_session, task_id, "thumbnails"))
    changed(lambda: progress.retry_subtask(db_session, task_id, "thumbnails", "worker died",
                                           1))
    changed(lambda: progress.complete_subtask(db_session, task_id, "transcode", 1))
    assert changed(lambda: (progress.cancel_task(db_session, task_id, "stop"),
                            db_session.commit()))["status"] == "cancelled"
    unchanged(lambda: progress.report_progress(db_session, task_id, "transcode", 1, 99))
    video = db_session.get(ProcessingTask, task_id).video
    new = changed(lambda: make_task(db_session, video))
    assert new["task_id"] != task_id and new["status"] == "queued"


def test_both_answers_conform_to_the_openapi_description(client, running):
    from tests.test_schemathesis import VIDEO, conforms

    video_id, _ = running
    path = f"{VIDEO}/reprocess"
    full = conforms(client.get(PROGRESS.format(video_id)), path, "GET", 200)
    conforms(client.get(PROGRESS.format(video_id),
                        headers={"If-None-Match": full.headers["ETag"]}), path, "GET", 304)


def test_the_polled_view_is_the_services_view(db_session, running):
    """What a poll builds from plain rows equals the progress service's view of the ORM
    objects, and its tag is the tag of that state, in every kind of state."""
    video_id, task_id = running
    video = make_video(db_session)  # never ran
    states = [(video.id, lambda: None), (video_id, lambda: None)]
    states.append((video_id, lambda: progress.retry_subtask(db_session, task_id, "transcode",
                                                            "worker died", 1)))
    states.append((video_id, lambda: (progress.cancel_task(db_session, task_id, "stop"),
                                      db_session.commit())))
    for vid, action in states:
        action()
        db_session.expire_all()
        polled, tag = progress.tagged_progress(db_session, vid, DEFAULT_WEIGHTS)
        task = progress.latest_task(db_session, vid)
        assert polled == progress.progress_of(vid, task, DEFAULT_WEIGHTS)
        assert tag == progress.progress_tag(task, DEFAULT_WEIGHTS)
        assert tag == progress.poll_tag(db_session, vid, DEFAULT_WEIGHTS)
    for unknown in ("not-an-id", "0" * 8 + "-0000-4000-8000-" + "0" * 12):
        with pytest.raises(NotFound):
            progress.poll_tag(db_session, unknown, DEFAULT_WEIGHTS)
        with pytest.raises(NotFound):
            progress.tagged_progress(db_session, unknown, DEFAULT_WEIGHTS)


def test_a_video_that_never_ran_is_conditional_too(client, db_session):
    video = make_video(db_session)
    resp = client.get(PROGRESS.format(video.id))
    assert resp.status_code == 200 and resp.get_json()["task_id"] is None
    etag = resp.headers["ETag"]
    assert_not_modified(client.get(PROGRESS.format(video.id), headers={"If-None-Match": etag}),
                        etag)
    make_task(db_session, video)
    assert client.get(PROGRESS.format(video.id),
                      headers={"If-None-Match": etag}).status_code == 200


def test_unknown_video_is_still_404(client):
    resp = client.get(PROGRESS.format("0" * 8 + "-0000-0000-0000-" + "0" * 12),
                      headers={"If-None-Match": "*"})
    assert resp.status_code == 404 and "ETag" not in resp.headers


# -- polls answered in front of Flask (webapp/fastpoll.py) ----------------------------------

@contextmanager
def flask_requests(app):
    """How many requests reached the Flask app (its before_request hooks) in the block."""
    seen: list[str] = []
    app.before_request_funcs.setdefault(None, []).insert(0, lambda: seen.append("x") and None)
    try:
        yield seen
    finally:
        app.before_request_funcs[None].pop(0)


def fast_path(app) -> ProgressPolls:
    """The poll layer, found behind the layers in front of it (webapp/hosts.py)."""
    layer = app.wsgi_app
    while not isinstance(layer, ProgressPolls):
        layer = layer.app
    return layer


def flask_only(app) -> Client:
    """A client of the Flask app itself, without the fast path in front of it."""
    return Client(fast_path(app).app, Response)


def test_unchanged_progress_is_answered_before_flask_as_flask_would(app, client, running):
    video_id, _ = running
    url = PROGRESS.format(video_id)
    etag = client.get(url).headers["ETag"]
    for method in ("GET", "HEAD"):
        with flask_requests(app) as seen:
            fast = client.open(url, method=method, headers={"If-None-Match": etag})
        assert seen == [], "a conditional poll of an unchanged progress reached Flask"
        assert_not_modified(fast, etag)
        reference = flask_only(app).open(url, method=method, headers={"If-None-Match": etag})
        assert reference.status_code == 304
        assert sorted(fast.headers.items()) == sorted(reference.headers.items())


def test_a_200_is_built_once_per_change_and_then_served_before_flask(app, client, db_session,
                                                                     running):
    video_id, task_id = running
    url = PROGRESS.format(video_id)
    with flask_requests(app) as seen:
        first = client.get(url)
        again = [client.get(url) for _ in range(3)]
    assert len(seen) == 1, "an unchanged progress was built again"
    reference = flask_only(app).get(url)
    for resp in again:
        assert resp.status_code == 200 and resp.data == first.data == reference.data
        assert sorted(resp.headers.items()) == sorted(reference.headers.items())
    progress.report_progress(db_session, task_id, "transcode", 1, 60)
    with flask_requests(app) as seen:
        moved = client.get(url)
        assert client.get(url).data == moved.data
    assert len(seen) == 1
    assert moved.headers["ETag"] != first.headers["ETag"]
    assert {s["name"]: s["progress"] for s in moved.get_json()["subtasks"]}["transcode"] == 60


def test_videos_that_never_ran_share_a_tag_but_not_an_answer(client, db_session):
    videos = [make_video(db_session) for _ in range(2)]
    answers = [client.get(PROGRESS.format(v.id)) for v in videos for _ in range(2)]
    assert len({a.headers["ETag"] for a in answers}) == 1
    assert [a.get_json()["video_id"] for a in answers] == [videos[0].id] * 2 + [videos[1].id] * 2


def test_everything_else_is_left_to_flask(app, client, running):
    video_id, _ = running
    url = PROGRESS.format(video_id)
    unknown = PROGRESS.format("0" * 8 + "-0000-4000-8000-" + "0" * 12)
    cases = [  # (path, headers, method, the status Flask answers)
        (url, {"If-None-Match": '"other"'}, "HEAD", 200),  # HEAD: only its 304 is answered
        (url + "/", {"If-None-Match": "*"}, "GET", 404),  # not the route
        (unknown, {"If-None-Match": "*"}, "GET", 404),
        (PROGRESS.format("not-an-id"), {}, "GET", 404),
        (url, {"If-None-Match": "*"}, "POST", 415),  # a trigger, with a wrong body
    ]
    for path, headers, method, status in cases:
        with flask_requests(app) as seen:
            kwargs = {"data": "x", "content_type": "text/plain"} if method == "POST" else {}
            resp = client.open(path, method=method, headers=headers, **kwargs)
        assert (resp.status_code, len(seen)) == (status, 1), (path, headers, method)


def test_the_api_token_is_required_on_the_fast_path_too(settings, db_session):
    from tests.test_security import TOKEN, bearer, make_app

    app = make_app(settings, api_token=TOKEN)
    client = app.test_client()
    video = make_video(db_session)
    make_task(db_session, video)
    url = PROGRESS.format(video.id)
    etag = client.get(url, headers=bearer()).headers["ETag"]
    for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {TOKEN}"}):
        for validator in ({"If-None-Match": etag}, {}):  # neither a 304 nor a known 200
            resp = client.get(url, headers={**headers, **validator})
            assert resp.status_code == 401 and "ETag" not in resp.headers, headers
    with flask_requests(app) as seen:
        assert_not_modified(client.get(url, headers={**bearer(), "If-None-Match": etag}), etag)
        assert client.get(url, headers=bearer()).headers["ETag"] == etag
    assert seen == []


def test_a_database_error_on_the_fast_path_leaves_the_poll_to_flask(app, client, running,
                                                                    tmp_path):
    """The fast path's own connection failing is never a failed poll."""
    video_id, _ = running
    url = PROGRESS.format(video_id)
    etag = client.get(url).headers["ETag"]
    fast = fast_path(app)
    working, fast.engine = fast.engine, create_engine(f"sqlite:///{tmp_path}/missing/x.db")
    try:
        with flask_requests(app) as seen:
            assert_not_modified(client.get(url, headers={"If-None-Match": etag}), etag)
        assert len(seen) == 1
    finally:
        fast.engine.dispose()
        fast.engine = working


# -- queries per poll ---------------------------------------------------------------------

def add_history(db_session, video, runs: int) -> None:
    """Older, finished tasks of the video, and other videos with tasks: noise to ignore."""
    for _ in range(runs):
        task = make_task(db_session, video, reused=STEPS)
        assert task.status == "completed"
        time.sleep(0.002)  # distinct created_at
    for _ in range(runs):
        make_task(db_session, make_video(db_session), reused=STEPS)


@pytest.mark.parametrize("url", [PROGRESS, PANEL, ROW])
def test_a_poll_costs_a_few_queries_whatever_the_history(client, settings, db_session, url):
    counts = []
    for runs in (0, 6):
        video = make_video(db_session)
        add_history(db_session, video, runs)
        task = make_task(db_session, video)
        progress.start_subtask(db_session, task.id, "transcode")
        progress.report_progress(db_session, task.id, "transcode", 1, 10)
        with counted(settings) as full:
            resp = get(client, url.format(video.id))
        assert resp.status_code == 200
        with counted(settings) as conditional:
            assert get(client, url.format(video.id), resp.headers["ETag"]).status_code == 304
        counts.append((len(full), len(conditional)))
    # 304: one query (the video joined with its latest task's version). 200: that, then the
    # latest task joined with its subtasks (for the HTML fragments the video's row and its
    # published outputs too; for the JSON progress the video joined with both, in the Flask
    # view).
    expected = (2, 1) if url == PROGRESS else (4, 1)
    assert counts == [expected, expected], counts


def test_list_pages_do_not_query_per_video(client, app, settings, db_session):
    counts = {}
    for total in (3, 12):
        while len(progress_list(client)) < total:
            video = make_video(db_session)
            task = make_task(db_session, video)
            progress.start_subtask(db_session, task.id, "transcode")
            progress.report_progress(db_session, task.id, "transcode", 1, 5.0 * total)
        with counted(settings) as api:
            listed = client.get("/api/v1/videos?page_size=20")
        with counted(settings) as page:
            assert client.get("/").status_code == 200
        assert len(listed.get_json()) == total
        counts[total] = (len(api), len(page))
    # count, page, the page's latest tasks joined with their subtasks (and for the library
    # page, which of them have a published poster)
    assert counts[3] == counts[12] == (3, 4), counts


def progress_list(client) -> list[dict]:
    return client.get("/api/v1/videos?page_size=20").get_json()


def test_list_shows_each_videos_latest_task(client, db_session):
    idle = make_video(db_session)
    busy = make_video(db_session)
    old = make_task(db_session, busy, reused=STEPS)
    time.sleep(0.002)
    new = make_task(db_session, busy)
    progress.start_subtask(db_session, new.id, "transcode")
    progress.report_progress(db_session, new.id, "transcode", 1, 50)
    listed = {v["id"]: v["processing"] for v in progress_list(client)}
    assert listed[idle.id] == {"task_id": None, "status": "pending", "progress": 0.0}
    assert listed[busy.id]["task_id"] == new.id != old.id
    assert listed[busy.id] == {k: client.get(PROGRESS.format(busy.id)).get_json()[k]
                               for k in ("task_id", "status", "progress")}


def test_prefetched_progress_is_used_once_and_forgotten_at_commit(settings, db_session):
    video, other = make_video(db_session), make_video(db_session)
    first = make_task(db_session, video)
    progress.start_subtask(db_session, first.id, "transcode")
    progress.report_progress(db_session, first.id, "transcode", 1, 12.5)
    progress.prefetch_progress(db_session, [video.id, other.id])
    with counted(settings) as statements:
        prefetched = progress.video_progress(db_session, video, DEFAULT_WEIGHTS)
        never_ran = progress.video_progress(db_session, other, DEFAULT_WEIGHTS)
    assert statements == []
    db_session.expire_all()  # (this session's ORM objects predate the service's updates)
    assert video.id  # (reloaded here, not counted below)
    with counted(settings) as statements:  # used once: the next one reads again
        assert progress.video_progress(db_session, video, DEFAULT_WEIGHTS) == prefetched
    assert len(statements) == 1  # the task and its subtasks in one statement (one snapshot)
    assert prefetched.task_id == first.id and prefetched.progress > 0
    assert never_ran == progress.initial_view(other.id, DEFAULT_WEIGHTS)
    progress.prefetch_progress(db_session, [video.id])
    db_session.commit()  # a new transaction reads again
    assert progress.cancel_task(db_session, first.id, "stop")
    db_session.commit()
    time.sleep(0.002)
    second = make_task(db_session, video)
    assert progress.video_progress(db_session, video, DEFAULT_WEIGHTS).task_id == second.id


# -- the polled HTMX fragments ------------------------------------------------------------

@pytest.mark.parametrize("url", [PANEL, ROW])
def test_fragments_answer_304_until_the_progress_moves(client, db_session, running, url):
    video_id, task_id = running
    resp = get(client, url.format(video_id))
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert 'hx-trigger="every 1s"' in resp.get_data(as_text=True)
    etag = resp.headers["ETag"]
    assert not etag.startswith("W/") and resp.headers["Cache-Control"] == "no-cache, private"
    assert_not_modified(get(client, url.format(video_id), etag), etag)
    if url == PANEL:  # what the page counts down to, and the text it shows without script
        state = client.get(PROGRESS.format(video_id)).get_json()
        eta = re.search(r'<span id="eta" data-eta-at="([^"]+)">\s*([^<]*)</span>',
                        resp.get_data(as_text=True))
        assert eta, resp.get_data(as_text=True)
        assert abs(datetime.fromisoformat(eta.group(1))
                   - datetime.fromisoformat(state["eta_at"])) < timedelta(milliseconds=1)
        seconds = state["eta_seconds"]  # a tiny clip: from 0.1 to a few seconds
        assert eta.group(2) == ("finishing" if seconds < 0.5
                                else f"about {duration(seconds, approximate=True)} left")
    progress.report_progress(db_session, task_id, "transcode", 1, 31)
    moved = get(client, url.format(video_id), etag)
    assert moved.status_code == 200 and moved.headers["ETag"] != etag
    assert "31.0\u00a0%" in moved.get_data(as_text=True) or url == ROW
    # the end of the run: the last poll gets the final fragment, which stops polling
    for step in STEPS:
        if step != "extract_audio":
            progress.start_subtask(db_session, task_id, step)
            progress.complete_subtask(db_session, task_id, step, 1)
    done = get(client, url.format(video_id), moved.headers["ETag"])
    assert done.status_code == 200
    assert 'data-status="completed"' in done.get_data(as_text=True)
    # The fragment itself (its first tag) polls no more; a panel that polls nothing keeps
    # asking whether the job queue answers (every 10 s, its #queue-watch).
    first_tag = re.match(r"\s*(<[^>]*>)", done.get_data(as_text=True))[1]
    assert "hx-trigger" not in first_tag, first_tag


def test_panel_copies_of_another_session_are_not_reused(app, running):
    """The panel's forms carry the session's CSRF token: another session, another ETag."""
    video_id, _ = running
    one, two = app.test_client(), app.test_client()
    first = get(one, PANEL.format(video_id))  # the first request of a session, even
    assert get(one, PANEL.format(video_id), first.headers["ETag"]).status_code == 304
    other = get(two, PANEL.format(video_id), first.headers["ETag"])
    assert other.status_code == 200 and other.headers["ETag"] != first.headers["ETag"]


def test_poll_flag_is_part_of_the_panel_tag(client, running):
    video_id, _ = running
    polled = get(client, PANEL.format(video_id))
    plain = get(client, f"/videos/{video_id}/panel")
    assert plain.status_code == 200 and polled.headers["ETag"] != plain.headers["ETag"]


def test_progress_tag_of_the_initial_view_follows_the_weights():
    other = {**DEFAULT_WEIGHTS, "transcode": DEFAULT_WEIGHTS["transcode"] + 1}
    assert progress.progress_tag(None, DEFAULT_WEIGHTS) != progress.progress_tag(None, other)
    assert progress.progress_tag(None, DEFAULT_WEIGHTS) == progress.progress_tag(
        None, dict(reversed(list(DEFAULT_WEIGHTS.items()))))


# -- a real browser: HTMX polls are revalidated, and a 304 leaves the panel as it is ------

@pytest.fixture
def browser_page(request, app):
    """Chromium (tests/browser.py's harness) on the app, which records what each poll of a
    fragment sent and got: (path, If-None-Match, status)."""
    seen: list[tuple[str, str | None, int]] = []
    inner = app.wsgi_app

    def recording(environ, start_response):
        def start(status, headers, exc_info=None):
            seen.append((environ["PATH_INFO"], environ.get("HTTP_IF_NONE_MATCH"),
                         int(status.split()[0])))
            return start_response(status, headers, exc_info)
        return inner(environ, start)

    app.wsgi_app = recording
    live = request.getfixturevalue("live_server")
    chromium = request.getfixturevalue("chromium")
    context = chromium.new_context(base_url=live, viewport=browser.VIEWPORT)
    context.set_default_timeout(15_000)
    try:
        yield context.new_page(), seen
    finally:
        context.close()
        app.wsgi_app = inner


# The browser harness's fixtures, used by name.
chromium, live_server = browser.chromium, browser.live_server


@pytest.mark.e2e
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_browser_revalidates_polls_and_keeps_the_panel_on_304(browser_page, db_session,
                                                              running):
    page, seen = browser_page
    video_id, task_id = running
    panel_path = f"/videos/{video_id}/panel"
    page.goto(f"/videos/{video_id}")
    percent = page.locator("#overall-percent")
    before = percent.text_content()

    def polls():
        return [(inm, status) for path, inm, status in seen if path == panel_path]

    deadline = time.monotonic() + 20
    while sum(status == 304 for _, status in polls()) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    answered = polls()
    assert sum(status == 304 for _, status in answered) >= 2, answered
    # the browser revalidated its cached copy by itself (Cache-Control: no-cache + ETag)
    assert all(inm for inm, status in answered if status == 304), answered
    assert page.locator("#progress-panel").get_attribute("data-status") == "running"
    assert percent.text_content() == before  # nothing blanked or changed by the 304s

    progress.report_progress(db_session, task_id, "transcode", 1, 90)
    page.wait_for_function(
        "(before) => document.querySelector('#overall-percent').textContent.trim() !== before",
        arg=before.strip(), timeout=10_000)
    assert any(status == 200 for _, status in polls()[len(answered):])
    for step in STEPS:
        if step != "extract_audio":
            progress.start_subtask(db_session, task_id, step)
            progress.complete_subtask(db_session, task_id, step, 1)
    page.wait_for_function(
        "() => document.querySelector('#progress-panel').dataset.status === 'completed'",
        timeout=10_000)
    assert page.locator("#progress-panel").get_attribute("hx-trigger") is None
