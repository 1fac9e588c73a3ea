"""Published outputs: which attempt's files every reader sees, and the switch to new ones.

A step's attempt writes into a folder of its own (Storage.attempt_folder). The row of
(video, step) in `publications` names the folder that is published; it switches in the
transaction that marks the attempt's step completed (progress.complete_subtask), so the API,
the UI and downloads only ever see complete sets that a completed step produced, and a
cancelled, failed or crashed run leaves the published files untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from webapp.models import ProcessingTask, Publication, SubTask, utcnow
from webapp.services.storage import (
    ALL_ARTIFACT_NAMES,
    RUNS,
    STEP_OUTPUTS,
    ArtifactFile,
    Storage,
    step_of,
)


def published(session: Session, video_id: str) -> dict[str, Publication]:
    """step -> its publication, for the steps of the video that have one."""
    rows = session.scalars(select(Publication).where(Publication.video_id == video_id))
    return {row.step: row for row in rows}


def artifacts(session: Session, storage: Storage, video_id: str) -> list[ArtifactFile]:
    """Every published output of the video that is on disk, in ALL_ARTIFACT_NAMES order."""
    found = published(session, video_id)
    files = []
    for name in ALL_ARTIFACT_NAMES:
        pub = found.get(step_of(name) or "")
        if pub is not None:
            artifact = storage.artifact_in(video_id, pub.folder, name, pub.task_id)
            if artifact is not None:
                files.append(artifact)
    return files


def artifact(session: Session, storage: Storage, video_id: str,
             name: str) -> ArtifactFile | None:
    """One published output, or None if it is not published (or not on disk)."""
    step = step_of(name)
    if step is None:
        return None
    pub = session.get(Publication, (video_id, step))
    return storage.artifact_in(video_id, pub.folder, name, pub.task_id) if pub else None


# What run_sync reads on every trigger, built once and run on the session's connection
# (see processing._TRIGGER_VIDEO): the published folders, and how the transcript was made.
_PUBLISHED = Publication.__table__
_TASKS = ProcessingTask.__table__
_FOLDERS = select(_PUBLISHED.c.step, _PUBLISHED.c.folder, _PUBLISHED.c.task_id).where(
    _PUBLISHED.c.video_id == bindparam("video_id"))
_MADE_WITH = select(_TASKS.c.language, _TASKS.c.translate).where(
    _TASKS.c.id == bindparam("task_id"))


def complete_steps(session: Session, storage: Storage, video_id: str,
                   language: str | None = None, translate: bool = False) -> set[str]:
    """Steps whose published outputs are all on disk and were made the way a run now asks
    for (a transcript in the same `language`, None = detected, with or without
    `translate`): what run_sync may keep."""
    connection = session.connection()
    found = {row.step: row for row in connection.execute(_FOLDERS, {"video_id": video_id})}
    kept = {step for step, pub in found.items()
            if storage.outputs_complete(video_id, pub.folder, step)}
    if "transcribe" in kept:
        made = connection.execute(_MADE_WITH, {"task_id": found["transcribe"].task_id}).first()
        if made is None or (made.language, bool(made.translate)) != (language, translate):
            kept.discard("transcribe")
    return kept


def with_step(session: Session, video_ids: Iterable[str], step: str) -> set[str]:
    """Which of these videos have `step` published (one query, e.g. posters of a page)."""
    ids = list(video_ids)
    if not ids:
        return set()
    return set(session.scalars(select(Publication.video_id).where(
        Publication.video_id.in_(ids), Publication.step == step)))


def published_steps(session: Session, video_ids: Iterable[str]) -> dict[str, set[str]]:
    """video id -> the steps it has published, for these videos (one query, e.g. a page)."""
    ids = list(video_ids)
    found: dict[str, set[str]] = {video_id: set() for video_id in ids}
    if ids:
        for video_id, step in session.execute(select(
                Publication.video_id, Publication.step).where(Publication.video_id.in_(ids))):
            found[video_id].add(step)
    return found


def switch(session: Session, video_id: str, step: str, task_id: str, attempt: int,
           folder: str) -> str | None:
    """Publish an attempt's folder for (video, step) in the caller's transaction.

    Returns the folder it replaced (to delete once committed), None if there was none.
    Only the progress service calls this, after its conditional write proved the attempt
    current: at most one attempt of a video's step can get here at a time.
    """
    assert step in STEP_OUTPUTS, step
    old = session.scalar(select(Publication.folder).where(
        Publication.video_id == video_id, Publication.step == step))
    values = {"task_id": task_id, "attempt": attempt, "folder": folder,
              "published_at": utcnow()}
    if old is None:
        session.execute(insert(Publication).values(video_id=video_id, step=step, **values))
    else:
        session.execute(update(Publication).where(
            Publication.video_id == video_id, Publication.step == step).values(**values)
            .execution_options(synchronize_session=False))
    return old if old != folder else None


def collect_garbage(session: Session, storage: Storage, video_id: str) -> list[str]:
    """Delete the video's output folders that nobody reads or writes any more.

    Kept: published folders, and the folders of attempts still running. Gone: replaced
    sets, and what cancelled, failed, superseded or crashed attempts left. Returns the
    folders removed. Disk use per video stays bounded by the published set plus the
    running attempts'.
    """
    # The order matters. Folders are listed before the database is read: an attempt makes
    # its folder after it is recorded running, so a folder seen here whose attempt started
    # is seen running below. Running attempts are read before publications: an attempt
    # that completes in between has published its folder by the second read.
    on_disk = storage.output_folders(video_id)
    running = session.execute(
        select(SubTask.task_id, SubTask.name, SubTask.attempt)
        .join(ProcessingTask, ProcessingTask.id == SubTask.task_id)
        .where(ProcessingTask.video_id == video_id, SubTask.status == "running")).all()
    keep = {f"{RUNS}/{task_id}/{step}.{attempt}" for task_id, step, attempt in running}
    keep.update(session.scalars(select(Publication.folder).where(
        Publication.video_id == video_id)))
    removed = [folder for folder in on_disk if folder not in keep]
    for folder in removed:
        storage.remove_folder(video_id, folder)
    return removed
