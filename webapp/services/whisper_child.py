"""The whisper child process: transcribes one audio file, streaming JSON lines on stdout.

Run by `webapp.services.transcription.transcribe` as a script (`python -P <this file>`,
so neither Flask nor the rest of the app is imported: only the standard library and
faster-whisper). The parent can kill it at any moment, which is how a cancelled
transcription stops at once instead of at the end of a 30 s window.

Protocol, one JSON object per line on the original stdout:
    {"info": {"language": "de", "language_probability": 0.99, "duration": 61.2}}
                                    once, when decoding starts (the language is detected)
    {"segment": [start, end, text], "words": [[start, end, word], ...]}
                                    per segment, as whisper yields them
    {"translate": {"duration": 61.2}}
                                    with --translate, unless the language is English: the
                                    second pass (whisper's translate task) begins
    {"translated": [start, end, text], "words": [...]}
                                    per segment of the English translation
    {"error": "what went wrong", "detail": "the library's words"}   then exit code 1
Exit code 0 after the last segment means the transcript (and translation) is complete.

Also imported by the parent for `load_model` and `short_message` (stdlib-only at import).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

MAX_MESSAGE = 300
_PR_SET_PDEATHSIG = 1


def load_model(model_dir: str | Path, cpu_threads: int = 0) -> Any:
    """A CTranslate2 whisper model for CPU int8 inference (raises the library's errors)."""
    # Imported here so importers of this module (the web app, the parent) skip CTranslate2.
    from faster_whisper import WhisperModel

    return WhisperModel(str(model_dir), device="cpu", compute_type="int8",
                        cpu_threads=cpu_threads)


def short_message(exc: BaseException) -> str:
    """str(exc) on one line, at most MAX_MESSAGE characters, without server paths."""
    # OSError and PyAV's errors put an errno and the file's full server path in str(exc).
    strerror, filename = getattr(exc, "strerror", None), getattr(exc, "filename", None)
    if strerror:
        message = f"{strerror}: {Path(str(filename)).name}" if filename else str(strerror)
    else:
        message = " ".join(str(exc).split()) or type(exc).__name__
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies; exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's kill in `finally` remains
        pass
    # The parent may have died before prctl: then nobody would ever send the signal.
    if os.getppid() != parent_pid:
        os._exit(1)


def _protocol_stream() -> IO[str]:
    """The real stdout for the protocol; fd 1 then points at stderr.

    Libraries (and C code in CTranslate2) may print to stdout; anything they write now
    lands in the log instead of corrupting the JSON lines the parent reads.
    """
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _send(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message, ensure_ascii=False) + "\n")
    out.flush()


def _pieces(out: IO[str], kind: str, pieces: Any) -> int:
    """Send whisper's segments (decoded lazily while iterating, a 30 s window at a time);
    how many there were."""
    count = 0
    for piece in pieces:
        words = [[float(w.start), float(w.end), w.word] for w in piece.words or ()]
        _send(out, {kind: [float(piece.start), float(piece.end), piece.text], "words": words})
        count += 1
    return count


def transcribe(out: IO[str], audio: str, model_dir: str, cpu_threads: int,
               language: str | None, translate: bool = False) -> int:
    """Stream info and segments of `audio` to `out`; 0 on success, 1 after an error line.

    With `translate`, a second pass runs whisper's translate task on the same audio in the
    detected (or given) language, unless that language is English or there was no speech.
    """
    try:
        model = load_model(model_dir, cpu_threads)
    except Exception as exc:  # CTranslate2 raises RuntimeError, ValueError, OSError...
        _send(out, {"error": "the whisper model could not be loaded",
                    "detail": short_message(exc)})
        return 1
    try:
        # The VAD filter keeps whisper from inventing words over music or silence; word
        # timestamps time the caption cues (webapp/services/captions.py).
        pieces, info = model.transcribe(audio, language=language, vad_filter=True,
                                        word_timestamps=True)
        _send(out, {"info": {"language": info.language,
                             "language_probability": float(info.language_probability),
                             "duration": float(info.duration)}})
        spoken = _pieces(out, "segment", pieces)
        if translate and info.language != "en" and spoken:
            _send(out, {"translate": {"duration": float(info.duration)}})
            pieces, _ = model.transcribe(audio, language=info.language, task="translate",
                                         vad_filter=True, word_timestamps=True)
            _pieces(out, "translated", pieces)
    except Exception as exc:  # PyAV, CTranslate2 and faster-whisper raise assorted types
        _send(out, {"error": "whisper could not read or decode the audio",
                    "detail": short_message(exc)})
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Transcribe one file; JSON lines on stdout.")
    parser.add_argument("--parent", type=int, required=True, help="pid to die with")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--language", default=None)
    parser.add_argument("--translate", action="store_true")
    parser.add_argument("model_dir")
    parser.add_argument("audio")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    out = _protocol_stream()
    return transcribe(out, args.audio, args.model_dir, args.threads, args.language or None,
                      args.translate)


if __name__ == "__main__":
    sys.exit(main())
