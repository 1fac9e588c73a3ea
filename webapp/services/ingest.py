"""Accepting uploads (probe, store, record) and removing videos with everything they own."""

from __future__ import annotations

import logging
import re
import unicodedata
from pathlib import Path
from typing import IO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from webapp.models import Video
from webapp.services import media, progress
from webapp.services.errors import Conflict, InvalidMedia
from webapp.services.processing import get_video
from webapp.services.storage import Storage

log = logging.getLogger(__name__)
_CHUNK = 1024 * 1024


def clean_filename(name: str | None) -> str:
    """The original name as display metadata: no path, no control or bidi characters, ≤255."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = unicodedata.normalize("NFC", name).strip() or "upload"
    return name[:255]


def _stored_name(original: str) -> str:
    suffix = Path(original).suffix.lower()
    return "source" + (suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else "")


def _stream_to(stream: IO[bytes], target: Path) -> int:
    size = 0
    with open(target, "wb") as out:
        while chunk := stream.read(_CHUNK):
            out.write(chunk)
            size += len(chunk)
    return size


def ingest(session: Session, storage: Storage, stream: IO[bytes], filename: str | None) -> Video:
    """Store an upload and record it; InvalidMedia (nothing kept) if it is not audio/video."""
    staged = storage.staging_path()
    video_id: str | None = None
    try:
        size = _stream_to(stream, staged)
        if size == 0:
            raise InvalidMedia("the uploaded file is empty")
        try:
            info = media.probe(staged)
        except media.MediaError as exc:
            raise InvalidMedia(f"not a playable audio or video file: {exc}") from None
        original = clean_filename(filename)
        video = Video(
            original_filename=original, stored_name=_stored_name(original), size_bytes=size,
            format_name=info.format_name[:64], duration=info.duration, width=info.width,
            height=info.height, has_audio=info.has_audio, has_video=info.has_video,
            video_codec=info.video_codec, audio_codec=info.audio_codec,
        )
        session.add(video)
        session.flush()
        video_id = video.id
        storage.adopt_source(staged, video.id, video.stored_name)
        session.commit()
        return video
    except BaseException:
        session.rollback()
        staged.unlink(missing_ok=True)
        if video_id is not None:
            storage.remove_video(video_id)
        raise


def list_videos(session: Session, page: int, page_size: int) -> tuple[list[Video], int]:
    """One page of videos, newest first, and the total count."""
    total = session.scalar(select(func.count()).select_from(Video)) or 0
    stmt = (select(Video).order_by(Video.created_at.desc(), Video.id)
            .offset((page - 1) * page_size).limit(page_size))
    return list(session.scalars(stmt)), total


def delete_video(session: Session, storage: Storage, video_id: str) -> None:
    """Remove the video, its tasks and all its files (409 while a task is active)."""
    video = get_video(session, video_id)
    active = progress.active_task(session, video_id)
    if active is not None:
        raise Conflict(f"video {video_id} is being processed by task {active.id}; cancel it first",
                       task_id=active.id)
    session.delete(video)
    session.commit()
    storage.remove_video(video_id)
