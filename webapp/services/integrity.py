"""Finds media files cut short (interrupted uploads, partial copies) by looking at their end.

A cut file often still probes at its full length: an MP4 with its index (moov) in front, a
Matroska or MP3 file whose header states the duration, a WAV whose header states the data
size. Processing would fail later, so uploads are checked here, in well under a second:
the data that should be at the end is looked for, nothing is decoded. The file is opened
as its probed format only (mediainput), within the upload's time limit.
"""

from __future__ import annotations

import bisect
import math
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# PyAV (faster-whisper's dependency), for the demuxer's sample table. Imported with the
# app, not at the first upload: every web process pays its ~17 MB at start-up, once.
import av

from webapp.services import mediainput
from webapp.services.mediainput import Deadline

# Seconds before the stated end where the tail check starts reading packets.
TAIL = 5.0
# How far short of its stated duration a file's data may stop and still count as whole:
# the last packet's end and the container's duration rarely differ by more than a frame.
SLACK = 1.0
SLACK_SHARE = 0.01
_MP4_FAMILY = "mp4"  # ffprobe calls the demuxer "mov,mp4,m4a,3gp,3g2,mj2"


@dataclass(frozen=True)
class Cut:
    """Where a file's data really ends, against the length its header states."""

    ends_at: float  # seconds
    duration: float  # seconds

    def __str__(self) -> str:
        # Rounded down, so a file missing its last moment never "ends at 36.5 s of 36.5 s".
        ends_at = math.floor(self.ends_at * 10) / 10
        return f"the file ends at {ends_at:.1f} s of {self.duration:.1f} s"


def find_cut(path: Path, format_name: str, duration: float | None,
             deadline: Deadline | None = None) -> Cut | None:
    """The Cut if the file's data stops clearly before its stated end; None if it is whole
    or nothing can tell (then processing's own end-of-output check still stands).
    mediainput.ProbeTimeout when the deadline passes first."""
    deadline = deadline or Deadline(None)
    size = path.stat().st_size
    if format_name == "wav":
        return _wav_cut(path, size)
    if not duration or duration <= 0:
        return None
    if _MP4_FAMILY in format_name.split(","):
        known, cut = _mp4_index_cut(path, size, duration, format_name, deadline)
        if known:
            return cut
    return _tail_cut(path, duration, format_name, deadline)


def _short(ends_at: float, duration: float) -> Cut | None:
    ends_at = min(max(0.0, ends_at), duration)
    if duration - ends_at > max(SLACK, SLACK_SHARE * duration):
        return Cut(ends_at, duration)
    return None


def _mp4_index_cut(path: Path, size: int, duration: float, format_name: str,
                   deadline: Deadline) -> tuple[bool, Cut | None]:
    """Checks the byte range of every sample in the MP4/MOV index against the file size.

    (False, None) when the index cannot tell: unreadable, or a fragmented MP4 whose index
    may only cover the fragments read so far.
    """
    options = mediainput.input_options()
    try:
        with av.open(mediainput.url(path), format=mediainput.accepted(format_name),
                     options=options, timeout=deadline.left()) as container:
            ends = [_first_missing(stream, size) for stream in container.streams]
    except (av.FFmpegError, OSError):  # (one that took too long: the deadline tells)
        return False, None
    if not ends or any(end is None for end in ends):
        return False, None
    missing = [at for at, whole in ends if not whole]
    if missing:
        # Bytes the index points at are missing: a cut, however close to the end.
        return True, Cut(min(min(missing), duration), duration)
    # Every byte of a plain MP4's index is there: whole, even if its tracks stop before the
    # movie's stated length.
    return not _fragmented(path), None


def _fragmented(path: Path, boxes: int = 64) -> bool:
    """Whether a "moof" box comes among the first top-level boxes: a fragmented MP4, whose
    samples are indexed fragment by fragment as they are read."""
    with path.open("rb") as f:
        for _ in range(boxes):
            header = f.read(8)
            if len(header) < 8:
                return False
            size, kind = struct.unpack(">I4s", header)
            if kind == b"moof":
                return True
            if size == 1:  # a 64-bit size follows the type
                size = struct.unpack(">Q", f.read(8))[0] - 8
            if size < 8:  # 0: "to the end of the file"; below 8: not a box at all
                return False
            f.seek(size - 8, 1)
    return False


def _first_missing(stream: Any, size: int) -> tuple[float, bool] | None:
    """(time of the first sample whose bytes lie past the end of the file, False), or (time
    of the last sample, True) when all are there; None without an index."""
    entries = stream.index_entries
    if not len(entries):
        return None
    # Samples are stored in time order, so their end offsets grow: bisect, not a loop over
    # hundreds of thousands of entries.
    first = bisect.bisect_right(range(len(entries)), size,
                                key=lambda i: entries[i].pos + entries[i].size)
    whole = first == len(entries)
    entry = entries[len(entries) - 1 if whole else first]
    return float(max(0, entry.timestamp) * stream.time_base), whole


def _tail_cut(path: Path, duration: float, format_name: str,
              deadline: Deadline) -> Cut | None:
    """Reads the packets of the last few seconds (ffprobe demuxes, decodes nothing) and
    compares where the last one ends with the stated duration."""
    found, last_end = _last_packet_end(path, format_name, max(0.0, duration - TAIL), deadline)
    if found and last_end is None:
        # Nothing at all near the end (the seek went past the data): read it all to find
        # where it stops. Only cut files get here.
        found, last_end = _last_packet_end(path, format_name, None, deadline)
    return _short(last_end, duration) if found and last_end is not None else None


def _last_packet_end(path: Path, format_name: str, since: float | None,
                     deadline: Deadline) -> tuple[bool, float | None]:
    """(whether ffprobe could tell, the end of the last packet read from `since` on, in
    seconds from the file's start)."""
    args = ["ffprobe", "-v", "warning", "-of", "compact",
            "-show_entries", "format=start_time:packet=pts_time,dts_time,duration_time",
            *(["-read_intervals", f"{since:.3f}%"] if since is not None else []),
            *mediainput.input_args(path, format_name)]
    timeout = deadline.left()
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              errors="replace")
    except OSError:
        return False, None
    except subprocess.TimeoutExpired:
        raise mediainput.ProbeTimeout(f"ffprobe took longer than {timeout:g} s") from None
    # A duration guessed from the bitrate (MP3 without a Xing header, raw AAC) is no
    # statement about the file's length: it cannot show a cut, only make up one.
    if done.returncode != 0 or "Estimating duration from bitrate" in done.stderr:
        return False, None
    start, last_end = 0.0, None
    for line in done.stdout.splitlines():
        fields = dict(part.partition("=")[::2] for part in line.split("|")[1:])
        if line.startswith("format|"):
            start = _seconds(fields.get("start_time")) or 0.0
            continue
        at = _seconds(fields.get("pts_time"))
        at = at if at is not None else _seconds(fields.get("dts_time"))
        if at is not None:
            end = at + (_seconds(fields.get("duration_time")) or 0.0)
            last_end = end if last_end is None else max(last_end, end)
    return True, None if last_end is None else last_end - start


def measure_length(path: Path, format_name: str, deadline: Deadline | None = None
                   ) -> float | None:
    """How long a file that states no duration lasts, in seconds from its start, or None if
    it cannot be told before the deadline.

    Browsers' MediaRecorder writes WebM as it records, with neither a duration nor an
    index to seek by, so the data is read to its end: ffmpeg copies every packet to
    nowhere (demuxing only, at the disk's speed: 20 minutes of such a WebM in 0.25 s) and
    reports the time of the last (the progress report's, which ffmpeg counts from the
    file's start).
    """
    deadline = deadline or Deadline(None)
    *options, source = mediainput.input_args(path, format_name)
    args = ["ffmpeg", "-nostdin", "-v", "error", *options, "-i", source,
            "-map", "0:v?", "-map", "0:a?", "-c", "copy", "-f", "null", "-",
            "-progress", "pipe:1", "-nostats"]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=deadline.left(),
                              errors="replace")
    except (OSError, subprocess.TimeoutExpired, mediainput.ProbeTimeout):
        return None
    if done.returncode != 0:
        return None
    reached = [_seconds(line.partition("=")[2]) for line in done.stdout.splitlines()
               if line.startswith("out_time_us=")]
    last = max((us for us in reached if us is not None and us > 0), default=None)
    return round(last / 1_000_000, 3) if last else None


# Demuxers whose timestamps may jump (a recorder's clock reset, HLS segments joined across
# a discontinuity, a broadcast splice): ffmpeg closes such a jump up when it reads the file
# (these formats are flagged AVFMT_TS_DISCONT), but ffprobe states the duration from the
# first to the last timestamp, jump included.
_TIMESTAMPS_MAY_JUMP = frozenset({"mpegts", "mpeg"})
# Packets read from the start to tell how many bytes a second of the file takes.
_RATE_PACKETS = 500
# A stated duration this many times what the file's size and early data rate allow is a
# jump, not a variable bit rate.
_JUMP_FACTOR = 3


def length_across_jumps(path: Path, format_name: str, duration: float | None,
                        deadline: Deadline | None = None) -> float | None:
    """How long an MPEG-TS/PS file lasts as ffmpeg reads it, when its timestamps jump so
    far that the stated duration is at least _JUMP_FACTOR times what its size allows at
    the data rate of its first packets; None otherwise, or when it cannot be told in half
    the time left (the stated duration then stands).

    A 4 s TS whose clock jumps 60 s forward was stated as 64 s (one jumping back from
    101 s to 6 s as 26 hours), and every step failed as "the input ends at 4.0 s of
    64.0 s". Only such files are read through (measure_length): a whole TS takes a
    second per 300 MB or so.
    """
    if not duration or mediainput.demuxer(format_name) not in _TIMESTAMPS_MAY_JUMP:
        return None
    deadline = deadline or Deadline(None)
    rate = _early_rate(path, format_name, deadline)
    if not rate or path.stat().st_size / rate * _JUMP_FACTOR > duration:
        return None
    left = deadline.left()
    measured = measure_length(path, format_name, Deadline(None if left is None else left / 2))
    if measured and _short(measured, duration):
        return measured
    return None


def _early_rate(path: Path, format_name: str, deadline: Deadline) -> float | None:
    """Bytes a second in the file's first packets: their sizes over the longest time one
    stream's packets cover (their durations summed, so a jump among them counts no time)."""
    args = ["ffprobe", "-v", "error", "-of", "compact", "-read_intervals",
            f"%+#{_RATE_PACKETS}", "-show_entries", "packet=stream_index,size,duration_time",
            *mediainput.input_args(path, format_name)]
    timeout = deadline.left()
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              errors="replace")
    except OSError:
        return None
    except subprocess.TimeoutExpired:
        raise mediainput.ProbeTimeout(f"ffprobe took longer than {timeout:g} s") from None
    size, covered = 0, {}
    for line in done.stdout.splitlines():
        fields = dict(part.partition("=")[::2] for part in line.split("|")[1:])
        size += int(fields.get("size") or 0) if (fields.get("size") or "").isdigit() else 0
        stream = fields.get("stream_index")
        covered[stream] = covered.get(stream, 0.0) + (
            _seconds(fields.get("duration_time")) or 0.0)
    seconds = max(covered.values(), default=0.0)
    return size / seconds if seconds > 0 and size > 0 else None


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None


# How MP4/MOV files begin: a box size, then one of these box types.
_MP4_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}


def starts_like_mp4(path: Path) -> bool:
    """Whether the file begins as an MP4/MOV does: if ffprobe still cannot read it, its
    index (moov) is missing or cut off, as in an interrupted upload of a plain MP4."""
    with path.open("rb") as f:
        head = f.read(8)
    return len(head) == 8 and head[4:8] in _MP4_FIRST_BOXES


def has_whole_mp4_index(path: Path, boxes: int = 64) -> bool:
    """Whether a whole "moov" box (the MP4/MOV index) is among the file's top-level boxes:
    an MP4 that ffprobe reads no stream from then holds none (a recording stopped before
    its first frame), instead of missing its index."""
    size = path.stat().st_size
    with path.open("rb") as f:
        for _ in range(boxes):
            at = f.tell()
            header = f.read(8)
            if len(header) < 8:
                return False
            length, kind = struct.unpack(">I4s", header)
            if length == 1:  # a 64-bit size follows the type
                length = struct.unpack(">Q", f.read(8))[0]
            elif length == 0:  # "to the end of the file"
                length = size - at
            if length < 8 or at + length > size:
                return False
            if kind == b"moov":
                return True
            f.seek(at + length)
    return False


def _wav_cut(path: Path, size: int) -> Cut | None:
    """A WAV header states how many bytes of samples follow; ffprobe just stops at EOF."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = None
        while chunk := f.read(8):
            if len(chunk) < 8:
                return None
            kind, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind == b"fmt " and length >= 12:
                byte_rate = struct.unpack("<I", f.read(12)[8:12])[0]
                f.seek(length - 12 + (length & 1), 1)
            elif kind == b"data":
                return _wav_data_cut(f.tell(), length, size, byte_rate)
            else:
                f.seek(length + (length & 1), 1)
    return None


def _wav_data_cut(offset: int, declared: int, size: int, byte_rate: int | None) -> Cut | None:
    # Writers that stream (or never finish) leave 0 or all ones in the size field.
    if not byte_rate or declared == 0 or declared >= 0xFFFFFF00:
        return None
    present = max(0, size - offset)
    if present >= declared:
        return None
    return _short(present / byte_rate, declared / byte_rate)
