"""Where a video's picture begins: the length of a black opening (fade-in, leader, a camera
that starts dark), so that the storyboard's first tile shows something.

ffmpeg decodes from the start and reports, frame by frame, the share of black pixels
(`blackframe`, at a thumbnail's size); reading stops at the first frame that is not black,
so a video that opens with a picture costs the decode of one frame.
"""

from __future__ import annotations

import re
from pathlib import Path

from webapp.services import ffrun, mediainput
from webapp.services.ffrun import MediaError

# A frame is black when at least this share (%) of its pixels is darker than blackframe's
# threshold (luma 32 of 255): a fade from black counts as black until 2 % of it shows.
BLACK_SHARE = 98
# The longest opening looked at (seconds); a video still black by then is left as it is.
LOOK_AT_MOST = 10.0

_FRAME = re.compile(rb"^frame:\d+\s+pts:\S+\s+pts_time:(\S+)")
_PBLACK = re.compile(rb"^lavfi\.blackframe\.pblack=(\d+)")


def black_opening(path: Path, format_name: str | None = None, *, stream: str = "v:0",
                  keyframes_only: bool = False, limit: float = LOOK_AT_MOST) -> float:
    """Seconds from the first frame of a video stream (`stream`, a specifier: the first by
    default) to its first frame that is not black: 0.0 when it opens with a picture, and
    also when it is black for all of its first `limit` seconds or cannot be read (the
    storyboard then starts at the start).

    With `keyframes_only` only keyframes are decoded (as the storyboard then does). Raises
    ffrun.Stopped when the work in progress is asked to stop.
    """
    if limit <= 0:
        return 0.0
    try:
        *options, url = mediainput.input_args(path, format_name)
    except MediaError:  # a format never accepted: the storyboard's own run says so
        return 0.0
    if keyframes_only:
        options += ["-skip_frame", "nokey"]
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", *options,
            "-t", f"{limit:.3f}", "-i", url,
            "-map", f"0:{stream}",
            "-vf", "scale=160:-2,blackframe=amount=0,metadata=mode=print:file=/dev/stdout",
            "-f", "null", "-"]
    first = at = None
    try:
        with ffrun.reading(args) as proc:
            for line in proc.stdout:
                if frame := _FRAME.match(line):
                    at = _seconds(frame.group(1))
                    first = at if first is None else first
                elif ((black := _PBLACK.match(line)) and int(black.group(1)) < BLACK_SHARE
                      and at is not None and first is not None):
                    return max(0.0, at - first)
    except MediaError:
        return 0.0
    return 0.0  # black throughout what was looked at, or no frame read


def _seconds(value: bytes) -> float | None:
    try:
        return float(value)
    except ValueError:  # "NOPTS"
        return None
