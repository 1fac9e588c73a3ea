"""How far apart a video's keyframes are, read from ffprobe's packet list as it streams.

A three-hour video has hundreds of thousands of packets: they are read one line at a time
and forgotten (constant memory, whatever the length), and reading stops as soon as the
caller's question is answered. ffprobe only demuxes; it decodes nothing.
"""

from __future__ import annotations

from pathlib import Path

from webapp.services import ffrun, mediainput
from webapp.services.ffrun import MediaError


def keyframe_gap(path: Path, duration: float, format_name: str | None = None, *,
                 stream: str = "v:0", start: float | None = None,
                 enough: float | None = None) -> float | None:
    """The longest stretch of a video stream (`stream`, a specifier: the first by default)
    without a keyframe, in seconds: between two keyframes, before the first or after the
    last until `duration`. None when it cannot tell (no video stream, no keyframe flags,
    unreadable).

    `start` is the stream's start time (seconds, 0.0 when not stated) when the caller has
    read it already (media.probe.Streams.video_start, the same ffprobe field); without it an
    ffprobe of its own reads it. With `enough`, reading stops at the first stretch longer
    than that, which is returned (a caller asking "is every stretch at most `enough`?" has
    its answer). Raises ffrun.Stopped when the work in progress is asked to stop.
    """
    try:
        if start is None:
            start = _video_start(path, format_name, stream)
        args = ["ffprobe", "-v", "error", "-select_streams", stream,
                "-show_entries", "packet=pts_time,flags", "-of", "csv=p=0",
                *mediainput.input_args(path, format_name)]
    except MediaError:
        return None
    if start is None:
        return None
    longest, last = 0.0, None
    with ffrun.reading(args) as proc:
        for line in proc.stdout:
            at = _keyframe_time(line)
            # Keyframes come in time order; one that does not is left out (the gap around
            # it counts as one: an overestimate, which only costs a full decode).
            if at is None or (last is not None and at <= last):
                continue
            longest = max(longest, at - (start if last is None else last))
            last = at
            if enough is not None and longest > enough:
                return longest
        if proc.wait() != 0:
            return None
    if last is None:
        return None
    return max(longest, duration + start - last)


def _video_start(path: Path, format_name: str | None, stream: str) -> float | None:
    """The video stream's start time (0.0 when not stated), None without one."""
    try:
        info = mediainput.ffprobe(path, "-select_streams", stream,
                                  "-show_entries", "stream=start_time",
                                  format_name=format_name)
    except MediaError:
        return None
    streams = info.get("streams") or []
    if not streams:
        return None
    try:
        return float(streams[0].get("start_time") or 0.0)
    except ValueError:  # "N/A"
        return 0.0


def _keyframe_time(line: bytes) -> float | None:
    """b"12.040000,K__" -> 12.04; None for other packets and unknown times."""
    pts, _, flags = line.strip().partition(b",")
    if b"K" not in flags:
        return None
    try:
        return float(pts)
    except ValueError:  # "N/A"
        return None
