"""/healthz as an operator reads it: what is down, said as a sentence to act on (never a
password), within seconds however the database, Redis or MEDIA_ROOT's disk fails."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, silent_server, small_disk
from tests.test_redis_outage import redis_with_a_password
from webapp import create_app
from webapp.config import Settings
from webapp.db import dispose
from webapp.health import CHECK_GIVES_UP, CHECK_TIMEOUT

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _health(settings: Settings) -> tuple[int, dict, float]:
    client = create_app(settings).test_client()
    started = time.monotonic()
    resp = client.get("/healthz")
    return resp.status_code, resp.get_json(), time.monotonic() - started


def test_a_database_and_a_redis_that_hang_are_said_to_within_seconds(settings, caplog):
    """A database and a Redis that accept connections and never answer held /healthz for
    10 s (the connect and socket timeouts), saying only `down: OperationalError`."""
    caplog.set_level(logging.INFO, logger="webapp.health")
    with silent_server() as port:
        hung = Settings.from_env(
            database_url=f"postgresql+psycopg://vidpipe:db-secret@127.0.0.1:{port}/vidpipe",
            redis_url=f"redis://:redis-secret@127.0.0.1:{port}/0")
        client = create_app(hung).test_client()
        for _ in range(2):  # the second finds the first's checks still waiting
            started = time.monotonic()
            resp = client.get("/healthz")
            took = time.monotonic() - started
            # Said at CHECK_TIMEOUT (the answers below say so); the hold was the 10 s
            # timeouts. 3 × leaves a loaded machine room and stays well under them.
            assert took < 3 * CHECK_TIMEOUT, took
            assert resp.status_code == 503
            assert resp.get_json() == {"status": "unavailable", "workers": None, "checks": {
                "database": "down: no answer within 2 s: the database server DATABASE_URL "
                            "names is overloaded, stopped or unreachable",
                "redis": "down: no answer within 2 s: the Redis REDIS_URL names is "
                         "overloaded, stopped or unreachable",
                "media": "ok"}}
        dispose(hung.database_url)
    assert [r.getMessage() for r in caplog.records if r.name == "webapp.health"] == [
        f"/healthz: the database check fails: postgresql+psycopg://vidpipe:***@127.0.0.1:"
        f"{port}/vidpipe: no answer within 2 s",
        f"/healthz: the redis check fails: redis://127.0.0.1:{port}/0: no answer within 2 s"]


def _checks_running() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("healthz-")]


def test_a_check_of_a_hung_database_or_redis_ends_soon_after_its_answer(settings):
    """The checks' threads waited out the connect timeout of the database (10 s) and Redis's
    socket timeout (10 s) after /healthz had answered: one hung thread of each per web
    worker, and a check started in the meantime found the old one's answer."""
    with silent_server() as port:
        hung = Settings.from_env(database_url=f"postgresql+psycopg://v@127.0.0.1:{port}/v",
                                 redis_url=f"redis://127.0.0.1:{port}/0")
        client = create_app(hung).test_client()
        assert client.get("/healthz").status_code == 503
        answered = time.monotonic()
        while (running := _checks_running()) and time.monotonic() < answered + 10:
            time.sleep(0.05)
        # The threads end CHECK_GIVES_UP after they started, 1 s after the answer; they
        # waited 10 s. 2 s more leave a loaded machine room and still tell them apart.
        assert time.monotonic() - answered < CHECK_GIVES_UP - CHECK_TIMEOUT + 2, running
        dispose(hung.database_url)


def test_what_refuses_is_said_as_what_to_do_without_its_password(settings, tmp_path):
    port = free_port()
    refused = Settings.from_env(
        database_url=f"postgresql+psycopg://vidpipe:db-secret@127.0.0.1:{port}/vidpipe",
        redis_url=f"redis://:redis-secret@127.0.0.1:{port}/0")
    status, body, took = _health(refused)
    assert status == 503 and took < CHECK_TIMEOUT, (status, took)
    assert body["checks"] == {
        "database": "down: nothing listens at the host and port DATABASE_URL names "
                    "(connection refused): start the database, or correct DATABASE_URL",
        "redis": "down: nothing listens at the host and port REDIS_URL names (connection "
                 "refused): start Redis, or correct REDIS_URL",
        "media": "ok"}
    assert "secret" not in str(body) and str(port) not in str(body)
    dispose(refused.database_url)
    with redis_with_a_password(tmp_path) as redis_port:
        status, body, _ = _health(Settings.from_env(
            redis_url=f"redis://:the-wrong-one@127.0.0.1:{redis_port}/0"))
    assert (status, body["checks"]["redis"], body["checks"]["database"]) == (
        503, "down: Redis refuses REDIS_URL's credentials: put its password (and user) in "
             "REDIS_URL", "ok")
    assert "wrong-one" not in str(body)


def test_a_redis_database_past_the_servers_last_is_said_as_what_to_do(settings):
    """It said "Redis answers with an error (DB): Redis's log says why", which it does not."""
    past = dataclasses.replace(settings, redis_url=settings.redis_url.rsplit("/", 1)[0] + "/9999")
    status, body, _ = _health(past)
    assert (status, body["checks"]["redis"], body["checks"]["database"]) == (
        503, "down: Redis has no database of the number REDIS_URL names: set one below its "
             "`databases` setting (16 by default, numbered from 0)", "ok")


def test_a_media_root_missing_read_only_or_full_is_down_saying_which(settings, caplog):
    """/healthz said "ok" while no upload could be stored: MEDIA_ROOT deleted (or its disk
    not mounted), read-only, or on a full disk."""
    client = create_app(settings).test_client()
    media = settings.media_root

    def media_check() -> tuple[int, str]:
        resp = client.get("/healthz")
        assert resp.get_json()["checks"]["database"] == "ok"
        return resp.status_code, resp.get_json()["checks"]["media"]

    assert media_check() == (200, "ok")
    shutil.rmtree(media)
    caplog.set_level(logging.INFO, logger="webapp.health")
    for _ in range(3):
        assert media_check() == (503, "down: the folder MEDIA_ROOT names does not exist "
                                      "(deleted, or its disk not mounted?): uploads and outputs "
                                      "cannot be written; restore it")
    said = [r.getMessage() for r in caplog.records if r.name == "webapp.health"]
    assert said == [f"/healthz: the media check fails: {media}: FileNotFoundError: [Errno 2] "
                    f"No such file or directory: '{media}/" + said[0].rsplit("/", 1)[-1]], said
    with small_disk(media, 256 * 1024):
        assert media_check() == (200, "ok")
        assert caplog.records[-1].getMessage() == "/healthz: the media check passes again"
        with contextlib.suppress(OSError), open(media / "filler", "wb") as fh:
            while True:
                fh.write(bytes(4096))
                fh.flush()
        assert media_check() == (503, "down: the disk MEDIA_ROOT is on is full: uploads and "
                                      "outputs cannot be written until space is freed on it")
        (media / "filler").unlink()
        assert media_check() == (200, "ok")
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        assert media_check() == (503, "down: MEDIA_ROOT cannot be written by this web process "
                                      "(read-only file system): make it writable by the user "
                                      "it runs as")
        assert not list(Path(media).glob(".healthz-*"))  # the full disk's probes too
