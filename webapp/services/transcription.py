"""Speech-to-text with faster-whisper, and the JSON/WebVTT/SRT files written from a transcript."""

from __future__ import annotations

import functools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import wave
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import srt
import webvtt
from webvtt.models import Timestamp

from webapp.services import whisper_child, whisper_models
from webapp.services.errors import ToolError
from webapp.services.ffrun import ProgressCallback, Stopped, atomic_output
from webapp.services.whisper_child import short_message as _short

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

DEFAULT_MODEL = whisper_models.DEFAULT
MAX_MESSAGE = whisper_child.MAX_MESSAGE
CHILD = Path(whisper_child.__file__)
# How often `stop` is checked while whisper runs: a stop kills the child within this.
POLL = 0.05
# Lines this close together are one burst (the segments of one window).
BURST = 0.01
# Seconds between progress estimates while whisper decodes a window.
TICK = 0.25
# Whisper decodes 30 s windows of audio and reports each one's segments when it is done.
WINDOW = 30.0
# Seconds of audio per second assumed from the child's start to its first window, per
# model, so that the estimate errs on the slow side yet the first window's segments do not
# jump far ahead of it: tiny.en, model loading included, beside an ffmpeg encode on 2
# otherwise idle cores, runs at 10-14; base at 5.5-8.5 (its first window of a 36 s talk
# came after 3.5-5.5 s; at 10 the estimate reached that window's end at 3.2 s and waited
# there 2.4 s, which the ETA read as a stalled step). A model folder given by path counts
# as base.
INITIAL_RATES = {"tiny.en": 10.0, "base": 6.0}
# An estimate never reaches the end; the child's clean exit does.
MAX_SHARE = 0.99
# The translate pass's time as a share of the transcription pass's, on the same audio (base,
# 2 cores: 0.23-0.44 on German; 1.7-3 on Mandarin, whose poor translation sets off
# whisper's temperature fallback; docs/PERFORMANCE.md section 7): the transcription pass is
# 1 / (1 + TRANSLATE_COST) of a step that translates too.
TRANSLATE_COST = 0.5
NOTHING_TO_TRANSLATE = "nothing to translate: the speech is in English"
NO_SPEECH_TO_TRANSLATE = "nothing to translate: no speech was found"


class TranscriptionError(ToolError):
    """Transcription failed: str(exc) is one sentence a user can act on, `detail` the
    library's own message (server paths removed) or None."""


_FAILED = "The speech could not be transcribed"


@dataclass(frozen=True)
class Word:
    start: float  # seconds
    end: float
    text: str  # as whisper wrote it: a leading space where the script puts spaces


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str
    words: tuple[Word, ...] = ()  # timed words (empty in transcripts made before them)


@dataclass(frozen=True)
class Transcript:
    language: str | None  # ISO 639-1 code, detected or asked for; None: no speech to tell
    duration: float  # seconds of audio
    segments: list[Segment]
    language_probability: float | None = None  # whisper's confidence in `language`
    translation: Transcript | None = None  # English, from whisper's translate task
    translation_note: str | None = None  # why there is none although one was asked for

    @property
    def text(self) -> str:
        # Chinese and Japanese put no spaces between sentences either.
        joiner = "" if self.language in NO_SPACES else " "
        return joiner.join(s.text for s in self.segments).strip()

    def to_dict(self) -> dict[str, Any]:
        data = {
            "language": self.language,
            "language_probability": self.language_probability,
            "duration": self.duration,
            "segments": [{"start": s.start, "end": s.end, "text": s.text,
                          "words": [{"start": w.start, "end": w.end, "word": w.text}
                                    for w in s.words]}
                         for s in self.segments],
            "text": self.text,
        }
        if self.translation is not None or self.translation_note is not None:
            data["translation"] = self.translation.to_dict() if self.translation else None
            data["translation_note"] = self.translation_note
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transcript:
        """Inverse of to_dict, e.g. to re-render captions from a stored transcript.json."""
        segments = [Segment(float(s["start"]), float(s["end"]), str(s["text"]),
                            tuple(Word(float(w["start"]), float(w["end"]), str(w["word"]))
                                  for w in s.get("words") or ()))
                    for s in data["segments"]]
        language, probability = data["language"], data.get("language_probability")
        translation = data.get("translation")
        return cls(None if language is None else str(language), float(data["duration"]),
                   segments, None if probability is None else float(probability),
                   cls.from_dict(translation) if translation else None,
                   data.get("translation_note"))


# Languages written without spaces, not even between sentences.
NO_SPACES = frozenset({"zh", "ja", "yue"})


def resolve_model_path(name: str) -> Path:
    """Map a model name to a local directory; never downloads anything."""
    try:
        return whisper_models.model_dir(name)
    except whisper_models.ModelError as exc:
        raise TranscriptionError(f"{_FAILED}: {exc}") from None


def load_model(name: str = DEFAULT_MODEL, cpu_threads: int = 0) -> WhisperModel:
    """Load (once per process) a CTranslate2 whisper model for CPU int8 inference.

    For in-process use (tests, benchmarks); `transcribe` runs the model in a child process.
    Call this only in the process that will use the model, after any fork: CTranslate2's
    thread pools do not survive fork(), so a model loaded in a parent (e.g. an RQ worker
    before it forks a work horse) would hang or crash in the child.
    """
    return _load_cached(resolve_model_path(name), cpu_threads)


# Small, because each entry pins a whole model in memory.
@functools.lru_cache(maxsize=2)
def _load_cached(path: Path, cpu_threads: int) -> WhisperModel:
    try:
        return whisper_child.load_model(path, cpu_threads)
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
    translate: bool = False,
    on_guess: ProgressCallback | None = None,
) -> Transcript:
    """Transcribe an audio file; segments are in the audio's timeline, texts stripped.

    `language` None detects it; `translate` adds an English translation (whisper's
    translate task, a second pass over the audio) unless the speech is in English, which
    `translation_note` then says.

    Whisper runs in a child process (webapp/services/whisper_child.py) so that it can be
    stopped at any moment: once `stop` is set the child is killed within ~0.1 s and
    Stopped is raised. An exception from `on_progress` kills the child too and propagates.
    While the child works, `on_progress` gets an estimate about every TICK seconds (see
    `_Estimate`), never decreasing, below 1.0 until the transcript is complete. Estimates
    made before whisper reported any position (grown at the model's initial rate) go to
    `on_guess` instead when it is given: they measure nothing.
    """
    model_dir = resolve_model_path(model_name)
    if language and language not in whisper_models.languages(model_dir):
        raise TranscriptionError(
            f"{_FAILED}: the model {model_name} does not know the language {language!r}.")
    if stop is not None and stop.is_set():
        raise Stopped("transcription stopped before it started")
    estimate = _Passes(translate and language != "en", _Estimate(
        initial_rate=INITIAL_RATES.get(model_name, INITIAL_RATES["base"])))
    proc = _spawn(audio, model_dir, cpu_threads, language, translate and language != "en")
    if (seconds := _wav_seconds(audio)) is not None:
        estimate.start(seconds, time.monotonic())
    try:
        outcome = _follow(proc, on_progress, stop, estimate, on_guess)
        code = proc.wait()
    finally:
        # Whatever happened (stop, a failing callback, a job timeout): no orphan whisper.
        _kill(proc)
    info = _checked(outcome, code)
    if on_progress is not None:
        on_progress(1.0)
    duration = float(info["duration"])
    segments = _segments(outcome.segments, duration)
    # Whisper always names a language, even for music or silence; without speech (and
    # without a language asked for) there is none to tell.
    spoken = str(info["language"]) if segments or language else None
    probability = info.get("language_probability") if spoken else None
    translation = note = None
    if outcome.translating:
        translation = Transcript("en", round(duration, 3), _segments(outcome.translated,
                                                                     duration))
    elif translate:  # the child translates any speech but English
        note = NOTHING_TO_TRANSLATE if segments else NO_SPEECH_TO_TRANSLATE
    return Transcript(language=spoken, duration=round(duration, 3), segments=segments,
                      language_probability=None if probability is None
                      else round(float(probability), 4),
                      translation=translation, translation_note=note)


def _spawn(audio: Path, model_dir: Path, cpu_threads: int,
           language: str | None, translate: bool) -> subprocess.Popen[str]:
    # -P: the script's folder (webapp/services, which holds a queue.py) must not shadow
    # the standard library; running the file rather than `-m webapp.services...` also skips
    # importing Flask and the app (0.13 s less start-up, see docs/RELIABILITY.md).
    cmd = [sys.executable, "-P", str(CHILD), "--parent", str(os.getpid()),
           "--threads", str(cpu_threads), "--language", language or "",
           *(["--translate"] if translate else []), str(model_dir), str(audio)]
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                encoding="utf-8", errors="replace")
    except OSError as exc:
        raise TranscriptionError(f"{_FAILED}: whisper could not be started.",
                                 detail=_short(exc)) from exc


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    with suppress(OSError):
        proc.stdout.close()


RawSegment = tuple[float, float, str, list[tuple[float, float, str]]]


@dataclass
class _Outcome:
    """What the child said: the info line, its segments (and translated ones), an error."""

    info: dict[str, Any] | None = None
    segments: list[RawSegment] = field(default_factory=list)
    translating: bool = False  # the translate pass began
    translated: list[RawSegment] = field(default_factory=list)
    error: str | None = None  # the end of a sentence "The speech could not be transcribed: "
    detail: str | None = None  # the library's own words


def _follow(proc: subprocess.Popen[str], on_progress: ProgressCallback | None,
            stop: threading.Event | None, estimate: _Passes,
            on_guess: ProgressCallback | None = None) -> _Outcome:
    """Read the child's lines until it closes stdout, reporting progress meanwhile."""
    lines: queue.Queue[str | None] = queue.Queue()
    # A thread reads, so the loop below can tick and watch `stop` while the child is silent.
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    outcome, next_tick = _Outcome(), 0.0
    while True:
        if stop is not None and stop.is_set():
            raise Stopped("transcription stopped")
        batch, now = _waiting_lines(lines), time.monotonic()
        moved = [_take(outcome, estimate, line, now) for line in batch if line is not None]
        if None in batch:
            return outcome
        due = any(moved) or now >= next_tick
        if on_progress is not None and estimate.started is not None and due:
            report = on_progress if estimate.measured or on_guess is None else on_guess
            report(estimate.share(now))
            next_tick = now + TICK


def _waiting_lines(lines: queue.Queue[str | None]) -> list[str | None]:
    """The next lines within POLL seconds, a burst at once: a window's segments come in
    quick succession and are reported as one step. None marks the end of the output."""
    batch: list[str | None] = []
    with suppress(queue.Empty):
        batch.append(lines.get(timeout=POLL))
        while batch[-1] is not None:
            batch.append(lines.get(timeout=BURST))
    return batch


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    with suppress(OSError, ValueError):  # closed by _kill
        for line in stream:
            lines.put(line)
    lines.put(None)


def _take(outcome: _Outcome, estimate: _Passes, line: str, now: float) -> bool:
    """Record one protocol line; True if it moved the known position."""
    if not line.strip():
        return False
    try:
        message = json.loads(line)
    except ValueError:
        outcome.error = outcome.error or "whisper's output could not be read"
        outcome.detail = outcome.detail or line[:300]
        return False
    if "info" in message:
        outcome.info = message["info"]
        estimate.decode(float(outcome.info["duration"]), str(outcome.info["language"]), now)
    elif "segment" in message or "translated" in message:
        kind = "segment" if "segment" in message else "translated"
        start, end, text = message[kind]
        words = [(float(w[0]), float(w[1]), str(w[2])) for w in message.get("words") or ()]
        (outcome.segments if kind == "segment" else outcome.translated).append(
            (float(start), float(end), str(text), words))
        estimate.reach(float(end), now)
        return True
    elif "translate" in message:
        outcome.translating = True
        estimate.next_pass(float(message["translate"]["duration"]), now)
        return True
    elif "error" in message:
        outcome.error = str(message["error"])
        outcome.detail = message.get("detail")
    return False


def _checked(outcome: _Outcome, code: int) -> dict[str, Any]:
    """The info line of a child that succeeded; TranscriptionError otherwise."""
    if outcome.error:
        raise TranscriptionError(f"{_FAILED}: {outcome.error}.", detail=outcome.detail)
    if code < 0:
        raise TranscriptionError(
            f"{_FAILED}: whisper was killed ({signal.Signals(-code).name}).")
    if code != 0 or outcome.info is None:
        raise TranscriptionError(f"{_FAILED}: whisper exited with code {code}.")
    return outcome.info


@dataclass
class _Estimate:
    """Where whisper is in the audio while it works on a window, as a share of it.

    Whisper reports segments a 30 s window at a time, after decoding the whole window.
    Between reports the position is extrapolated at the rate measured so far (seconds of
    audio reached per second since decoding began), but never past the end of the window
    being decoded (the last reported position + WINDOW), never to MAX_SHARE or beyond
    (only the child's clean exit says 1.0), and never backwards. Before the first window
    it grows at its model's initial rate (INITIAL_RATES) from the child's start when the
    audio's length is known then (a WAV file's header says it), so that the model's
    loading (0.6 s on an idle machine, seconds on a busy one) does not show as a stalled
    step; else from the info line.
    """

    duration: float = 0.0
    initial_rate: float = INITIAL_RATES["base"]  # seconds of audio a second before any report
    started: float | None = None  # monotonic time the estimate began
    decoding: float | None = None  # when decoding began (the child's info line)
    reached: float = 0.0  # end of the last reported segment, seconds
    reached_at: float = 0.0
    shown: float = 0.0  # last share given out

    def start(self, duration: float, now: float) -> None:
        self.duration = duration
        if self.started is None:
            self.started = self.reached_at = now

    def decode(self, duration: float, now: float) -> None:
        self.start(duration, now)
        self.decoding = now

    def reach(self, position: float, now: float) -> None:
        if position > self.reached:
            self.reached, self.reached_at = position, now

    def rate(self) -> float:
        spent = self.reached_at - (self.decoding or self.reached_at)
        return self.reached / spent if self.reached > 0 and spent > 0 else self.initial_rate

    def share(self, now: float) -> float:
        if self.duration > 0:
            guess = self.reached + self.rate() * max(0.0, now - self.reached_at)
            guess = min(guess, self.reached + WINDOW)
            self.shown = max(self.shown, min(guess / self.duration, MAX_SHARE))
        return self.shown


@dataclass
class _Passes:
    """The share of the whole step across whisper's passes over the audio: transcription,
    then (when asked for and the speech is not English) translation, which is expected to
    take TRANSLATE_COST of the first pass's time and starts at the first pass's pace
    scaled accordingly. Never decreasing; below MAX_SHARE until the child's clean exit."""

    translate: bool
    first: _Estimate = field(default_factory=_Estimate)
    second: _Estimate | None = None
    shown: float = 0.0

    @property
    def started(self) -> float | None:
        return self.first.started

    @property
    def measured(self) -> bool:
        """Whether whisper has reported a position yet (before that, shares are guesses)."""
        return self.first.reached > 0 or self.second is not None

    def start(self, duration: float, now: float) -> None:
        self.first.start(duration, now)

    def decode(self, duration: float, language: str, now: float) -> None:
        self.first.decode(duration, now)
        if language == "en":
            self.translate = False  # the child has nothing to translate

    def next_pass(self, duration: float, now: float) -> None:
        self.second = _Estimate(initial_rate=self.first.rate() / TRANSLATE_COST)
        self.second.decode(duration, now)

    def reach(self, position: float, now: float) -> None:
        (self.second or self.first).reach(position, now)

    def share(self, now: float) -> float:
        weight = 1 / (1 + TRANSLATE_COST) if self.translate else 1.0
        if self.second is None:
            guess = weight * self.first.share(now)
        else:
            guess = weight + (1 - weight) * self.second.share(now)
        self.shown = max(self.shown, min(guess, MAX_SHARE))
        return self.shown


def _wav_seconds(audio: Path) -> float | None:
    """The length of a WAV file from its header; None for anything else."""
    try:
        with wave.open(str(audio)) as wav:
            return wav.getnframes() / wav.getframerate()
    except (wave.Error, EOFError, OSError, ZeroDivisionError):
        return None


def _segments(raw: list[RawSegment], duration: float) -> list[Segment]:
    return [s for s in (_segment(*piece, duration) for piece in raw) if s.text]


def _clip(start: float, end: float, limit: float) -> tuple[float, float]:
    # Whisper's timestamps can overshoot the audio or come out of order by a hair.
    start = min(max(0.0, start), limit)
    return round(start, 3), round(min(max(start, end), limit), 3)


def _segment(start: float, end: float, text: str, words: list[tuple[float, float, str]],
             duration: float) -> Segment:
    limit = duration if duration > 0 else max(start, end, *(w[1] for w in words))
    timed = tuple(Word(*_clip(ws, we, limit), wt) for ws, we, wt in words if wt.strip())
    return Segment(*_clip(start, end, limit), " ".join(text.split()), timed)


def write_json(t: Transcript, dst: Path) -> None:
    _write_atomic(dst, json.dumps(t.to_dict(), ensure_ascii=False, indent=2) + "\n")


def write_vtt(t: Transcript, dst: Path) -> None:
    captions = [
        webvtt.Caption(_vtt_time(s.start), _vtt_time(s.end), _escape_cue_text(s.text))
        for s in t.segments
    ]
    _write_atomic(dst, webvtt.WebVTT(captions=captions).content)


def write_srt(t: Transcript, dst: Path) -> None:
    # The `srt` library, not webvtt-py's SRT writer: that one deletes anything between "<"
    # and ">" as if it were a cue tag, so "x <3 y > z" would come out as "x  z". No
    # reindexing: srt's would drop cues that are empty or last no time, and the SRT file
    # keeps the same cues as the VTT one.
    cues = [srt.Subtitle(i, timedelta(milliseconds=round(s.start * 1000)),
                         timedelta(milliseconds=round(s.end * 1000)), s.text)
            for i, s in enumerate(t.segments, start=1)]
    _write_atomic(dst, srt.compose(cues, reindex=False))


def _escape_cue_text(text: str) -> str:
    # webvtt-py writes cue text as given; unescaped "<" would start a tag, and escaping ">"
    # also defuses a "-->" that would otherwise be read as a timing line.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _vtt_time(seconds: float) -> str:
    return str(Timestamp.from_seconds(max(0.0, seconds)))  # HH:MM:SS.mmm


def _write_atomic(dst: Path, text: str) -> None:
    # Readers (the web app serving captions) must never see a half-written file.
    with atomic_output(dst) as tmp:
        tmp.write_text(text, encoding="utf-8")
