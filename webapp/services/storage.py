"""Where files live under MEDIA_ROOT: sources, the folders of runs' outputs, staged uploads.

    videos/<video id>/source.<ext>                          the upload
    videos/<video id>/runs/<task id>/<step>.<attempt>/...   one attempt's outputs of a step

Which attempt's folder a reader sees for a step is a database fact (webapp.services.
publications); this module only does the path arithmetic and the file moves.

Files are on the disk before the database points at them: an upload is fsynced before its
video row commits, an attempt's folder before the transaction that publishes it (sync_folder).
Without it a power cut after the commit could leave a completed step or an accepted upload
whose file is empty or cut short: the database survives a crash (its commits are fsynced),
a file's data can still be in the page cache, and a rename can reach the disk before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mimetypes
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

# The artifacts every completed step produces, by step.
STEP_OUTPUTS: dict[str, tuple[str, ...]] = {
    "extract_audio": ("audio.wav",),
    "transcribe": ("transcript.json", "captions.vtt", "captions.srt"),
    "thumbnails": ("poster.jpg", "storyboard.jpg", "storyboard.vtt"),
    "transcode": ("preview.mp4",),
}
ARTIFACT_NAMES: tuple[str, ...] = tuple(n for names in STEP_OUTPUTS.values() for n in names)
# Artifacts a step produces only when asked to: English captions translated by whisper
# (translate=true, and speech that is not already English).
TRANSLATED_CAPTIONS = ("captions.en.vtt", "captions.en.srt")
OPTIONAL_OUTPUTS: dict[str, tuple[str, ...]] = {"transcribe": TRANSLATED_CAPTIONS}
# Every name a run can publish, in the order lists show them (each step's own together).
ALL_ARTIFACT_NAMES: tuple[str, ...] = tuple(
    n for step, names in STEP_OUTPUTS.items() for n in (*names, *OPTIONAL_OUTPUTS.get(step, ())))
_MIME_OVERRIDES = {".vtt": "text/vtt", ".srt": "application/x-subrip", ".wav": "audio/wav"}
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


RUNS = "runs"
LEGACY_FOLDER = "artifacts"  # where every run wrote before outputs were versioned


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    path: Path
    size_bytes: int
    mime_type: str
    step: str = ""
    task_id: str | None = None  # the task whose run produced it


def step_of(name: str) -> str | None:
    """The step that produces the artifact `name`, None for unknown names."""
    return next((step for step, names in STEP_OUTPUTS.items()
                 if name in names or name in OPTIONAL_OUTPUTS.get(step, ())), None)


def is_valid_id(value: str) -> bool:
    """True for the canonical lowercase UUIDs this service hands out."""
    return bool(_UUID_RE.match(value))


def mime_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    guessed = _MIME_OVERRIDES.get(suffix) or mimetypes.guess_type(name)[0]
    return guessed or "application/octet-stream"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class StagedFile(io.BufferedRandom):
    """An upload being received, written straight into MEDIA_ROOT/staging.

    Closing it deletes it (the request closes it when it ends, whatever happened, and garbage
    collection closes it too), unless `move_to` gave it its final name first: a rename on the
    same filesystem, so an accepted upload is written to disk once and never copied.
    Its sha256 is computed as it is written (`sha256`), so recording it reads nothing again.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(path, "x+"))  # a new file (O_EXCL), read and write
        self.path = path
        self.staged = True  # False once moved into place or deleted
        self._hash = hashlib.sha256()

    def write(self, data) -> int:  # appends only: nothing seeks back into an upload
        written = super().write(data)
        self._hash.update(memoryview(data)[:written])
        return written

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written so far."""
        return self._hash.hexdigest()

    def move_to(self, target: Path) -> None:
        """Move the upload to `target`, durably (the module docstring)."""
        if not self.staged:
            raise ValueError("the staged file was already moved or deleted")
        self.flush()
        os.fsync(self.fileno())
        os.replace(self.path, target)
        self.staged = False

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.staged:
                self.staged = False
                self.path.unlink(missing_ok=True)


def sync_file(path: Path) -> None:
    """fsync a file's data (written by another process or descriptor) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dirs(folder: Path, up_to: Path | None = None) -> None:
    """fsync `folder`, then each folder above it up to and including `up_to` (only
    `folder` without it): the entries made in them (renames, new folders) are then on the
    disk."""
    folder = Path(folder)
    stop = Path(up_to).resolve() if up_to is not None else folder.resolve()
    for current in (folder.resolve(), *folder.resolve().parents):
        fd = os.open(current, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if current == stop or not current.is_relative_to(stop):
            break


class Storage:
    """Path arithmetic and file moves below one media root; never writes outside it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def video_dir(self, video_id: str) -> Path:
        if not is_valid_id(video_id):
            raise ValueError(f"invalid video id {video_id!r}")
        return self.root / "videos" / video_id

    def source_path(self, video_id: str, stored_name: str) -> Path:
        return self.video_dir(video_id) / stored_name

    def attempt_folder(self, task_id: str, step: str, attempt: int) -> str:
        """Where one attempt of a step writes, relative to its video's folder.

        Every attempt has its own: two attempts of a step never share a file name, and an
        attempt that is cancelled, superseded or crashes leaves the published set alone.
        """
        if not is_valid_id(task_id) or step not in STEP_OUTPUTS or attempt < 1:
            raise ValueError(f"invalid attempt {task_id!r}/{step!r}/{attempt!r}")
        return f"{RUNS}/{task_id}/{step}.{attempt}"

    def folder_path(self, video_id: str, folder: str) -> Path:
        path = (self.video_dir(video_id) / folder).resolve()
        if not path.is_relative_to(self.video_dir(video_id)) or path == self.video_dir(video_id):
            raise ValueError(f"folder {folder!r} is outside the video's folder")
        return path

    def artifact_in(self, video_id: str, folder: str, name: str,
                    task_id: str | None = None) -> ArtifactFile | None:
        """The artifact `name` in an output folder if it exists there, else None."""
        step = step_of(name)
        if step is None:
            return None
        path = self.folder_path(video_id, folder) / name
        try:
            size = path.stat().st_size
        except OSError:
            return None
        return ArtifactFile(name, path, size, mime_type(name), step, task_id)

    def outputs_complete(self, video_id: str, folder: str, step: str) -> bool:
        """Whether the folder holds every output of `step` (captions of silence are empty;
        optional outputs are not required)."""
        return all(self.artifact_in(video_id, folder, n) is not None
                   for n in STEP_OUTPUTS[step])

    def remove_folder(self, video_id: str, folder: str) -> None:
        """Delete an output folder, and its task's folder once that is empty."""
        path = self.folder_path(video_id, folder)
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # runs/<task id>/, if nothing else is in it

    def output_folders(self, video_id: str) -> list[str]:
        """Every output folder of the video on disk (attempt folders, and the folder where
        runs wrote before outputs were versioned)."""
        video_dir = self.video_dir(video_id)
        found = [f"{RUNS}/{p.parent.name}/{p.name}"
                 for p in sorted((video_dir / RUNS).glob("*/*")) if p.is_dir()]
        if (video_dir / LEGACY_FOLDER).is_dir():
            found.append(LEGACY_FOLDER)
        return found

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    def staging_path(self) -> Path:
        """A fresh path for an upload that has not been accepted yet."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        return self.staging_dir / uuid.uuid4().hex

    def staging_file(self) -> StagedFile:
        """A new, empty file in staging, deleted when closed unless moved into place."""
        return StagedFile(self.staging_path())

    def adopt_source(self, staged: StagedFile, video_id: str, stored_name: str) -> Path:
        """Move an accepted upload from staging to its video folder, on the disk when this
        returns (file, rename, and the new video folder)."""
        target = self.source_path(video_id, stored_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.move_to(target)
        sync_dirs(target.parent, self.root)
        return target

    def sync_folder(self, video_id: str, folder: str) -> None:
        """Put an output folder on the disk before it is published: its files' data, then
        the folder and those above it up to MEDIA_ROOT (the folders are new for each
        attempt, and their entries are what makes the files reachable)."""
        path = self.folder_path(video_id, folder)
        for child in sorted(path.iterdir()):
            if child.is_file():
                sync_file(child)
        sync_dirs(path, self.root)

    def remove_video(self, video_id: str) -> None:
        shutil.rmtree(self.video_dir(video_id), ignore_errors=True)
