"""Files reach the disk before the database points at them (webapp/services/storage.py).

A power cut cannot be made here; what can be checked is the order a power cut would find:
a file's data fsynced, then its name, before the commit that makes it a video's source or a
step's published output. Without that order the database (whose commits are on the disk)
can name a file that came back empty after the cut.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from jobs import steps
from tests import mediagen
from tests.helpers import progress_of, subtasks, upload_ok
from webapp.db import session_factory
from webapp.models import Publication
from webapp.services import progress
from webapp.services.storage import STEP_OUTPUTS


@pytest.fixture
def journal(monkeypatch) -> list[tuple[str, str]]:
    """What reaches the disk, in order: ("fsync", path), ("rename", target), ("commit", "")."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        real_replace(src, dst)
        events.append(("rename", str(Path(dst).resolve())))

    def committed(session) -> None:
        events.append(("commit", ""))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    event.listen(Session, "after_commit", committed)
    yield events
    event.remove(Session, "after_commit", committed)


@contextlib.contextmanager
def syncs_seen(settings, video_id: str, step: str) -> Iterator[dict[str, bool]]:
    """Within: every fsync, by the path synced, with whether the step's outputs were already
    published (the publication row committed) at that moment."""
    sessions = session_factory(settings.database_url)
    synced: dict[str, bool] = {}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        with sessions() as session:
            published = session.get(Publication, (video_id, step)) is not None
        synced[os.readlink(f"/proc/self/fd/{fd}")] = published
        real_fsync(fd)

    os.fsync = fsync
    try:
        yield synced
    finally:
        os.fsync = real_fsync


def published_folder(settings, video_id: str, step: str) -> Path:
    with session_factory(settings.database_url)() as session:
        folder = session.get(Publication, (video_id, step)).folder
    return Path(settings.media_root).resolve() / "videos" / video_id / folder


def test_an_upload_is_on_the_disk_before_its_video_is_committed(client, settings, tmp_path,
                                                                 journal):
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=1.0)
    journal.clear()
    video = upload_ok(client, clip)
    root = Path(settings.media_root).resolve()
    source = next((root / "videos" / video["id"]).glob("source.*"))
    renamed = journal.index(("rename", str(source)))
    commit = journal.index(("commit", ""), renamed)
    before_rename = [path for kind, path in journal[:renamed] if kind == "fsync"]
    assert any(Path(p).parent == root / "staging" for p in before_rename), journal
    synced_after = [path for kind, path in journal[renamed:commit] if kind == "fsync"]
    # the rename, the new video folder and videos/ itself: every name on the way to it
    for folder in (source.parent, source.parent.parent, root):
        assert str(folder) in synced_after, (folder, journal)
    assert source.stat().st_size == clip.stat().st_size


def test_a_steps_outputs_are_on_the_disk_before_they_are_published(client, settings,
                                                                   tmp_path):
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=2.0)
    video_id = upload_ok(client, clip)["id"]
    task_id = client.post(f"/api/v1/videos/{video_id}/run_sync").get_json()["task_id"]
    with syncs_seen(settings, video_id, "thumbnails") as synced:
        assert steps.thumbnails(task_id) == "completed"
    assert subtasks(progress_of(client, video_id))["thumbnails"]["status"] == "completed"
    path = published_folder(settings, video_id, "thumbnails")
    root = Path(settings.media_root).resolve()
    # its files, its folder and every folder on the way to it, all new for this attempt
    expected = [path / name for name in STEP_OUTPUTS["thumbnails"]]
    expected += [path, *[p for p in path.parents if p.is_relative_to(root)]]
    for item in expected:
        assert str(item) in synced, (item, sorted(synced))
        assert synced[str(item)] is False, f"{item} was synced after the step was published"
        assert not item.is_file() or item.stat().st_size > 0


def test_a_remote_workers_outputs_are_on_the_disk_before_they_are_published(
        settings, tmp_path, monkeypatch):
    from webapp import create_app

    token = "worker-token-for-durability-0123"
    client = create_app(settings.__class__.from_env(worker_token=token)).test_client()
    video_id = upload_ok(client, mediagen.make_video(tmp_path / "clip.mp4", duration=1.0))["id"]
    task_id = client.post(f"/api/v1/videos/{video_id}/reprocess").get_json()["task_id"]
    with session_factory(settings.database_url)() as session:  # as a remote worker starts it
        attempt = progress.start_subtask(session, task_id, "thumbnails")
    steps_url = f"/internal/v1/tasks/{task_id}/steps/thumbnails/{attempt}"
    auth = {"Authorization": f"Bearer {token}"}
    files = {}
    for name in STEP_OUTPUTS["thumbnails"]:
        body = f"the {name} a worker made".encode()
        files[name] = hashlib.sha256(body).hexdigest()
        resp = client.put(f"{steps_url}/files/{name}", data=body,
                          headers={**auth, "X-Sha256": files[name]})
        assert resp.status_code == 201, resp.get_json()
    with syncs_seen(settings, video_id, "thumbnails") as synced:
        resp = client.post(f"{steps_url}/complete", json={"files": files}, headers=auth)
    assert resp.status_code == 200, resp.get_json()
    path = published_folder(settings, video_id, "thumbnails")
    for item in [*(path / name for name in files), path, path.parent]:
        assert synced.get(str(item)) is False, (item, synced)
