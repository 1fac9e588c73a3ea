"""Runs ffmpeg with progress reporting, short readable errors and all-or-nothing outputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ffmpeg.nodes import OutputStream

from webapp.services.errors import ToolError

ProgressCallback = Callable[[float], None]

# The most share of the frames ffmpeg decodes that may be lost to damage (packets a
# decoder rejects) before a run fails as damaged (ffmpeg's exit code 69). Fewer are
# decoded through, as players do: a decoder skips the frame (silence for sound) or hides
# it from its neighbours (concealment), and RunResult.damaged counts them for the step's
# note (damage_note). docs/RELIABILITY.md, "Damaged sources", says why a fifth.
MAX_DAMAGED_SHARE = 0.2
# ffmpeg's exit code when more than -max_error_rate of the frames failed to decode.
TOO_MANY_ERRORS = 69
# What every ffmpeg command of the service says, beside its inputs and outputs ...
# Warnings are read for the frames decoders concealed (see _drain); each line is tagged
# with its level, and only errors are kept for the failure's reason and detail.
COMMAND_ARGS = (
    "-nostdin", "-hide_banner", "-loglevel", "level+warning", "-nostats",
    "-max_error_rate", str(MAX_DAMAGED_SHARE),
)
# ... and how it reports its progress to `run` (-progress reports every 0.5 s by default;
# 0.25 s keeps short jobs visibly moving).
REPORTING_ARGS = ("-stats_period", "0.25", "-progress", "pipe:1")
# Output that stops before this share of the probed duration means the input ended early.
COMPLETE_SHARE = 0.9
MAX_MESSAGE = 300
MAX_DETAIL = 2000
# "[h264 @ 0x55d1c2]" -> "[h264]"; "[NULL]" (an unnamed parser) says nothing at all.
_ADDRESS = re.compile(r" @ 0x[0-9a-f]+\]")
_UNNAMED = "[NULL] "
_NOISE = {"Conversion failed!", "Exiting normally, received signal 2."}


class MediaError(ToolError):
    """An ffprobe/ffmpeg call failed on this input.

    The public wrappers (webapp.services.media) raise it with str(exc) = one sentence saying
    what could not be made and why ("The preview could not be encoded: the video data is
    damaged after 3.3 s."), and `detail` = ffmpeg's own last lines, server paths removed, or
    None.
    """


class Stopped(Exception):
    """The caller asked the work to stop; the tool's process was killed."""


# The stop signal of the work in progress (a step's attempt that may be cancelled or
# superseded at any time): every ffmpeg run inside `stopping(event)` is killed within
# ~0.1 s of the event being set, and then raises Stopped.
_STOP: ContextVar[threading.Event | None] = ContextVar("vidpipe_ffmpeg_stop", default=None)


@contextmanager
def stopping(event: threading.Event) -> Iterator[threading.Event]:
    """Make every ffmpeg run in this block stop (Stopped) when `event` is set."""
    token = _STOP.set(event)
    try:
        yield event
    finally:
        _STOP.reset(token)


def check_stop() -> None:
    """Raise Stopped if the work in progress was asked to stop (between two tool runs)."""
    event = _STOP.get()
    if event is not None and event.is_set():
        raise Stopped("stopped on request")


def _kill_on_stop(proc: subprocess.Popen[bytes], event: threading.Event) -> None:
    while proc.poll() is None:
        if event.wait(0.1):
            proc.kill()
            return


@contextmanager
def reading(args: Sequence[str]) -> Iterator[subprocess.Popen[bytes]]:
    """Start a tool whose output the block reads as it comes (stderr discarded). It is
    killed when the work in progress is asked to stop (the block then sees its output end
    and Stopped is raised after it) and when the block ends before the tool does."""
    check_stop()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        raise MediaError(f"{args[0]} is not installed on the server") from None
    stop = _STOP.get()
    if stop is not None:
        threading.Thread(target=_kill_on_stop, args=(proc, stop), daemon=True).start()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        _close(proc)
    check_stop()


@dataclass
class RunResult:
    out_time: float | None = None  # seconds written, from the last progress report
    frames: int | None = None  # frames written to the first video output
    reported: float = 0.0  # last progress fraction passed to the callback
    damaged: int = 0  # frames the decoders could not decode (skipped) or concealed
    detail: str | None = None  # ffmpeg's last words (error_detail), for a later failure


# ffmpeg's words for a frame lost to damage, one line a frame (measured with ffmpeg 5.1 on
# MP4 and MPEG-TS files with bytes overwritten or cut out, docs/RELIABILITY.md):
# - a packet the decoder rejected (error: "Error while decoding stream #0:1: Invalid data
#   found when processing input");
# - a picture decoded with damaged parts hidden, which h264 and MPEG-1/2/4 do without an
#   error line ("concealing 192 DC, 192 AC, 192 MV errors" is at info level): ffmpeg's
#   warning "corrupt decoded frame in stream 0";
# - an H.264/HEVC picture predicted from one that was lost (bytes cut out, a dropped
#   packet): the decoder stands another in for it silently, and says only "Missing
#   reference picture, default is 65780", "reference picture missing during reorder",
#   "co located POCs unavailable" (h264) or "Could not find ref with POC 12" (hevc).
# ffmpeg folds repeats into "Last message repeated 3 times".
_DAMAGED_FRAME = re.compile(
    r"^Error while decoding stream #\d+:\d+|: corrupt decoded frame in stream \d+$|"
    r"^\[(?:h264|hevc)\] (?:Missing reference picture|reference picture missing during"
    r" reorder|co located POCs unavailable|Could not find ref with POC)")
_REPEATED = re.compile(r"Last message repeated (\d+) times")
# "[h264 @ 0x55d1c2] [error] ..." (-loglevel level+...): the level, after any context.
_LEVEL = re.compile(r"^((?:\[[^\]]* @ 0x[0-9a-f]+\] )*)\[(\w+)\] ")
_KEPT_LEVELS = {"error", "fatal", "panic"}
# An output ffmpeg could not finish writing ("Error writing trailer of …: No space left on
# device", "Error closing file …"): it says so, and still exits 0.
_WRITE_FAILED = re.compile(r"^Error (?:writing trailer of|closing file) |"
                           r"No space left on device|Disk quota exceeded")


def damage_note(damaged: int) -> str | None:
    """The sentence a completed step shows when it decoded through damaged frames."""
    if damaged <= 0:
        return None
    frames = "1 damaged frame was" if damaged == 1 else f"{damaged} damaged frames were"
    return (f"The source is damaged in places: {frames} skipped or concealed, as players"
            " do.")


def error_tail(
    stderr: str | bytes | Iterable[str],
    paths: Sequence[Path] = (),
    lines: int = 3,
    limit: int = MAX_MESSAGE,
    sep: str = "; ",
) -> str:
    """The last meaningful stderr lines, without pointer noise or server paths."""
    kept = _meaningful(stderr)
    message = sep.join(kept[-lines:])
    # Users see these messages; where the server keeps files is none of their business.
    # (Inputs are opened as file: URLs, see mediainput.url.)
    for path in paths:
        message = message.replace(f"file:{path}", path.name).replace(str(path), path.name)
    if len(message) > limit:
        message = "..." + message[-(limit - 3):]
    return message


def error_detail(stderr: str | bytes | Iterable[str], paths: Sequence[Path] = ()) -> str | None:
    """The raw tool output kept beside a failure's sentence (MediaError.detail)."""
    return error_tail(stderr, paths, lines=12, limit=MAX_DETAIL, sep="\n") or None


def _meaningful(stderr: str | bytes | Iterable[str]) -> list[str]:
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    if isinstance(stderr, str):
        stderr = stderr.splitlines()
    lines = [_ADDRESS.sub("]", line.strip()).removeprefix(_UNNAMED) for line in stderr]
    return [line for line in lines if line and line not in _NOISE]


@contextmanager
def failing_as(action: str) -> Iterator[None]:
    """Turn the reason of a MediaError raised inside into the sentence users see:
    "<action>: <reason>." (the detail is kept). Other exceptions pass untouched."""
    try:
        yield
    except MediaError as exc:
        raise MediaError(f"{action}: {exc}.", detail=exc.detail) from None


@contextmanager
def atomic_output(dst: Path) -> Iterator[Path]:
    """Yield a hidden sibling path to write; it replaces dst only if the block succeeds."""
    # Same suffix as dst so ffmpeg still picks the muxer from the extension.
    tmp = dst.with_name(f".{dst.stem}.part{dst.suffix}")
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def require_output(path: Path) -> None:
    """ffmpeg exits 0 without writing anything when, e.g., a seek lands past the last frame."""
    if not path.is_file() or path.stat().st_size == 0:
        raise MediaError("ffmpeg wrote no output")


def run(
    stream: OutputStream,
    duration: float | None,
    on_progress: ProgressCallback | None = None,
    *,
    check_complete: bool = True,
    paths: Sequence[Path] = (),
    nice: int = 0,
) -> RunResult:
    """Run ffmpeg to completion, reporting progress; raise MediaError on any failure.

    The error's message is a reason ("the video data is damaged after 3.3 s"), for the
    caller to complete into a sentence with failing_as. Damaged frames are decoded through
    (skipped or concealed, counted in the result's `damaged`) unless they are more than
    MAX_DAMAGED_SHARE of the frames decoded. check_complete compares the last reported
    output time with duration, because a truncated input makes ffmpeg stop early yet still
    exit 0. ffmpeg runs `nice` steps below the caller's CPU priority (see niced).
    """
    check_stop()
    proc = _spawn(stream, nice)
    stop = _STOP.get()
    if stop is not None:
        threading.Thread(target=_kill_on_stop, args=(proc, stop), daemon=True).start()
    tail: deque[str] = deque(maxlen=20)
    damaged = [0]
    # ffmpeg blocks once the stderr pipe buffer is full, so it is drained concurrently.
    drainer = threading.Thread(target=_drain, args=(proc.stderr, tail, damaged),
                               daemon=True)
    drainer.start()
    try:
        result = _read_progress(proc.stdout, duration, on_progress)
        code = proc.wait()
    except BaseException:
        # A failing or cancelling callback must not leave ffmpeg running.
        proc.kill()
        proc.wait()
        raise
    finally:
        drainer.join(timeout=5)
        _close(proc)
    check_stop()  # killed on request: not a media error
    result.damaged, result.detail = damaged[0], error_detail(tail, paths)
    if code == TOO_MANY_ERRORS:
        # Only known at the end: where ffmpeg stopped says nothing about the damage.
        raise MediaError(f"{failure_reason(tail, None)} ({too_many_errors(result.damaged)})",
                         detail=error_detail(tail, paths))
    if code != 0 or any(_WRITE_FAILED.search(line) for line in tail):
        # (ffmpeg exits 0 when only its output's trailer or close failed, a full disk at the
        # end: -xerror, which made that an exit code, is not used any more)
        raise MediaError(failure_reason(tail, result.out_time),
                         detail=error_detail(tail, paths) or f"ffmpeg exit code {code}")
    if check_complete:
        check_reached_end(result.out_time, duration, error_detail(tail, paths))
    if on_progress is not None and result.reported < 1.0:
        on_progress(1.0)
    return result


def command(stream: OutputStream, *, reporting: bool = True) -> list[str]:
    """The argv `run` executes for `stream`; without `reporting`, the same command as a
    person would type it (bench/pipeline.py's reference runs exactly that)."""
    args = (*COMMAND_ARGS, *REPORTING_ARGS) if reporting else COMMAND_ARGS
    return stream.global_args(*args).overwrite_output().compile()


def _spawn(stream: OutputStream, nice: int = 0) -> subprocess.Popen[bytes]:
    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command(stream), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    try:
        return niced(start, nice)
    except FileNotFoundError:
        raise MediaError("ffmpeg is not installed on the server") from None


def niced(start: Callable[[], subprocess.Popen[bytes]],
          nice: int) -> subprocess.Popen[bytes]:
    """start() a process `nice` steps below the caller's CPU priority (at most 19), all of
    its threads, while the caller keeps its own.

    On Linux the nice value belongs to each thread and a process inherits the one of the
    thread that starts it: start() runs on a short-lived thread that lowers its own
    priority first. (Elsewhere the value is the whole process's: nothing is changed.)
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return start()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def lowered() -> None:
        try:
            own = os.getpriority(os.PRIO_PROCESS, 0)  # this thread's, on Linux
            os.setpriority(os.PRIO_PROCESS, 0, min(19, own + nice))
            outcome["proc"] = start()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lowered, name="niced-start").start()
    # An Event, not Thread.join: a join that an exception interrupts marks the thread as
    # ended while it still runs (CPython 3.11), and a second join returns at once.
    try:
        done.wait()
    except BaseException:  # e.g. the job's time limit, raised in this thread: no orphan
        done.wait()
        if "proc" in outcome:
            outcome["proc"].kill()
            outcome["proc"].wait()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["proc"]


def check_reached_end(
    reached: float | None, duration: float | None, detail: str | None = None
) -> None:
    """Raise if output stopped well before the probed duration."""
    if not duration or duration <= 0:
        return
    if reached is None or reached < COMPLETE_SHARE * duration:
        raise MediaError(
            f"the input ends at {reached or 0.0:.1f} s of {duration:.1f} s"
            " (the file is cut short or damaged)",
            detail=detail,
        )


# "Stream map '0:a:0' matches no streams.", "Stream specifier ':v:0' in filtergraph ..."
_NO_STREAM = re.compile(r"Stream (?:map '\d+|specifier ')?:([avs])\b.*matches no streams")
_KINDS = {"a": "audio", "v": "video", "s": "subtitle"}
# ffmpeg could not write (jobs/runner.py names the worker host instead on one that is not
# the server).
DISK_FULL = "the server's disk is full"
# Demuxers saying the data stops where the index says there is more.
_CUT_SIGNS = ("partial file", "end of file", "truncat")
_DAMAGE_SIGNS = ("invalid data found", "corrupt", "error while decoding", "invalid nal",
                 "missing picture", "decoding error", "header missing", "invalid frame")
_VIDEO_DECODERS = {"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "mpeg4", "mpeg2video",
                   "mpeg1video", "mjpeg", "prores", "theora", "vc1", "wmv3", "h263", "flv",
                   "dvvideo", "png"}
_AUDIO_DECODERS = {"aac", "mp3", "mp3float", "mp2", "mp2float", "opus", "libopus", "vorbis",
                   "flac", "ac3", "eac3", "dca", "alac", "wmav2", "amrnb", "amrwb"}
# Complaints of video parsers, which ffmpeg prints without a name ("[NULL]").
_VIDEO_SIGNS = ("nal unit", "missing picture", "slice header", "macroblock")
_BRACKET = re.compile(r"^\[([\w,]+)\]")


def too_many_errors(damaged: int) -> str:
    """Why ffmpeg gave up on a damaged source, with the frames counted when there are any:
    its own count (of every decoder error) is not printed, and ours reads error lines, which
    some damage (a demuxer's lost packets) does not write."""
    if damaged <= 0:
        return f"more than {MAX_DAMAGED_SHARE * 100:.0f} % of its frames could not be decoded"
    return "1 frame could not be decoded" if damaged == 1 else (
        f"{damaged} frames could not be decoded")


def failure_reason(stderr: Iterable[str], reached: float | None) -> str:
    """Why ffmpeg failed, as a user would put it, from its last stderr lines."""
    lines = _meaningful(stderr)
    text = "\n".join(lines).lower()
    missing = _NO_STREAM.search("\n".join(lines))
    if missing:
        return f"the file has no {_KINDS.get(missing.group(1), 'such')} track"
    if "no such file or directory" in text:
        return "the source file is missing on the server"
    if "no space left on device" in text or "disk quota exceeded" in text:
        return DISK_FULL
    if "format not on whitelist" in text:  # (see mediainput)
        return "it is not an audio or video file of an accepted format"
    # The last progress report before the failure: the damage lies somewhere after it.
    after = f" after {reached:.1f} s" if reached and reached >= 0.1 else ""
    if any(sign in text for sign in _CUT_SIGNS):
        return f"the file is cut short or damaged{after}"
    kinds = _decoder_kinds(lines)
    if kinds or any(sign in text for sign in _DAMAGE_SIGNS):
        kind = next(iter(kinds)) if len(kinds) == 1 else "media"
        return f"the {kind} data is damaged{after}"
    return "ffmpeg stopped with an error"


def _decoder_kinds(lines: Sequence[str]) -> set[str]:
    """"video" and/or "audio", after the decoders that complained ("[h264] ...")."""
    kinds: set[str] = set()
    if any(sign in line.lower() for line in lines for sign in _VIDEO_SIGNS):
        kinds.add("video")
    for line in lines:
        match = _BRACKET.match(line)
        name = match.group(1) if match else ""
        if name in _VIDEO_DECODERS:
            kinds.add("video")
        elif name in _AUDIO_DECODERS or name.startswith("pcm_"):
            kinds.add("audio")
    return kinds


def _read_progress(
    stdout: IO[bytes], duration: float | None, on_progress: ProgressCallback | None
) -> RunResult:
    result = RunResult()
    for raw in stdout:
        key, _, value = raw.decode(errors="replace").strip().partition("=")
        if key == "frame" and value.isdigit():
            result.frames = int(value)
        # out_time_ms is misnamed by ffmpeg and also holds microseconds.
        elif key in ("out_time_us", "out_time_ms"):
            seconds = _parse_us(value)
            if seconds is None or (result.out_time is not None and seconds <= result.out_time):
                continue
            result.out_time = seconds
            if on_progress is not None and duration and duration > 0:
                share = min(1.0, seconds / duration)
                if share > result.reported:
                    result.reported = share
                    on_progress(share)
    return result


def _parse_us(value: str) -> float | None:
    # "N/A" before the first packet, and a huge negative number when nothing was muxed yet.
    try:
        micros = int(value)
    except ValueError:
        return None
    return micros / 1_000_000 if micros >= 0 else None


def _drain(stderr: IO[bytes], tail: deque[str], damaged: list[int]) -> None:
    """Keep the last error lines in `tail` (their level tag removed), and count the damaged
    frames into damaged[0]."""
    last_was_damage = False
    for raw in stderr:
        line = raw.decode(errors="replace").rstrip("\r\n")
        repeated = _REPEATED.search(line)
        if repeated:
            if last_was_damage:
                damaged[0] += int(repeated.group(1))
            continue
        level = _LEVEL.match(line)
        if level is not None:
            line = level.group(1) + line[level.end():]
        if level is None or level.group(2) in _KEPT_LEVELS:
            tail.append(line)
        last_was_damage = bool(_DAMAGED_FRAME.search(_ADDRESS.sub("]", line)))
        damaged[0] += last_was_damage


def _close(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            with suppress(OSError):
                pipe.close()
