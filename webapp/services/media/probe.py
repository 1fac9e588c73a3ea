"""What a media file holds (probe, at upload) and which of its streams the steps use."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from ffmpeg.nodes import FilterableStream

from webapp.services import mediainput
from webapp.services.ffrun import MediaError, error_detail, error_tail

# Demuxers that read still images (besides the "*_pipe" ones); ffmpeg calls pictures video.
_IMAGE_FORMATS = {"image2", "image2pipe"}


class NoStreams(MediaError):
    """The file was read, as a format accepted, and its streams hold no sound nor moving
    picture the steps could use (a single frame, subtitles or data alone)."""


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
        reason = "not a playable audio or video file: it has no audio or video stream"
        if not streams:  # (what is left of an MP4 cut inside its index, too)
            raise MediaError(reason)
        if any(s.get("codec_type") == "video" for s in streams):
            reason = "not a playable audio or video file: it holds a still picture and no sound"
        raise NoStreams(reason)
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
    if number(stream.get("nb_frames"), int) == 1:
        return False
    length = Streams.length(stream)
    return not (length is not None and duration is not None
                and length < STILL_AT_MOST and 2 * length <= duration)


def _display_size(stream: dict[str, Any]) -> tuple[int | None, int | None]:
    width = number(stream.get("width"), int)
    height = number(stream.get("height"), int)
    # Non-square pixels (720x480 stored, 16:9 shown): players stretch the width.
    sar = _ratio(stream.get("sample_aspect_ratio"))
    if width and sar:
        width = max(1, round(width * sar))
    rotation = number(stream.get("tags", {}).get("rotate"), int) or 0
    for side_data in stream.get("side_data_list", []):
        rotation = number(side_data.get("rotation"), int) or rotation
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


# Demuxers whose stated duration is where the file ends on its own clock, counted from 0
# rather than from its first timestamp (ffmpeg 5.1, files whose streams all start 2 s in:
# 5 s stated for 3 s of data). MPEG-TS/PS, FLV and Ogg state how long the data lasts.
_ENDS_FROM_ZERO = frozenset({"mov", "matroska", "asf"})


def _duration(fmt: dict[str, Any], streams: list[dict[str, Any]]) -> float | None:
    """How long the file lasts from its first timestamp on: what every output of ffmpeg
    (preview, audio) lasts, as ffmpeg times them from the file's start."""
    duration = number(fmt.get("duration"), float)
    start = number(fmt.get("start_time"), float)
    ends_from_zero = mediainput.demuxer(str(fmt.get("format_name", ""))) in _ENDS_FROM_ZERO
    end = _sound_and_picture_end(streams) if ends_from_zero else None
    if duration is not None and end is not None and end < duration:
        # A subtitle track that outlasts the sound and picture (closing credits' last cue,
        # a rip's subtitles timed to a longer cut): stated at its end, the file got
        # "the video ends before 4.0 s of 9.0 s" from the storyboard and the preview.
        duration = end
    if duration is not None and start is not None and start > 0 and ends_from_zero:
        # A clip cut from a longer recording or a stream, keeping its timestamps: stated at
        # its end's time, such a file got "the file ends at 3.0 s of 5.0 s" at upload
        # (Matroska, WebM, ASF) or failed its preview as cut short (MP4, MOV).
        duration = round(duration - start, 6)  # (ffprobe's microseconds)
    if duration is None:
        known = [number(s.get("duration"), float) for s in streams]
        duration = max((d for d in known if d is not None), default=None)
    return duration if duration is not None and duration > 0 else None


def _sound_and_picture_end(streams: list[dict[str, Any]]) -> float | None:
    """Where the last audio or video stream ends on the file's clock from 0 (as MP4,
    Matroska and ASF state the file's duration), when the file also has streams of other
    kinds (subtitles, data) and every audio and video stream states its end; else None.

    Matroska's DURATION tag is where the track ends, offset included; MP4's stream duration
    is the track's own length, after its start. Cover art states no end and is left out."""
    if all(s.get("codec_type") in ("audio", "video") for s in streams):
        return None
    ends = []
    for stream in streams:
        if (stream.get("codec_type") not in ("audio", "video")
                or stream.get("disposition", {}).get("attached_pic") == 1):
            continue
        tagged = _clock_seconds(stream.get("tags", {}).get("DURATION"))
        length = number(stream.get("duration"), float)
        begins = number(stream.get("start_time"), float) or 0.0
        if tagged:
            ends.append(tagged)
        elif length:
            ends.append(begins + length)
        else:
            return None  # (one of them states no end: the file's own duration stands)
    return max(ends, default=None)


def _frame_rate(stream: dict[str, Any]) -> float | None:
    for key in ("avg_frame_rate", "r_frame_rate"):
        try:
            rate = Fraction(str(stream.get(key, "")))
        except (ValueError, ZeroDivisionError):
            continue
        if rate > 0:
            return round(float(rate), 3)
    return None


def number(value: Any, kind: type[int] | type[float]) -> Any:
    """ffprobe's JSON holds most numbers as strings, or "N/A"."""
    try:
        parsed = kind(value)
    except (TypeError, ValueError):
        return None
    return parsed if math.isfinite(parsed) else None


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

    @property
    def interlaced(self) -> bool:
        """Whether the video is stored as interlaced fields (camcorders' 1080i, DV, DVD,
        broadcast TS), which every picture made of it must deinterlace (`deinterlaced`)."""
        return self.video.get("field_order") in INTERLACED_ORDERS

    @property
    def video_start(self) -> float | None:
        """The video stream's start time in seconds, as stated (0.0 when not stated); None
        when it was not read (keyframes.keyframe_gap then reads it itself)."""
        return (number(self.video.get("start_time"), float) or 0.0) if self.video else None

    @property
    def frame_rate(self) -> Fraction | None:
        """The most frames a second the video is stated to have: the larger of ffprobe's
        r_frame_rate (the rate ffmpeg times and encodes the frames at, often a variable
        rate video's fastest) and avg_frame_rate; None when neither is stated."""
        rates = [_ratio(self.video.get(key)) for key in ("r_frame_rate", "avg_frame_rate")]
        return max((rate for rate in rates if rate), default=None)

    def offset(self, stream: dict[str, Any]) -> float:
        """How long after the file's start one of them starts, in seconds (0.0 when
        unknown): ffmpeg times its outputs from the file's start."""
        begins = number(stream.get("start_time"), float)
        return 0.0 if begins is None or self.start is None else max(0.0, begins - self.start)

    @staticmethod
    def length(stream: dict[str, Any]) -> float | None:
        """The length the container states for one of them, from its header; None when it
        states none (Matroska keeps it in a DURATION tag, when at all)."""
        length = number(stream.get("duration"), float)
        if length is None:
            length = _clock_seconds(stream.get("tags", {}).get("DURATION"))
        return length if length and length > 0 else None


# ffprobe's field orders of interlaced video (top or bottom field first, coded and shown).
INTERLACED_ORDERS = frozenset({"tt", "bb", "tb", "bt"})


def deinterlaced(video: FilterableStream) -> FilterableStream:
    """Interlaced frames made whole pictures, one per frame (bwdif; frames flagged
    progressive pass untouched). Scaled as they are, the two fields, 1/50 s apart, show
    every moving edge twice: a ghost in the preview and the storyboard, a comb in the
    poster."""
    return video.filter("bwdif", mode="send_frame", deint="interlaced")


def first_streams(src: Path, format_name: str | None = None) -> Streams:
    """One ffprobe for everything the steps ask of the video and audio streams they use,
    chosen as probe chose them (each probe is a process start on a step's path)."""
    try:
        info = mediainput.ffprobe(
            src, "-show_entries",
            "stream=index,codec_type,start_time,duration,nb_frames,codec_name,profile,"
            "channels,sample_rate,bit_rate,color_transfer,color_primaries,color_space,"
            "color_range,field_order,r_frame_rate,avg_frame_rate"
            ":stream_disposition=default,attached_pic:stream_tags=BPS,DURATION"
            ":format=format_name,start_time,duration", format_name=format_name)
    except MediaError:
        return Streams({}, {}, None)
    streams = info.get("streams") or []
    fmt = info.get("format", {})
    video = picture_stream(streams, str(fmt.get("format_name", "")), _duration(fmt, streams))
    return Streams(video, sound_stream(streams), number(fmt.get("start_time"), float))


def _spec(stream: dict[str, Any], unknown: str) -> str:
    """A probed stream's index as a stream specifier; `unknown` when it was not read."""
    index = number(stream.get("index"), int)
    return unknown if index is None else str(index)


def _clock_seconds(value: Any) -> float | None:
    """ "00:00:06.023000000" -> 6.023"""
    try:
        hours, minutes, seconds = str(value).split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
