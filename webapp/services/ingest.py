"""Accepting uploads (probe, store, record) and removing videos with everything they own."""

from __future__ import annotations

import dataclasses
import logging
import os
import unicodedata
from pathlib import Path
from typing import IO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from webapp.config import Settings
from webapp.models import Video
from webapp.services import integrity, mediainput, progress, search
from webapp.services.errors import (
    UPLOAD_DISK_FULL,
    Conflict,
    InsufficientStorage,
    InvalidMedia,
    is_disk_full,
)
from webapp.services.ffrun import MediaError
from webapp.services.media.probe import NoStreams, ProbeResult, probe
from webapp.services.mediainput import Deadline, ProbeTimeout
from webapp.services.processing import get_video
from webapp.services.storage import StagedFile, Storage

log = logging.getLogger(__name__)
_CHUNK = 1024 * 1024


_MAX_NAME = 255
# Control, format (bidi overrides, zero-width), unassigned, private-use, line/paragraph breaks.
_DROPPED = {"Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp"}


def clean_filename(name: str | None) -> str:
    """The original name as display metadata only (files are stored under generated names).

    No path, no control, bidi or line-break characters, not just dots and spaces, and at
    most 255 characters, keeping the extension when it has to be shortened.
    """
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in _DROPPED)
    name = unicodedata.normalize("NFC", name).strip()
    if not name.strip(". "):
        return "upload"
    if len(name) > _MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and len(ext) <= 16:
            name = stem[: _MAX_NAME - len(ext) - 1] + dot + ext
        else:
            name = name[:_MAX_NAME]
    return name


def _stored_name(format_name: str) -> str:
    """The stored source's name: "source" and the suffix of the probed format, never the
    client's (a name like "source.m3u8" tells tools to read the file as something else)."""
    return "source" + mediainput.stored_suffix(format_name)


def _has_packets(path: Path, format_name: str, deadline: Deadline) -> bool:
    """Whether the file holds at least one audio/video packet (reads only the first one).

    A container can declare streams and hold nothing, e.g. a WAV header with no samples;
    probe then finds no duration, and processing would "complete" with empty outputs.
    """
    try:
        info = mediainput.ffprobe(path, "-show_packets", "-read_intervals", "%+#1",
                                  format_name=format_name, timeout=deadline.left())
    except ProbeTimeout:
        raise
    except MediaError:
        return False
    return bool(info.get("packets"))


def _whole_media(path: Path, deadline: Deadline) -> ProbeResult:
    """Probe the upload; InvalidMedia unless it is audio/video with all its data there."""
    try:
        info = probe(path, timeout=deadline.left())
    except ProbeTimeout:
        raise
    except MediaError as exc:
        # (An MP4 that was read and holds nothing to show is whole: it says so itself. So
        # is one whose index is all there but names no track.)
        if (integrity.starts_like_mp4(path) and not isinstance(exc, NoStreams)
                and not integrity.has_whole_mp4_index(path)):
            raise InvalidMedia("the file is incomplete: its MP4 index (moov atom) is missing"
                               " or cut off; upload it again") from None
        raise InvalidMedia(str(exc)) from None
    if info.duration is None:
        if not _has_packets(path, info.format_name, deadline):
            raise InvalidMedia("the file has audio or video streams but no data in them")
        # (Without one, the storyboard cannot be planned, nor a step's output checked.)
        info = dataclasses.replace(
            info, duration=integrity.measure_length(path, info.format_name, deadline))
    cut = integrity.find_cut(path, info.format_name, info.duration, deadline)
    if cut is not None:
        raise InvalidMedia(f"{cut}; upload it again")
    read = integrity.length_across_jumps(path, info.format_name, info.duration, deadline)
    if read is not None:  # (MPEG-TS/PS whose timestamps jump: the length ffmpeg reads)
        info = dataclasses.replace(info, duration=read)
    return info


def _checked(path: Path, timeout: float | None) -> ProbeResult:
    """_whole_media within `timeout` seconds in all (None: no limit)."""
    try:
        return _whole_media(path, Deadline(timeout))
    except ProbeTimeout:
        log.warning("upload %s: its checks took longer than %s s", path.name, timeout)
        raise InvalidMedia(f"the file could not be read within the {timeout:g} s this server"
                           " allows for checking an upload; it may be damaged, or not an"
                           " ordinary audio or video file") from None


def _staged(storage: Storage, stream: IO[bytes]) -> StagedFile:
    """The upload as a file in this storage's staging folder.

    Uploads through the web app already are one (the request spools the file part straight
    into staging, see webapp.uploads.UploadRequest): it is taken as it is, not copied. Any other
    stream is copied into a new staged file.
    """
    if (isinstance(stream, StagedFile) and stream.staged
            and stream.path.parent == storage.staging_dir):
        stream.flush()
        return stream
    staged = storage.staging_file()
    try:
        while chunk := stream.read(_CHUNK):
            staged.write(chunk)
        staged.flush()
    except BaseException:
        staged.close()
        raise
    return staged


def ingest(session: Session, storage: Storage, stream: IO[bytes], filename: str | None,
           probe_timeout: float | None = Settings.probe_timeout, *,
           requested_language: str | None = None, translate: bool = False) -> Video:
    """Store an upload and record it; InvalidMedia (nothing kept) if it is not audio/video
    of an accepted format, or cannot be checked within probe_timeout seconds;
    InsufficientStorage (nothing kept) if a disk fills up meanwhile.

    The staged file is closed either way: moved into the video's folder, or deleted.
    `requested_language` (a checked code, None to detect it) and `translate` are how the
    video's runs transcribe it.
    """
    video_id: str | None = None
    try:
        staged_file = _staged(storage, stream)
    except OSError as exc:
        if is_disk_full(exc):
            raise InsufficientStorage(UPLOAD_DISK_FULL) from None
        raise
    staged = staged_file.path
    try:
        size = os.fstat(staged_file.fileno()).st_size
        if size == 0:
            raise InvalidMedia("the uploaded file is empty")
        info = _checked(staged, probe_timeout)
        original = clean_filename(filename)
        video = Video(
            original_filename=original, stored_name=_stored_name(info.format_name),
            size_bytes=size,
            format_name=info.format_name[:64], duration=info.duration, width=info.width,
            height=info.height, has_audio=info.has_audio, has_video=info.has_video,
            video_codec=info.video_codec, audio_codec=info.audio_codec,
            requested_language=requested_language, translate=translate,
            sha256=staged_file.sha256,
        )
        session.add(video)
        session.flush()
        video_id = video.id
        search.index_name(session, video.id, original, requested_language)
        storage.adopt_source(staged_file, video.id, video.stored_name)
        session.commit()
        return video
    except BaseException as exc:
        session.rollback()
        if video_id is not None:
            storage.remove_video(video_id)
        if is_disk_full(exc):  # the file's move or sync, the database's commit
            raise InsufficientStorage(UPLOAD_DISK_FULL) from None
        raise
    finally:
        staged_file.close()  # deletes it unless adopt_source moved it


# The library's filters: what a video's latest task says (no task yet: "pending").
STATUS_FILTERS: dict[str, tuple[str, ...]] = {
    "active": ("queued", "running"),
    "completed": ("completed",),
    "failed": ("failed",),
    "cancelled": ("cancelled",),
    "pending": ("pending",),
}
SORTS = ("newest", "oldest", "name", "duration")


def _order(sort: str) -> tuple:
    """ORDER BY of a sort (SORTS); the id last, so that pages never overlap."""
    if sort == "oldest":
        return (Video.created_at.asc(), Video.id)
    if sort == "name":
        return (func.lower(Video.original_filename), Video.created_at.desc(), Video.id)
    if sort == "duration":  # longest first; files of unknown length last
        return (Video.duration.is_(None), Video.duration.desc(), Video.created_at.desc(),
                Video.id)
    return (Video.created_at.desc(), Video.id)


def list_videos(session: Session, page: int, page_size: int, *, status: str | None = None,
                sort: str = "newest") -> tuple[list[Video], int]:
    """One page of videos and the total count (their progress prefetched): newest first by
    default, or oldest first, by name, longest first (`sort`); with `status` (a key of
    STATUS_FILTERS), only videos whose latest run is in that state."""
    assert sort in SORTS and (status is None or status in STATUS_FILTERS), (sort, status)
    where = ()
    if status is not None:
        latest = progress.latest_status(Video.id)
        wanted = [s for s in STATUS_FILTERS[status] if s != "pending"]
        clause = latest.in_(wanted)
        if "pending" in STATUS_FILTERS[status]:
            clause = latest.is_(None) if not wanted else clause | latest.is_(None)
        where = (clause,)
    total = session.scalar(select(func.count()).select_from(Video).where(*where)) or 0
    offset = (page - 1) * page_size
    if offset >= total:
        # Past the end, and huge page numbers would overflow the database's integers.
        return [], total
    stmt = select(Video).where(*where).order_by(*_order(sort)).offset(offset).limit(page_size)
    videos = list(session.scalars(stmt))
    # Every list shows each video's progress: read the page's latest tasks in one query
    # rather than two per video.
    progress.prefetch_progress(session, [v.id for v in videos])
    return videos, total


def delete_video(session: Session, storage: Storage, video_id: str) -> None:
    """Remove the video, its tasks, its search entries and all its files (409 while a task
    is active)."""
    video = get_video(session, video_id)
    active = progress.active_task(session, video_id)
    if active is not None:
        raise Conflict(f"video {video_id} is being processed by task {active.id}; cancel it first",
                       task_id=active.id)
    session.delete(video)
    session.commit()
    storage.remove_video(video_id)
