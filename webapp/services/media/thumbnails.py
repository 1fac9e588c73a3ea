"""The thumbnails step's pictures: the poster, and the storyboard sprite with its WebVTT."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import ffmpeg
import webvtt
from ffmpeg.nodes import OutputStream
from webvtt.models import Timestamp

from webapp.services.ffrun import (
    COMPLETE_SHARE,
    MediaError,
    ProgressCallback,
    RunResult,
    atomic_output,
    failing_as,
    require_output,
    run,
)
from webapp.services.keyframes import keyframe_gap
from webapp.services.media.colours import JPEG_COLORS, Hdr, stream_hdr, to_sdr
from webapp.services.media.probe import Streams, deinterlaced, first_streams
from webapp.services.mediainput import ffmpeg_input
from webapp.services.opening import LOOK_AT_MOST, black_opening


def make_poster(src: Path, dst: Path, duration: float | None, max_width: int = 1280, *,
                format_name: str | None = None) -> None:
    """Write one JPEG frame from early on (skipping black intros), at most max_width wide
    (HDR tone-mapped to SDR: to_sdr)."""
    seek = min(duration * 0.1, 5.0) if duration else 0.0
    streams = first_streams(src, format_name)
    with failing_as("The poster could not be made"):
        try:
            _grab_frame(src, dst, seek, max_width, format_name, streams)
        except MediaError:
            if seek == 0.0:
                raise
            # The video track can be shorter than the container (e.g. audio runs on).
            _grab_frame(src, dst, 0.0, max_width, format_name, streams)


def _grab_frame(src: Path, dst: Path, seek: float, max_width: int,
                format_name: str | None, streams: Streams) -> None:
    hdr = stream_hdr(streams.video)
    with atomic_output(dst) as tmp:
        # In square pixels: browsers ignore a JPEG's pixel aspect, so a frame of
        # non-square pixels (anamorphic DVD/HDV) is stretched to its displayed width.
        size = (f"min(iw*sar,{max_width})", "max(2,2*round(ow/dar/2))")
        frame = ffmpeg_input(src, format_name, ss=seek)[streams.video_spec]
        if streams.interlaced:
            frame = deinterlaced(frame)
        if hdr:
            # Tone-mapped at the poster's size (in 10 bits still): a 4K frame in float
            # took 0.5 s more. The scale below then only converts the colours.
            frame = to_sdr(frame.filter("scale", *size).filter("setsar", 1), hdr)
        stream = (
            frame
            .filter("scale", *size, **JPEG_COLORS)
            .filter("setsar", 1)
            .output(str(tmp), vframes=1, **{"q:v": 3})
        )
        run(stream, None, check_complete=False, paths=(src, tmp))
        require_output(tmp)


@dataclass(frozen=True)
class Storyboard:
    interval: float  # seconds of video per tile
    columns: int
    rows: int
    tile_width: int
    tile_height: int
    count: int  # tiles actually used; the sprite may have blank cells after them
    keyframes_only: bool = False  # sampled from keyframes alone (see make_storyboard)
    references_only: bool = False  # non-reference frames left undecoded (ditto)
    start: float = 0.0  # seconds (of the file) before the first tile's frame: a picture
    # that starts after the sound (`offset`), then a black opening
    offset: float = 0.0  # seconds of the file before the picture's first frame
    damaged: int = 0  # frames of the video skipped or concealed as damaged (damage_note)



def plan_storyboard(
    duration: float,
    width: int,
    height: int,
    tile_width: int = 160,
    max_tiles: int = 100,
    interval: float = 2.0,
) -> Storyboard:
    """Lay out storyboard tiles: one per interval, stretched so there are at most max_tiles."""
    if width <= 0 or height <= 0 or tile_width <= 0 or max_tiles <= 0 or interval <= 0:
        raise ValueError("storyboard sizes and interval must be positive")
    # A tail under a thousandth of an interval would get a cue of (almost) no length.
    count = max(1, math.ceil(duration / interval - 0.001))
    if count > max_tiles:
        interval, count = duration / max_tiles, max_tiles
    columns = min(count, 10)
    # JPEG and most scalers want even sizes; 2 is the floor for absurd aspect ratios.
    tile_height = max(2, round(tile_width * height / width / 2) * 2)
    return Storyboard(
        interval=interval,
        columns=columns,
        rows=math.ceil(count / columns),
        tile_width=tile_width,
        tile_height=tile_height,
        count=count,
    )


def make_storyboard(
    src: Path,
    sprite_dst: Path,
    vtt_dst: Path,
    duration: float,
    width: int,
    height: int,
    on_progress: ProgressCallback | None = None,
    sprite_name: str = "storyboard.jpg",
    *,
    format_name: str | None = None,
) -> Storyboard:
    """Write a thumbnail sprite and the WebVTT that maps each interval to its tile.

    Each tile is the first frame at or after the start of its interval. When no two
    keyframes of the video are further apart than an interval (most camera and web videos:
    GOPs of 1-2 s against 2 s tiles), that frame can be looked for among keyframes only, and
    ffmpeg decodes those alone (`-skip_frame nokey`): about a tenth of the work, and every
    tile still shows a moment of its own interval. Otherwise the frames are decoded, but
    not those no other frame refers to (`-skip_frame noref`: B-frames, mostly): on a 720p
    talk with x264's default 250-frame GOP, 4.1 CPU s instead of 6.3, and a tile may show a
    frame a few frames later than the first of its interval. A stream whose reference
    frames are too far apart to fill every tile that way is decoded again in full.

    A video that opens black (a fade-in, a leader) has its tiles start at its first frame
    that is not black (`opening.black_opening`, looked for in at most its first half): the
    first tile's cue still starts at 0 and covers the opening too, so every moment keeps a
    thumbnail, and the first one shows a picture.

    The returned count is the number of tiles ffmpeg really produced, which can be one
    short of the plan when the video track ends a moment before the container does;
    `damaged` the frames decoded through as damaged (ffrun.run).
    """
    if duration <= 0 or width <= 0 or height <= 0:
        raise MediaError("The storyboard could not be made: the video's duration and size"
                         " are unknown.")
    plan = plan_storyboard(duration, width, height)
    streams = first_streams(src, format_name)
    # (1 % of slack: a 2 s GOP's timestamps may add up to a hair over 2 s)
    longest = plan.interval * 1.01
    # Tiles and cues are on the file's (the preview's) time, where the picture may start
    # late: sound before it (an edited export, an MPEG-TS capture).
    offset = streams.offset(streams.video)
    # It stops reading at the first longer gap: the answer is then known. The picture's
    # own length: the file's, less the sound it starts after, ends where the file ends.
    gap = keyframe_gap(src, duration - offset, format_name, stream=streams.video_spec,
                       start=streams.video_start, enough=longest)
    keyframes_only = gap is not None and gap <= longest

    def planned(keyframes_only: bool) -> Storyboard:
        start = offset + black_opening(
            src, format_name, stream=streams.video_spec, keyframes_only=keyframes_only,
            limit=min(LOOK_AT_MOST, duration / 2))
        return replace(plan_storyboard(duration - start, width, height),
                       keyframes_only=keyframes_only, start=start, offset=offset,
                       references_only=not keyframes_only)

    plan = planned(keyframes_only)
    hdr = stream_hdr(streams.video)
    with failing_as("The storyboard could not be made"), atomic_output(sprite_dst) as tmp:
        try:
            drawn = _draw_storyboard(src, tmp, plan, duration, on_progress, format_name,
                                     streams, hdr)
        except MediaError:
            if not plan.keyframes_only:
                raise
            # Not every decoder decodes keyframes alone: Theora's fails on the frames it
            # is told to skip ("Operation not permitted"). Decoding all of them is what
            # any video allows; a damaged one fails again, then for good.
            plan = replace(plan, keyframes_only=False)
            drawn = _draw_storyboard(src, tmp, plan, duration, on_progress, format_name,
                                     streams, hdr)
        if plan.keyframes_only and (_tiles_missing(plan, drawn.frames, duration)
                                    or _OUT_OF_ORDER in (drawn.detail or "")):
            # An open GOP's keyframes (H.264 I-frames that are not IDR) decoded alone come
            # out in the wrong order, their picture order counted from frames skipped:
            # x264 with open-gop, 2 s GOPs, gave 3 tiles of 15 (4 s, 2 s, 0 s), then none.
            # (The black opening, looked for among the same keyframes, is looked for again.)
            plan = planned(keyframes_only=False)
            drawn = _draw_storyboard(src, tmp, plan, duration, on_progress, format_name,
                                     streams, hdr)
        if plan.references_only and _tiles_missing(plan, drawn.frames, duration):
            plan = replace(plan, references_only=False)
            drawn = _draw_storyboard(src, tmp, plan, duration, on_progress, format_name,
                                     streams, hdr)
        plan = replace(_confirm_tiles(plan, drawn.frames, duration), damaged=drawn.damaged)
        with atomic_output(vtt_dst) as vtt_tmp:
            vtt_tmp.write_text(_storyboard_vtt(plan, duration, sprite_name), encoding="utf-8")
    return plan


# What ffmpeg's muxer says of frames handed to it back in time (the tiles' null output).
_OUT_OF_ORDER = "non monotonically increasing dts"


def _draw_storyboard(src: Path, dst: Path, plan: Storyboard, duration: float,
                     on_progress: ProgressCallback | None, format_name: str | None,
                     streams: Streams, hdr: Hdr | None = None) -> RunResult:
    """Write the sprite as planned from the video stream (`streams.video`); `frames` is the
    number of tiles ffmpeg made."""
    result = run(
        _storyboard_graph(src, dst, plan, format_name, streams.video_spec, hdr,
                          interlaced=streams.interlaced),
        duration,
        on_progress,
        # Output times are those of the sampled frames, not of the decoded end.
        check_complete=False,
        paths=(src, dst),
    )
    require_output(dst)
    return result


def _storyboard_graph(src: Path, dst: Path, plan: Storyboard, format_name: str | None,
                      video: str, hdr: Hdr | None = None, *,
                      interlaced: bool = False) -> OutputStream:
    # The first frame at or after each multiple of the interval (after the black opening),
    # on the file's time; counted from the picture's first frame (start_t), as ffmpeg keeps
    # its offset in the file or not depending on the format (not for MPEG-TS when only the
    # picture is read). The millisecond of slack keeps float error from skipping to the
    # next frame, and the cap keeps one sprite.
    pick = (
        f"lt(selected_n,{plan.count})"
        f"*gte(t-start_t+0.001,{plan.start - plan.offset!r}+selected_n*{plan.interval!r})"
    )
    options = ({"skip_frame": "nokey"} if plan.keyframes_only
               else {"skip_frame": "noref"} if plan.references_only else {})
    tiles = ffmpeg_input(src, format_name, **options)[video]
    if interlaced:
        # Before the selection: bwdif given a lone frame before the end of its input
        # (a one-tile storyboard, the last tile) passes it on as it is.
        tiles = deinterlaced(tiles)
    tiles = tiles.filter("select", pick)
    if hdr:
        # Tone-mapped at the tile's size (in 10 bits still): a 4K frame in float is 64
        # times the work. The scale below then only converts the colours.
        tiles = to_sdr(tiles.filter("scale", plan.tile_width, plan.tile_height,
                                    flags="area"), hdr)
    tiles = (
        tiles
        # (area: a tile is a tenth of the frame or less, where swscale's default bicubic
        # also darkens the picture by a few levels)
        .filter("scale", plan.tile_width, plan.tile_height, flags="area", **JPEG_COLORS)
        .filter("setsar", 1)
        .split()
    )
    # The null output comes first so the progress "frame=" counts the sampled frames.
    counter = tiles[0].output("-", f="null")
    sprite = tiles[1].filter("tile", f"{plan.columns}x{plan.rows}").output(
        str(dst), vframes=1, **{"q:v": 4}
    )
    return ffmpeg.merge_outputs(counter, sprite)


def _tiles_missing(plan: Storyboard, frames: int | None, duration: float) -> bool:
    """Whether the sampled frames stop short of the video's end (more than a tail)."""
    # No frame at frames*interval or later means the video ended before that point.
    return not frames or (frames < plan.count
                          and plan.start + frames * plan.interval < COMPLETE_SHARE * duration)


def _confirm_tiles(plan: Storyboard, frames: int | None, duration: float) -> Storyboard:
    if not frames:
        raise MediaError("no frame of the video could be read")
    if frames > plan.count:
        raise MediaError(f"ffmpeg made {frames} tiles where {plan.count} were planned")
    reached = plan.start + frames * plan.interval
    if _tiles_missing(plan, frames, duration):
        raise MediaError(
            f"the video ends before {reached:.1f} s of {duration:.1f} s"
            " (the file is cut short or damaged)"
        )
    return replace(plan, count=frames)


def _storyboard_vtt(plan: Storyboard, duration: float, sprite_name: str) -> str:
    captions = []
    for i in range(plan.count):
        # The first cue also covers the black opening (its tile shows the first picture).
        start = plan.start + i * plan.interval if i else 0.0
        end = (duration if i == plan.count - 1
               else min(plan.start + (i + 1) * plan.interval, duration))
        x = (i % plan.columns) * plan.tile_width
        y = (i // plan.columns) * plan.tile_height
        payload = f"{sprite_name}#xywh={x},{y},{plan.tile_width},{plan.tile_height}"
        times = (str(Timestamp.from_seconds(at)) for at in (start, end))  # HH:MM:SS.mmm
        captions.append(webvtt.Caption(*times, payload))
    return webvtt.WebVTT(captions=captions).content
