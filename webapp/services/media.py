"""Media inspection and conversion (probe, audio, poster, storyboard, preview) via ffmpeg."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg
import webvtt
from ffmpeg.nodes import FilterableStream, OutputStream

# MediaError and ProgressCallback are part of this module's interface, hence the aliases.
from webapp.services import mediainput
from webapp.services.ffrun import (
    COMPLETE_SHARE,
    atomic_output,
    error_detail,
    error_tail,
    failing_as,
    require_output,
    run,
)
from webapp.services.ffrun import MediaError as MediaError
from webapp.services.ffrun import ProgressCallback as ProgressCallback
from webapp.services.keyframes import keyframe_gap
from webapp.services.opening import LOOK_AT_MOST
from webapp.services.opening import black_opening as black_opening

# Demuxers that read still images (besides the "*_pipe" ones); ffmpeg calls pictures video.
_IMAGE_FORMATS = {"image2", "image2pipe"}


@dataclass(frozen=True)
class ProbeResult:
    format_name: str
    duration: float | None  # seconds
    has_video: bool
    has_audio: bool
    width: int | None  # as displayed: stretched by a non-square pixel aspect (anamorphic
    # DVD/HDV), swapped for 90-degree rotated phone videos
    height: int | None
    video_codec: str | None
    audio_codec: str | None
    frame_rate: float | None


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


def probe(path: Path, timeout: float | None = None) -> ProbeResult:
    """Describe a media file; raise MediaError unless it has real audio or video in an
    accepted container format (mediainput.FORMATS), ProbeTimeout after `timeout` seconds."""
    try:
        info = mediainput.ffprobe(path, "-show_format", "-show_streams", timeout=timeout)
    except mediainput.ProbeFailed as exc:
        refused = mediainput.refused_format(exc.stderr)
        reason = mediainput.refusal(refused) if refused else _last_word(exc.stderr, path)
        raise MediaError(f"not a playable audio or video file: {reason}",
                         detail=error_detail(exc.stderr, [path])) from None
    fmt: dict[str, Any] = info.get("format", {})
    streams: list[dict[str, Any]] = info.get("streams", [])
    format_name = str(fmt.get("format_name", ""))
    if mediainput.demuxer(format_name) is None:  # (ffprobe refuses those itself)
        raise MediaError(f"not a playable audio or video file: "
                         f"{mediainput.refusal(format_name)}")
    duration = _duration(fmt, streams)
    video = picture_stream(streams, format_name, duration) or None
    audio = sound_stream(streams) or None
    if video is None and audio is None:
        raise MediaError("not a playable audio or video file: it has no audio or video stream")
    width, height = _display_size(video) if video else (None, None)
    return ProbeResult(
        format_name=format_name,
        duration=duration,
        has_video=video is not None,
        has_audio=audio is not None,
        width=width,
        height=height,
        video_codec=video.get("codec_name") if video else None,
        audio_codec=audio.get("codec_name") if audio else None,
        frame_rate=_frame_rate(video) if video else None,
    )


def _last_word(stderr: bytes, path: Path) -> str:
    """ffprobe's closing "<file>: <reason>" line, as the reason alone."""
    reason = error_tail(stderr, [path], lines=1) or "ffprobe cannot read it"
    # The file is the user's own upload; its server-side (random) name tells them nothing.
    reason = reason.removeprefix(f"{path.name}: ").replace(path.name, "the file")
    return reason[:1].lower() + reason[1:] if reason[1:2].islower() else reason


# A video stream stated to last less than this (seconds), in a file at least twice as long,
# is a still picture: cover art that Matroska keeps as a one-frame track (ffmpeg writes it
# so, and states no frame count there), which lasts a frame or two.
STILL_AT_MOST = 0.5


def picture_stream(streams: list[dict[str, Any]], format_name: str,
                   duration: float | None) -> dict[str, Any]:
    """The video stream the steps show, of a file's probed streams ({} without moving
    video): the first moving one (not cover art, not a still), one flagged default first.

    Cover art often comes first (download tools, podcasts published as video, taggers), so
    it is not simply ffmpeg's "v:0".
    """
    moving = [s for s in streams if _is_moving_video(s, format_name, duration)]
    # (min keeps the first of equals: stream order decides between those alike)
    return min(moving, key=lambda s: not _is_default(s), default={})


def sound_stream(streams: list[dict[str, Any]]) -> dict[str, Any]:
    """The audio stream the steps use ({} without audio): the first flagged default, else
    the first. A commentary or second language ahead of the programme's sound is flagged
    otherwise (MP4 enables one track of a kind; Matroska flags tracks default unless told
    not to)."""
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    return next((s for s in audio if _is_default(s)), audio[0] if audio else {})


def _is_default(stream: dict[str, Any]) -> bool:
    return stream.get("disposition", {}).get("default") == 1


def _is_moving_video(stream: dict[str, Any], format_name: str,
                     duration: float | None = None) -> bool:
    if stream.get("codec_type") != "video":
        return False
    # Cover art in MP3/M4A files is a video stream flagged as an attached picture.
    if stream.get("disposition", {}).get("attached_pic") == 1:
        return False
    if format_name in _IMAGE_FORMATS or format_name.endswith("_pipe"):
        return False
    # A single frame (a one-frame GIF, say) is a still picture, not a video.
    if _number(stream.get("nb_frames"), int) == 1:
        return False
    length = Streams.length(stream)
    return not (length is not None and duration is not None
                and length < STILL_AT_MOST and 2 * length <= duration)


def _display_size(stream: dict[str, Any]) -> tuple[int | None, int | None]:
    width = _number(stream.get("width"), int)
    height = _number(stream.get("height"), int)
    # Non-square pixels (720x480 stored, 16:9 shown): players stretch the width.
    sar = _ratio(stream.get("sample_aspect_ratio"))
    if width and sar:
        width = max(1, round(width * sar))
    rotation = _number(stream.get("tags", {}).get("rotate"), int) or 0
    for side_data in stream.get("side_data_list", []):
        rotation = _number(side_data.get("rotation"), int) or rotation
    # ffmpeg auto-rotates when decoding, so what users see has the sides swapped.
    if rotation % 180 == 90:
        return height, width
    return width, height


def _ratio(value: Any) -> Fraction | None:
    """ffprobe's "32:27" -> Fraction(32, 27); None for "0:1", "N/A" and the like."""
    try:
        ratio = Fraction(str(value).replace(":", "/"))
    except (ValueError, ZeroDivisionError):
        return None
    return ratio if ratio > 0 else None


def _duration(fmt: dict[str, Any], streams: list[dict[str, Any]]) -> float | None:
    duration = _number(fmt.get("duration"), float)
    if duration is None:
        known = [_number(s.get("duration"), float) for s in streams]
        duration = max((d for d in known if d is not None), default=None)
    return duration if duration is not None and duration > 0 else None


def _frame_rate(stream: dict[str, Any]) -> float | None:
    for key in ("avg_frame_rate", "r_frame_rate"):
        try:
            rate = Fraction(str(stream.get(key, "")))
        except (ValueError, ZeroDivisionError):
            continue
        if rate > 0:
            return round(float(rate), 3)
    return None


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    """ffprobe's JSON holds most numbers as strings, or "N/A"."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# The least start of the sound after the file's start (seconds) that extract_audio keeps:
# a frame of audio (AAC's 1024 samples at 48 kHz: 21 ms) is nothing to a caption.
OFFSET_TO_KEEP = 0.025


def extract_audio(
    src: Path, dst: Path, duration: float | None, on_progress: ProgressCallback | None = None,
    *, format_name: str | None = None,
) -> None:
    """Write the audio stream (sound_stream) as 16 kHz mono 16-bit WAV, what whisper wants.

    format_name (every function here takes it) is the source's probed format: its demuxer
    reads the file, none other (mediainput). Without it, ffmpeg picks among the accepted.
    """
    # An audio track may well stop before the video does: measure it against its own length
    # (and where it starts, see below).
    streams = first_streams(src, format_name)
    offset, length = streams.offset(streams.audio), streams.length(streams.audio)
    if length:
        # (Matroska's DURATION tag, as ffmpeg writes it, is where the track ends, offset
        # included: the file's own length caps the sum.)
        duration = min(offset + length, duration) if duration else offset + length
    with failing_as("The audio could not be extracted"), atomic_output(dst) as tmp:
        audio = _input(src, format_name)[streams.audio_spec]
        if offset >= OFFSET_TO_KEEP:
            # The WAV's time is the preview's: a track that starts after the picture (a
            # screen recording, an edited export, a camera's MPEG-TS) is preceded by as much
            # silence, or every caption would be early by as much. ffmpeg keeps or drops
            # that offset by itself depending on the format, hence from 0 and explicit.
            audio = (audio.filter("asetpts", "PTS-STARTPTS")
                     .filter("aresample", 16000)
                     .filter("adelay", delays=f"{round(offset * 16000)}S", all=1))
        stream = audio.output(str(tmp), ac=1, ar=16000, acodec="pcm_s16le", f="wav")
        # -xerror does not catch a cut-off audio track (the demuxer just sees EOF early),
        # only the output-duration check does.
        run(stream, duration, on_progress, xerror=True, paths=(src, tmp))
        require_output(tmp)


def _input(src: Path, format_name: str | None, **options: Any) -> FilterableStream:
    """The source as an ffmpeg input: a local file, of its accepted format only."""
    return ffmpeg.input(mediainput.url(src), **mediainput.input_options(format_name), **options)


@dataclass(frozen=True)
class Streams:
    """What the steps read of a source's video and audio stream (picture_stream and
    sound_stream), from one ffprobe ({}: no such stream, or unread)."""

    video: dict[str, Any]
    audio: dict[str, Any]
    start: float | None  # the file's start time (its earliest stream's), in seconds

    @property
    def video_spec(self) -> str:
        """The video stream as ffmpeg and ffprobe select it (`-map 0:<spec>`,
        `-select_streams <spec>`, ffmpeg-python's `input[<spec>]`): its index."""
        return _spec(self.video, "v:0")

    @property
    def audio_spec(self) -> str:
        """The audio stream as ffmpeg and ffprobe select it: its index."""
        return _spec(self.audio, "a:0")

    def offset(self, stream: dict[str, Any]) -> float:
        """How long after the file's start one of them starts, in seconds (0.0 when
        unknown): ffmpeg times its outputs from the file's start."""
        begins = _number(stream.get("start_time"), float)
        return 0.0 if begins is None or self.start is None else max(0.0, begins - self.start)

    @staticmethod
    def length(stream: dict[str, Any]) -> float | None:
        """The length the container states for one of them, from its header; None when it
        states none (Matroska keeps it in a DURATION tag, when at all)."""
        length = _number(stream.get("duration"), float)
        if length is None:
            length = _clock_seconds(stream.get("tags", {}).get("DURATION"))
        return length if length and length > 0 else None


def first_streams(src: Path, format_name: str | None = None) -> Streams:
    """One ffprobe for everything the steps ask of the video and audio streams they use,
    chosen as probe chose them (each probe is a process start on a step's path)."""
    try:
        info = mediainput.ffprobe(
            src, "-show_entries",
            "stream=index,codec_type,start_time,duration,nb_frames,codec_name,profile,"
            "channels,sample_rate,bit_rate,color_transfer,color_primaries,color_space,"
            "color_range:stream_disposition=default,attached_pic:stream_tags=BPS,DURATION"
            ":format=format_name,start_time,duration", format_name=format_name)
    except MediaError:
        return Streams({}, {}, None)
    streams = info.get("streams") or []
    fmt = info.get("format", {})
    video = picture_stream(streams, str(fmt.get("format_name", "")), _duration(fmt, streams))
    return Streams(video, sound_stream(streams), _number(fmt.get("start_time"), float))


def _spec(stream: dict[str, Any], unknown: str) -> str:
    """A probed stream's index as a stream specifier; `unknown` when it was not read."""
    index = _number(stream.get("index"), int)
    return unknown if index is None else str(index)


def _clock_seconds(value: Any) -> float | None:
    """ "00:00:06.023000000" -> 6.023"""
    try:
        hours, minutes, seconds = str(value).split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


# What every JPEG decoder (browsers too) assumes of a JPEG's colours: BT.601 at full range.
# Without it ffmpeg keeps the source's BT.709 (phones, cameras, HD video) as it is, and the
# picture is read as BT.601: greens too bright, reds and blues off.
JPEG_COLORS = {"out_color_matrix": "bt601", "out_range": "full"}


# HDR video, by its transfer (ffprobe's color_transfer): PQ (smpte2084: HDR10, the base of
# Dolby Vision) and HLG (arib-std-b67: what iPhones record by default since the iPhone 12),
# in BT.2020 colours and 10 bits. Made SDR without tone-mapping it looks washed out (an
# HLG green of 28,156,61 came out 89,134,69, a white of 232 grey 183), and an 8-bit preview
# still tagged HDR is shown wrong by browsers: such video is tone-mapped to SDR BT.709.
HDR_TRANSFERS = frozenset({"smpte2084", "arib-std-b67"})
# Where HDR keeps SDR's white, in nits: the reference ("graphics") white of ITU-R BT.2408,
# that of HLG at 75 % on its nominal 1000-nit display too. Tone-mapping puts it at SDR's
# white, so what was in SDR's range keeps its colours.
HDR_REFERENCE_WHITE = 203.0
# The brightest an HDR picture is taken to reach (nits): HLG's nominal display, and what
# most PQ video is mastered on (a PQ master's brighter highlights end up SDR's white).
HDR_PEAK = 1000.0
# Up to this share of SDR's white (linear light) tone-mapping changes nothing; brighter
# light (HDR's highlights, up to the peak) is squeezed smoothly into what remains above it
# (ffmpeg's tonemap=mobius). 0.7: SDR's range within a few levels (a white of 232 came out
# 225-228), HLG's 75-100 % (203-1000 nits) 239-255; mobius's default 0.3 greyed that
# white (206), the usual hable (npl=100) dimmed everything (white 179).
TONEMAP_KNEE = 0.7


@dataclass(frozen=True)
class Hdr:
    """An HDR video stream's colours, as zscale names them (ffprobe's names)."""

    transfer: str  # smpte2084 or arib-std-b67
    primaries: str  # bt2020 mostly
    matrix: str  # bt2020nc mostly
    range: str  # tv or pc


def hdr_colours(src: Path, format_name: str | None = None) -> Hdr | None:
    """The video stream's (picture_stream) HDR colours; None for SDR (or when they cannot
    be read)."""
    return _hdr(first_streams(src, format_name).video)


def _hdr(stream: dict[str, Any]) -> Hdr | None:
    """A probed video stream's HDR colours; None for SDR. Colours a file leaves unstated
    are BT.2020's, limited range (every HDR format's)."""
    transfer = stream.get("color_transfer")
    if transfer not in HDR_TRANSFERS:
        return None

    def stated(key: str, default: str) -> str:
        value = stream.get(key)
        return value if value and value not in ("unknown", "unspecified", "reserved") \
            else default

    return Hdr(transfer=transfer, primaries=stated("color_primaries", "bt2020"),
               matrix=stated("color_space", "bt2020nc"), range=stated("color_range", "tv"))


def to_sdr(video: FilterableStream, hdr: Hdr) -> FilterableStream:
    """HDR video tone-mapped to SDR: BT.709 colours, transfer and matrix, limited range,
    8 bits (yuv420p). Its reference white becomes SDR's white (HDR_REFERENCE_WHITE),
    then light above TONEMAP_KNEE, up to HDR_PEAK, is compressed below 1.0, with
    hue kept (no desaturation), in linear light and float: zscale (zimg) and tonemap."""
    return (video
            # (linear light and BT.709 primaries in one pass: a second costs 10 %)
            .filter("zscale", tin=hdr.transfer, pin=hdr.primaries, min=hdr.matrix,
                    rin=hdr.range, t="linear", p="bt709", npl=HDR_REFERENCE_WHITE)
            .filter("format", "gbrpf32le")
            .filter("tonemap", "mobius", param=TONEMAP_KNEE,
                    peak=round(HDR_PEAK / HDR_REFERENCE_WHITE, 3), desat=0)
            .filter("zscale", t="bt709", m="bt709", r="tv")
            .filter("format", "yuv420p"))


# What the preview is tagged when its source was HDR (to_sdr), for players to take it as
# SDR: a tone-mapped picture still tagged BT.2020 HLG/PQ is shown wrong.
SDR_TAGS = {"color_primaries": "bt709", "color_trc": "bt709", "colorspace": "bt709",
            "color_range": "tv"}


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
    hdr = _hdr(streams.video)
    with atomic_output(dst) as tmp:
        # In square pixels: browsers ignore a JPEG's pixel aspect, so a frame of
        # non-square pixels (anamorphic DVD/HDV) is stretched to its displayed width.
        size = (f"min(iw*sar,{max_width})", "max(2,2*round(ow/dar/2))")
        frame = _input(src, format_name, ss=seek)[streams.video_spec]
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
    short of the plan when the video track ends a moment before the container does.
    """
    if duration <= 0 or width <= 0 or height <= 0:
        raise MediaError("The storyboard could not be made: the video's duration and size"
                         " are unknown.")
    plan = plan_storyboard(duration, width, height)
    streams = first_streams(src, format_name)
    # (1 % of slack: a 2 s GOP's timestamps may add up to a hair over 2 s)
    longest = plan.interval * 1.01
    # It stops reading at the first longer gap: the answer is then known.
    gap = keyframe_gap(src, duration, format_name, stream=streams.video_spec, enough=longest)
    keyframes_only = gap is not None and gap <= longest
    # Tiles and cues are on the file's (the preview's) time, where the picture may start
    # late: sound before it (an edited export, an MPEG-TS capture).
    offset = streams.offset(streams.video)
    start = offset + black_opening(
        src, format_name, stream=streams.video_spec, keyframes_only=keyframes_only,
        limit=min(LOOK_AT_MOST, duration / 2))
    if start > 0:
        plan = plan_storyboard(duration - start, width, height)
    plan = replace(plan, keyframes_only=keyframes_only, start=start, offset=offset,
                   references_only=not keyframes_only)
    hdr = _hdr(streams.video)
    with failing_as("The storyboard could not be made"), atomic_output(sprite_dst) as tmp:
        frames = _draw_storyboard(src, tmp, plan, duration, on_progress, format_name,
                                  streams.video_spec, hdr)
        if plan.references_only and _tiles_missing(plan, frames, duration):
            plan = replace(plan, references_only=False)
            frames = _draw_storyboard(src, tmp, plan, duration, on_progress, format_name,
                                      streams.video_spec, hdr)
        plan = _confirm_tiles(plan, frames, duration)
        with atomic_output(vtt_dst) as vtt_tmp:
            vtt_tmp.write_text(_storyboard_vtt(plan, duration, sprite_name), encoding="utf-8")
    return plan


def _draw_storyboard(src: Path, dst: Path, plan: Storyboard, duration: float,
                     on_progress: ProgressCallback | None, format_name: str | None,
                     video: str, hdr: Hdr | None = None) -> int | None:
    """Write the sprite as planned from the `video` stream (a specifier); the number of
    tiles ffmpeg made."""
    result = run(
        _storyboard_graph(src, dst, plan, format_name, video, hdr),
        duration,
        on_progress,
        xerror=True,
        # Output times are those of the sampled frames, not of the decoded end.
        check_complete=False,
        paths=(src, dst),
    )
    require_output(dst)
    return result.frames


def _storyboard_graph(src: Path, dst: Path, plan: Storyboard, format_name: str | None,
                      video: str, hdr: Hdr | None = None) -> OutputStream:
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
    tiles = _input(src, format_name, **options)[video].filter("select", pick)
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
        captions.append(webvtt.Caption(_vtt_time(start), _vtt_time(end), payload))
    return webvtt.WebVTT(captions=captions).content


def _vtt_time(seconds: float) -> str:
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}.{millis % 1000:03d}"


# The most audio bit rate the preview carries over from its source unchanged.
AUDIO_COPY_MAX_BITRATE = 192_000


def audio_copyable(src: Path, format_name: str | None = None) -> bool:
    """Whether the source's audio track (sound_stream) can go into the preview as it is:
    AAC-LC (what every browser plays in MP4), mono or stereo, 8-48 kHz, at most
    AUDIO_COPY_MAX_BITRATE (a stated rate: the stream's, or Matroska's BPS tag).

    Most uploads (phones, cameras, screen recorders) have such audio. Copying it spares
    the preview the encoder's loss of quality and its time: 4.6-4.8 s of a 20-23 s
    transcode of a 2-minute 720p talk here, since ffmpeg 5 encodes audio on the thread
    that also feeds x264 (docs/PERFORMANCE.md, section 1b).
    """
    return _copyable(first_streams(src, format_name).audio)


# The most sample rate a preview's AAC has: the 8-48 kHz that audio_copyable takes for
# what every browser plays.
PREVIEW_MAX_SAMPLE_RATE = 48000


def _copyable(stream: dict[str, Any]) -> bool:
    bit_rate = (_number(stream.get("bit_rate"), int)
                or _number(stream.get("tags", {}).get("BPS"), int))
    return (stream.get("codec_name") == "aac" and stream.get("profile") == "LC"
            and 1 <= (_number(stream.get("channels"), int) or 0) <= 2
            and 8000 <= (_number(stream.get("sample_rate"), int) or 0)
            <= PREVIEW_MAX_SAMPLE_RATE
            and bit_rate is not None and 0 < bit_rate <= AUDIO_COPY_MAX_BITRATE)


def transcode_preview(
    src: Path,
    dst: Path,
    duration: float | None,
    on_progress: ProgressCallback | None = None,
    max_height: int = 480,
    has_audio: bool = True,
    threads: int = 0,
    *,
    format_name: str | None = None,
    nice: int = 0,
) -> None:
    """Write a small web-playable MP4 (H.264/AAC, never upscaled, moov first for streaming),
    in SDR: HDR video is tone-mapped (to_sdr) and tagged BT.709 (SDR_TAGS).

    The source's audio goes in as it is when browsers play it and it is small enough
    (audio_copyable); other audio is encoded to AAC at 128 kb/s. ffmpeg runs `nice` steps
    below the caller's CPU priority (the TRANSCODE_NICE setting).
    """
    options: dict[str, Any] = {
        "vcodec": "libx264",
        "preset": "veryfast",
        "crf": 28,
        "pix_fmt": "yuv420p",
        "threads": threads,
        "movflags": "+faststart",
    }
    streams = first_streams(src, format_name)
    if has_audio:
        audio = streams.audio
        if _copyable(audio):
            options["acodec"] = "copy"
        else:
            options.update({"acodec": "aac", "b:a": "128k"})
            # Studio sound (88.2, 96, 192 kHz) would stay at its rate, past what browsers
            # are sure to play.
            if (_number(audio.get("sample_rate"), int) or 0) > PREVIEW_MAX_SAMPLE_RATE:
                options["ar"] = PREVIEW_MAX_SAMPLE_RATE
    hdr = _hdr(streams.video)
    if hdr:
        options.update(SDR_TAGS)
    with failing_as("The preview could not be encoded"), atomic_output(dst) as tmp:
        source = _input(src, format_name)
        # Height capped and kept even (yuv420p needs even sizes); width follows the
        # displayed aspect, in square pixels (a non-square pixel aspect, as in anamorphic
        # DVD/HDV, is not honoured by every player), so the picture is that of the poster.
        video = (source[streams.video_spec]
                 .filter("scale", "max(2,2*round(oh*dar/2))",
                         f"trunc(min(ih,{max_height})/2)*2")
                 .filter("setsar", 1))
        if hdr:  # (at the preview's size, from the source's 10 bits)
            video = to_sdr(video, hdr)
        outputs = [video, source[streams.audio_spec]] if has_audio else [video]
        stream = ffmpeg.output(*outputs, str(tmp), **options)
        run(stream, duration, on_progress, xerror=True, paths=(src, tmp), nice=nice)
        require_output(tmp)
