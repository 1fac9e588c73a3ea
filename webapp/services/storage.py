"""Where files live under MEDIA_ROOT: sources, artifacts, and staged uploads."""

from __future__ import annotations

import io
import mimetypes
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

# Every artifact a run can produce, by the step that produces it.
STEP_OUTPUTS: dict[str, tuple[str, ...]] = {
    "extract_audio": ("audio.wav",),
    "transcribe": ("transcript.json", "captions.vtt", "captions.srt"),
    "thumbnails": ("poster.jpg", "storyboard.jpg", "storyboard.vtt"),
    "transcode": ("preview.mp4",),
}
ARTIFACT_NAMES: tuple[str, ...] = tuple(n for names in STEP_OUTPUTS.values() for n in names)
_MIME_OVERRIDES = {".vtt": "text/vtt", ".srt": "application/x-subrip", ".wav": "audio/wav"}
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    path: Path
    size_bytes: int
    mime_type: str


def is_valid_id(value: str) -> bool:
    """True for the canonical lowercase UUIDs this service hands out."""
    return bool(_UUID_RE.match(value))


def mime_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    guessed = _MIME_OVERRIDES.get(suffix) or mimetypes.guess_type(name)[0]
    return guessed or "application/octet-stream"


class StagedFile(io.BufferedRandom):
    """An upload being received, written straight into MEDIA_ROOT/staging.

    Closing it deletes it (the request closes it when it ends, whatever happened, and garbage
    collection closes it too), unless `move_to` gave it its final name first: a rename on the
    same filesystem, so an accepted upload is written to disk once and never copied.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(path, "x+"))  # a new file (O_EXCL), read and write
        self.path = path
        self.staged = True  # False once moved into place or deleted

    def move_to(self, target: Path) -> None:
        if not self.staged:
            raise ValueError("the staged file was already moved or deleted")
        self.flush()
        os.replace(self.path, target)
        self.staged = False

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.staged:
                self.staged = False
                self.path.unlink(missing_ok=True)


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

    def artifacts_dir(self, video_id: str) -> Path:
        return self.video_dir(video_id) / "artifacts"

    def artifact_path(self, video_id: str, name: str) -> Path:
        if name not in ARTIFACT_NAMES:
            raise ValueError(f"unknown artifact {name!r}")
        return self.artifacts_dir(video_id) / name

    def artifact(self, video_id: str, name: str) -> ArtifactFile | None:
        """The artifact if it exists on disk, else None."""
        if name not in ARTIFACT_NAMES:
            return None
        path = self.artifact_path(video_id, name)
        if not path.is_file():
            return None
        return ArtifactFile(name, path, path.stat().st_size, mime_type(name))

    def list_artifacts(self, video_id: str) -> list[ArtifactFile]:
        found = (self.artifact(video_id, name) for name in ARTIFACT_NAMES)
        return [a for a in found if a is not None]

    def step_outputs_exist(self, video_id: str, step: str) -> bool:
        return all(self.artifact(video_id, n) is not None for n in STEP_OUTPUTS[step])

    def remove_step_outputs(self, video_id: str, step: str) -> None:
        """Delete a step's outputs, and the partial files an interrupted run may have left."""
        for name in STEP_OUTPUTS[step]:
            path = self.artifact_path(video_id, name)
            path.unlink(missing_ok=True)
            path.with_name(f".{path.stem}.part{path.suffix}").unlink(missing_ok=True)

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
        """Move an accepted upload from staging to its video folder."""
        target = self.source_path(video_id, stored_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir(video_id).mkdir(exist_ok=True)
        staged.move_to(target)
        return target

    def remove_video(self, video_id: str) -> None:
        shutil.rmtree(self.video_dir(video_id), ignore_errors=True)
