"""How ffprobe, ffmpeg and PyAV open an upload: as one local file, in an accepted format.

An upload is whatever its sender made it, and ffmpeg reads much more than audio and video:
playlists (hls) and lists of files (concat) that name other files, image sequences
(image2), network session descriptions (sdp), subtitles and plain text. With ffmpeg's
defaults such a file makes ffmpeg open what it names (another video's source under
MEDIA_ROOT, any file with a media extension) or listen and connect where it says. So every
tool run on an upload gets:

- the path as a `file:` URL and `protocol_whitelist=file`: a local file, no name read as
  another protocol (`concat:`, `subfile,,`), no network;
- `format_whitelist` = the demuxers of FORMATS: ffmpeg refuses any other format before it
  reads the file's header, and hands the list on to a demuxer opened inside a container
  (the subtitles an AVI file may embed, the old "HLS inside AVI" trick);
- once the upload is probed, `-f <its demuxer>`: no later run guesses the format again,
  so a stored file is read as what it was accepted as, or refused.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import ffmpeg
from ffmpeg.nodes import FilterableStream

from webapp.services.ffrun import MediaError


class Format(NamedTuple):
    suffix: str  # of a stored source of this format
    label: str  # for people


# The accepted demuxers (ffmpeg's names). Only containers that read their own bytes and
# nothing else: no playlists, lists, image sequences, session descriptions, subtitles,
# text, or raw elementary streams.
FORMATS: dict[str, Format] = {
    "mov": Format(".mp4", "MP4/MOV/M4A/3GP"),  # one demuxer: "mov,mp4,m4a,3gp,3g2,mj2"
    "matroska": Format(".mkv", "Matroska/WebM"),  # "matroska,webm"
    "avi": Format(".avi", "AVI"),
    "asf": Format(".asf", "ASF (WMV/WMA)"),
    "flv": Format(".flv", "FLV"),
    "mpegts": Format(".ts", "MPEG-TS"),
    "mpeg": Format(".mpg", "MPEG-PS (MPG/VOB)"),
    "mxf": Format(".mxf", "MXF"),
    "dv": Format(".dv", "DV"),
    "ogg": Format(".ogg", "Ogg"),
    "wav": Format(".wav", "WAV"),
    "w64": Format(".w64", "Wave64"),
    "aiff": Format(".aiff", "AIFF"),
    "caf": Format(".caf", "CAF"),
    "mp3": Format(".mp3", "MP3"),
    "aac": Format(".aac", "AAC (ADTS)"),
    "flac": Format(".flac", "FLAC"),
    "ac3": Format(".ac3", "AC-3"),
    "eac3": Format(".eac3", "E-AC-3"),
    "amr": Format(".amr", "AMR"),
    "wv": Format(".wv", "WavPack"),
}
ACCEPTED = ", ".join(f.label for f in FORMATS.values())  # for people, e.g. the API docs
FORMAT_WHITELIST = ",".join(FORMATS)

# What refused formats are, in words (others are named by their demuxer alone).
_KINDS = {"hls": "a playlist", "concat": "a list of files", "sdp": "a stream description",
          "image2": "an image", "gif": "an image", "webp": "an image", "tty": "text",
          "srt": "subtitles", "ass": "subtitles", "webvtt": "subtitles"}
# ffmpeg's complaint when the probed demuxer is not on the list: "[hls @ 0x55d1c2] Format ..."
_NOT_ON_LIST = re.compile(r"\[([\w,]+)(?: @ 0x[0-9a-f]+)?\] Format not on whitelist")


class ProbeTimeout(MediaError):
    """Looking at an upload took longer than its time limit (PROBE_TIMEOUT)."""


def demuxer(format_name: str | None) -> str | None:
    """The accepted demuxer a probed format name names ("mov,mp4,m4a,3gp,3g2,mj2" -> "mov"),
    None when it names none."""
    return next((name for name in (format_name or "").split(",") if name in FORMATS), None)


# Names for people of what a demuxer read, where one demuxer reads several kinds of file:
# the file's extension tells which (ffprobe's format_name is the demuxer's whole list,
# "mov,mp4,m4a,3gp,3g2,mj2", whatever the file is).
_BY_SUFFIX: dict[str, dict[str, str]] = {
    "mov": {".mov": "QuickTime", ".qt": "QuickTime", ".m4a": "M4A (MPEG-4 audio)",
            ".m4b": "M4A (MPEG-4 audio)", ".m4v": "MP4", ".3gp": "3GP", ".3g2": "3G2",
            ".mj2": "Motion JPEG 2000"},
    "matroska": {".webm": "WebM"},
    "asf": {".wmv": "WMV", ".wma": "WMA"},
    "mpeg": {".vob": "VOB"},
    "ogg": {".ogv": "Ogg", ".oga": "Ogg", ".opus": "Opus (Ogg)", ".spx": "Speex (Ogg)"},
}
# ... and what such a file is called when its extension says nothing.
_USUAL = {"mov": "MP4", "matroska": "Matroska", "asf": "ASF", "mpeg": "MPEG-PS"}
_WEBM_CODECS = {"vp8", "vp9", "av1", "opus", "vorbis"}


def format_label(format_name: str | None, filename: str | None = None,
                 codecs: tuple[str | None, ...] = ()) -> str:
    """The file's format as people name it ("MP4", "WebM", "QuickTime", ...), from the
    probed format and, where one demuxer reads several kinds, the file's extension (and
    for Matroska without one, whether its codecs are all WebM's)."""
    name = demuxer(format_name)
    if name is None:
        return (format_name or "unknown").split(",")[0]
    suffix = Path(filename or "").suffix.lower()
    if suffix in _BY_SUFFIX.get(name, {}):
        return _BY_SUFFIX[name][suffix]
    if name == "matroska" and suffix != ".mkv":
        present = {c for c in codecs if c}
        if present and present <= _WEBM_CODECS:
            return "WebM"
    return _USUAL.get(name, FORMATS[name].label)


def video_format(video) -> str:
    """A stored video's container as people name it (`format_label` of its row)."""
    return format_label(video.format_name, video.original_filename,
                        (video.video_codec, video.audio_codec))


def accepted(format_name: str | None) -> str:
    """The accepted demuxer of format_name, or MediaError saying the format is refused."""
    name = demuxer(format_name)
    if name is None:
        raise MediaError(refusal(format_name or "unknown"))
    return name


def stored_suffix(format_name: str) -> str:
    """The suffix a source probed as format_name is stored with: ".mp4", ".mkv", ..."""
    return FORMATS[accepted(format_name)].suffix


def refusal(format_name: str) -> str:
    """Why a file of this (not accepted) format is refused, as a reason."""
    name = format_name.split(",")[0]
    kind = _KINDS.get(name, "an image" if name.endswith("_pipe") else None)
    what = f"{kind} ({name})" if kind else f"in the {name!r} format"
    return f"it is {what}, not an audio or video file of an accepted format"


def refused_format(stderr: str | bytes) -> str | None:
    """The demuxer ffmpeg found but refused (format_whitelist), from its stderr."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    match = _NOT_ON_LIST.search(stderr)
    return match.group(1) if match else None


def url(path: Path) -> str:
    """The path as a file: URL, so that no part of it is read as another protocol."""
    return f"file:{path}"


def input_options(format_name: str | None = None) -> dict[str, str]:
    """Input options (ffmpeg.input keywords) that open an upload as described above; with
    its probed format name, the demuxer is fixed too."""
    options = {"protocol_whitelist": "file", "format_whitelist": FORMAT_WHITELIST}
    if format_name is not None:
        options["f"] = accepted(format_name)
    return options


def ffmpeg_input(src: Path, format_name: str | None, **options: Any) -> FilterableStream:
    """The source as an ffmpeg(-python) input: a local file, of its accepted format only."""
    return ffmpeg.input(url(src), **input_options(format_name), **options)


def input_args(path: Path, format_name: str | None = None) -> list[str]:
    """The same as command-line arguments, the input's URL last."""
    options = input_options(format_name)
    return [*chain.from_iterable((f"-{key}", value) for key, value in options.items()),
            url(path)]


class ProbeFailed(MediaError):
    """ffprobe exited with an error; `stderr` is its output."""

    def __init__(self, message: str, stderr: bytes = b"") -> None:
        super().__init__(message)
        self.stderr = stderr


def ffprobe(path: Path, *args: str, format_name: str | None = None,
            timeout: float | None = None) -> dict[str, Any]:
    """ffprobe's JSON answer about an upload (`args` say what to show), read safely and,
    with a timeout, within that many seconds (else ProbeTimeout)."""
    cmd = ["ffprobe", "-v", "error", "-of", "json", *args, *input_args(path, format_name)]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise MediaError("ffprobe is not installed on the server") from None
    except subprocess.TimeoutExpired:  # (run() killed it)
        raise ProbeTimeout(f"ffprobe took longer than {timeout:g} s") from None
    if done.returncode != 0:
        raise ProbeFailed(f"ffprobe exit code {done.returncode}", done.stderr)
    return json.loads(done.stdout or b"{}")


class Deadline:
    """The time left of an upload's checks (several tool runs share one limit)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._at = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        """Seconds left (None: no limit); ProbeTimeout once there are none."""
        if self._at is None:
            return None
        left = self._at - time.monotonic()
        if left <= 0:
            raise ProbeTimeout(f"the checks took longer than {self.seconds:g} s")
        return left
